"""The run history in a PostgreSQL database (psycopg 3), for a team whose CI runners come and go.

The same tables and migrations as SQLite (:mod:`.migrations`). A run is written in one transaction;
readers see committed runs only, each whole. The schema is created or upgraded under a transaction-level
advisory lock, so gates that meet a new database together create it once. The password (from the URL,
``PGPASSWORD`` or ``~/.pgpass``, as libpq finds it) never appears in a message: every error is passed
through :func:`.location.redact` and names the location by its display form.

A server that is down, or refuses the credentials, raises :class:`HistoryUnavailable`: the gate's verdicts
stand and its reports say the run was not recorded and why.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import migrations
from .location import Location, redact
from .rows import HistoryError, HistoryUnavailable

# pg_advisory_xact_lock key for creating and upgrading the schema (any constant; "fgrd" in ASCII).
_SCHEMA_LOCK = 0x66677264
INSTALL_HINT = "pip install 'pytest-forgetguard[postgresql]' (psycopg 3)"


class PostgresConnection:
    """The history's queries, written with ``?`` placeholders, on a psycopg connection (``%s``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(args))
            return list(cur.fetchall()) if cur.description is not None else []

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(args))
            return int(cur.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])


def driver() -> Any:
    """psycopg, or a clear error saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise HistoryError(f"a postgresql:// run history needs psycopg: {INSTALL_HINT}") from None
    return psycopg


class PostgresDatabase:
    """A history in one PostgreSQL database; its tables are created on first write."""

    def __init__(self, location: Location, timeout: float = 30.0) -> None:
        self.location = location
        self.timeout = timeout
        self.path = None

    def _say(self, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()
        return redact(first[0] if first else type(exc).__name__, self.location.url)

    def _open(self) -> Any:
        psycopg = driver()
        try:
            return psycopg.connect(
                self.location.url,
                connect_timeout=max(2, int(min(self.timeout, 15))),
                application_name="pytest-forgetguard",
                autocommit=True,  # each conn.transaction() block is then one real transaction
            )
        except psycopg.Error as exc:
            raise HistoryUnavailable(
                f"cannot connect to the run history {self.location.display}: {self._say(exc)}"
            ) from None

    def exists(self) -> bool:
        conn = self._open()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('meta') IS NOT NULL")
                row = cur.fetchone()
                return bool(row and row[0])
        except driver().Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    @contextmanager
    def connect(self, write: bool) -> Iterator[PostgresConnection]:
        """An open, current-schema history inside one transaction (committed when the block ends, rolled back
        on any error); ``write`` creates the tables of a new database."""
        psycopg = driver()
        conn = self._open()
        try:
            self._prepare(conn, write)
            with conn.transaction():
                yield PostgresConnection(conn)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _error(self, exc: Exception) -> HistoryError:
        psycopg = driver()
        if isinstance(exc, psycopg.OperationalError):  # the connection went away mid-run
            return HistoryUnavailable(f"the run history {self.location.display} became unreachable: {self._say(exc)}")
        return HistoryError(f"cannot use the run history {self.location.display}: {self._say(exc)}")

    def _version(self, conn: Any) -> int | None:
        """The stored schema version (None: no history tables in this database yet)."""
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('meta') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("SELECT value FROM meta WHERE key = 'schema'")
            found = cur.fetchone()
        version = None if found is None else migrations.parse_version(found[0])
        if version is None:
            raise HistoryError(
                f"{self.location.display} has a table 'meta' that is not a forgetguard run history's (no schema "
                "version): use a database (or schema) of its own for the history"
            )
        return version

    def _prepare(self, conn: Any, write: bool) -> None:
        """Refuse a newer schema; create (``write``) or upgrade an older one, once, under the advisory lock."""
        with conn.transaction():
            version = self._version(conn)
        if version is None and not write:
            raise HistoryError(f"no run history at {self.location.display} yet: run pytest --forgetguard first")
        if version is not None and version > migrations.SCHEMA_VERSION:
            raise HistoryError(
                f"{self.location.display} is a run history of schema {version}, newer than this release's "
                f"{migrations.SCHEMA_VERSION}: upgrade pytest-forgetguard (a history is never downgraded)"
            )
        if version == migrations.SCHEMA_VERSION:
            return
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            version = self._version(conn)  # another gate may have done it while this one waited
            if version != migrations.SCHEMA_VERSION:
                migrations.apply(cur.execute, version)

    def analyze(self) -> None:
        """Refresh the planner's statistics after a bulk import: without them, the first queries after a
        100,000-row import scan whole tables instead of using the indexes."""
        conn = self._open()
        try:
            conn.execute("ANALYZE runs")
            conn.execute("ANALYZE checks")
        except driver().Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def verify(self) -> None:
        """Raise unless the database can be reached and holds a history this release reads (or none yet)."""
        conn = self._open()
        try:
            with conn.transaction():
                version = self._version(conn)
            if version is not None and version > migrations.SCHEMA_VERSION:
                self._prepare(conn, write=False)  # raises the newer-schema error
        except driver().Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()
