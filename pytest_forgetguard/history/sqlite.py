"""The run history in one SQLite file: WAL mode, built whole before it is linked into place, moved aside when
it is damaged.

Safe to share on one machine: WAL mode and a busy timeout for concurrent runs; a run is written in one
``BEGIN IMMEDIATE`` transaction at its end (a killed run adds nothing); a new file is built beside its
path and linked into place (a full disk leaves no 0-byte history). Errors are classified by SQLite's
own code: damage (:class:`HistoryUnreadable`, moved aside by the gate) or a problem of this moment (a
full disk, a lock: :class:`HistoryError`, the file left alone).
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from ..files import file_mode
from . import migrations
from .location import Location
from .rows import HistoryError, HistoryUnreadable


class SqliteConnection:
    """The two calls the history's queries need, on one open SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, tuple(args)).fetchall()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(args)).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SqliteDatabase:
    """A history file; created on first write."""

    def __init__(self, location: Location, timeout: float = 30.0) -> None:
        assert location.path is not None
        self.location = location
        self.path = location.path
        self.timeout = timeout

    def exists(self) -> bool:
        return self.path.exists()

    @contextmanager
    def connect(self, write: bool) -> Iterator[SqliteConnection]:
        """An open, current-schema history; ``write``: inside one ``BEGIN IMMEDIATE`` transaction, committed
        when the block ends (rolled back on any error)."""
        if not write and not self.path.exists():
            raise HistoryError(f"no run history at {self.path} yet: run pytest --forgetguard first")
        if write and not self.path.exists():
            self._create()
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        with closing(conn):
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                if write and conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")  # a file from a release that did not start in WAL
                self._upgrade(conn)
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from None
            try:
                if not write:
                    yield SqliteConnection(conn)
                    return
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield SqliteConnection(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:  # a page read mid-query: a truncated or corrupt file
                raise self._error(exc) from None

    def _error(self, exc: sqlite3.DatabaseError) -> HistoryError:
        """Damage (moved aside by the gate) or a problem of this moment (a full disk, a lock: left alone)."""
        text, code = str(exc), getattr(exc, "sqlite_errorname", "")
        if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return HistoryUnreadable(f"{self.path} is not a forgetguard run history, or is damaged ({text})")
        if code.startswith("SQLITE_CANTOPEN") and self.path.is_file():
            return HistoryUnreadable(f"cannot read the run history {self.path}: {text}")
        if code.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
            return HistoryError(
                f"cannot write the run history {self.path}: {text} (is its disk full?); nothing of this run was "
                "written and the file is as it was"
            )
        return HistoryError(f"cannot use the run history {self.path}: {text}")

    def _create(self) -> None:
        """Build an empty history beside the path and link it into place whole: a full disk or a killed run
        leaves no 0-byte file; a concurrent run that created it first wins, and its file is used."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise HistoryError(
                f"cannot create the run history {self.path}: a file is in the way of its folder; choose another "
                "path with --fg-history / --history"
            ) from None
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
                # WAL from the start (it is kept in the file): writers that open the new file together never
                # each try to switch its journal mode, which needs a lock SQLite will not wait for.
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN")
                migrations.apply(conn.execute, None)
                conn.execute("COMMIT")
            os.chmod(tmp, file_mode())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
        except (sqlite3.Error, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise HistoryError(
                f"cannot create the run history {self.path}: {why} (free space there, or choose another path "
                "with --fg-history / --history)"
            ) from None
        finally:
            for leftover in (tmp, *(tmp.with_name(tmp.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
                leftover.unlink(missing_ok=True)

    def _version(self, conn: sqlite3.Connection) -> int:
        try:
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):  # an empty file, or another program's SQLite database
                raise HistoryUnreadable(f"{self.path} is not a forgetguard run history ({exc})") from None
            raise
        version = None if found is None else migrations.parse_version(found[0])
        if version is None:
            raise HistoryUnreadable(f"{self.path} is not a forgetguard run history (no schema version)")
        return version

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Refuse a newer schema; upgrade an older one in place, in one transaction (once: re-read under the
        write lock, so concurrent openers do not both migrate)."""
        version = self._version(conn)
        if version > migrations.SCHEMA_VERSION:
            raise HistoryError(
                f"{self.path} is a run history of schema {version}, newer than this release's "
                f"{migrations.SCHEMA_VERSION}: upgrade pytest-forgetguard (a history is never downgraded), or "
                "start a new file (--fg-history PATH)"
            )
        if version == migrations.SCHEMA_VERSION:
            return
        if version < 1:
            raise HistoryError(
                f"{self.path} is a run history of schema {version}, which no release wrote: start a new file "
                "(--fg-history PATH)"
            )
        try:
            conn.execute("BEGIN IMMEDIATE")
            migrations.apply(conn.execute, self._version(conn))
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
                raise
            raise HistoryError(
                f"{self.path} is a schema {version} run history that could not be upgraded to "
                f"{migrations.SCHEMA_VERSION} ({exc}): make it writable, or export it with the forgetguard version "
                "that wrote it"
            ) from None

    def verify(self) -> None:
        """Raise unless the file opens as a history: its header, schema version and the first page of each
        table. Cheap: it reads a few pages."""
        with self.connect(write=False) as conn:
            for table in ("runs", "checks"):
                conn.query(f"SELECT * FROM {table} LIMIT 1")
            conn.query("SELECT max(time) FROM runs")  # the time index's last page

    def move_aside(self) -> Path:
        """Rename the file (and its WAL and shared-memory files) to ``<name>.unreadable-<time>``; never
        deletes. Returns the new path of the main file."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.unreadable-{stamp}-{uuid.uuid4().hex[:6]}")
        for suffix in ("-wal", "-shm", "-journal"):
            companion = self.path.with_name(self.path.name + suffix)
            if companion.exists():
                os.replace(companion, aside.with_name(aside.name + suffix))
        os.replace(self.path, aside)
        return aside
