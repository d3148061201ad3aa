"""The run history's operations, the same over SQLite and PostgreSQL: add a run, read runs and rows, move a
history between databases.

The queries are written once with ``?`` placeholders in SQL both databases run; each backend opens a
current-schema connection (:mod:`.sqlite`, :mod:`.postgres`). A run is written in one transaction (a killed
run adds nothing); a run already there — by id, or the same content under another id — is not added again,
so a retried upload or a repeated import adds nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from ..records import CheckRecord
from .location import Location, parse_location
from .rows import (
    CHECK_COLUMNS,
    RUN_COLUMNS,
    HistoryError,
    Row,
    Run,
    content,
    export_line,
    parse_line,
    row_from_values,
    row_values,
)

_RUN_SELECT = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"


class Connection(Protocol):
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


def open_database(location: Location, timeout: float) -> Any:
    """The backend for a location (SQLite or PostgreSQL)."""
    if location.kind == "postgresql":
        from .postgres import PostgresDatabase

        return PostgresDatabase(location, timeout)
    from .sqlite import SqliteDatabase

    return SqliteDatabase(location, timeout)


class History:
    """A run history: a SQLite file (created on first write) or a PostgreSQL database.

    ``project`` scopes it: runs are recorded under that project, and reads see that project's runs (and
    those recorded before projects existed); None reads every project.

    Example::

        history = History("postgresql://ci@db.internal/forgetguard", project="my-finetunes")
        history.add_run(Run.now(git_commit="1f2e3d"), records)
        for row in history.rows(series="3f2a..."):
            print(row.candidate, row.value)
    """

    def __init__(self, where: str | Path | Location, timeout: float = 30.0, project: str | None = None) -> None:
        self.location = where if isinstance(where, Location) else parse_location(where)
        self.project = project or None
        self._db = open_database(self.location, timeout)

    def __repr__(self) -> str:
        return f"<History {self.location.display}>"

    @property
    def path(self) -> Path | None:
        """The SQLite file (None for a database on a server)."""
        return self.location.path

    def exists(self) -> bool:
        """Whether there is a history yet (a file; tables in the database)."""
        return bool(self._db.exists())

    def verify(self) -> None:
        """Raise :class:`HistoryUnreadable` (a damaged file), :class:`HistoryUnavailable` (a server that cannot be
        reached) or :class:`HistoryError` (another schema) unless the history opens. Cheap.

        Example::

            History(Path(".cache/history.sqlite")).verify()
        """
        self._db.verify()

    def move_aside(self) -> Path:
        """Rename a damaged SQLite file to ``<name>.unreadable-<time>`` (with its WAL files); never deletes.

        Example::

            try:
                rows = history.rows()
            except HistoryUnreadable:
                print("moved to", history.move_aside())
        """
        if not hasattr(self._db, "move_aside"):
            raise HistoryError(f"{self.location.display} is not a file: nothing to move aside")
        return Path(self._db.move_aside())

    # -- writing ---------------------------------------------------------------------

    def add_run(self, run: Run, records: Sequence[CheckRecord]) -> bool:
        """Add a run and its check records in one transaction; False when the run is there already."""
        if run.project is None and self.project is not None:
            run = _in_project(run, self.project)
        rows = [row_values(run.run_id, seq, rec) for seq, rec in enumerate(records)]
        with self._db.connect(write=True) as conn:
            return _insert(conn, run, rows)

    # -- reading ---------------------------------------------------------------------

    def _scope(self, alias: str = "") -> tuple[str, list[Any]]:
        if self.project is None:
            return "", []
        return f"({alias}project = ? OR {alias}project IS NULL)", [self.project]

    def runs(self, last: int | None = None) -> list[Run]:
        """The runs in time order; ``last``: only the latest N (answered from the time index)."""
        scope, args = self._scope()
        query = _RUN_SELECT + (f" WHERE {scope}" if scope else "")
        with self._db.connect(write=False) as conn:
            if last is None:
                found = conn.query(query + " ORDER BY time, run_id", args)
            else:
                found = conn.query(query + " ORDER BY time DESC, run_id DESC LIMIT ?", [*args, max(last, 0)])[::-1]
        return [Run.from_values(r) for r in found]

    def rows(
        self,
        name: str | None = None,
        series: str | Sequence[str] | None = None,
        base_fingerprint: str | None = None,
        kind: str | None = None,
        run_ids: Sequence[str] | None = None,
        records: bool = True,
    ) -> list[Row]:
        """Check rows in run order, optionally only those of one check name, series (or any of several),
        base, kind or set of runs. A gate reads only the series it forecasts from, without the stored
        records (``records=False``: each row's ``record`` is empty), so its memory does not grow with the
        history."""
        scope, args = self._scope("r.")
        where = [scope] if scope else []
        for column, value in (("name", name), ("base_fingerprint", base_fingerprint), ("kind", kind)):
            if value is not None:
                where.append(f"c.{column} = ?")
                args.append(value)
        for column, values in (("series", series), ("run_id", run_ids)):
            if values is not None:
                values = [values] if isinstance(values, str) else list(values)
                where.append(f"c.{column} IN ({', '.join('?' * len(values))})" if values else "1 = 0")
                args.extend(values)
        query = (
            "SELECT c.run_id, c.seq, c.name, c.kind, c.series, c.base_fingerprint, c.candidate, "
            "c.candidate_fingerprint, c.metric, c.value, c.drop_value, c.budget, c.passed, c.error, c.decided_by, "
            + ("c.record" if records else "'{}'")
            + ", r.time, r.complete, r.project FROM checks c JOIN runs r ON r.run_id = c.run_id"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY r.time, c.run_id, c.seq"
        )
        with self._db.connect(write=False) as conn:
            found = conn.query(query, args)
        return [row_from_values(r) for r in found]

    def counts(self) -> tuple[int, int]:
        """(runs, check rows) in this history's scope: the row count a migration checks."""
        scope, args = self._scope("r.")
        where = f" WHERE {scope}" if scope else ""
        with self._db.connect(write=False) as conn:
            (runs,) = conn.query(f"SELECT count(*) FROM runs r{where}", args)[0]
            (checks,) = conn.query(f"SELECT count(*) FROM checks c JOIN runs r ON r.run_id = c.run_id{where}", args)[0]
        return int(runs), int(checks)

    # -- sharing ----------------------------------------------------------------------

    def export_jsonl(self, out: IO[str]) -> int:
        """Write every run (of this history's scope) as one JSON line, its checks inside; returns how many."""
        count = 0
        for line in self.export_lines():
            out.write(line)
            count += 1
        return count

    def export_lines(self) -> Iterable[str]:
        """The export, one JSONL line per run, read a thousand runs at a time (memory does not grow with the
        history)."""
        runs = self.runs()
        for start in range(0, len(runs), 1000):
            chunk = runs[start : start + 1000]
            by_run: dict[str, list[Row]] = {}
            for row in self.rows(run_ids=[r.run_id for r in chunk]):
                by_run.setdefault(row.run_id, []).append(row)
            for run in chunk:
                yield export_line(run, by_run.get(run.run_id, []))

    def import_jsonl(self, lines: Iterable[str], source: str = "") -> tuple[int, int]:
        """Add the runs of an export, in one transaction; returns (runs added, runs already there).

        Lines are read one at a time (memory does not grow with the file). Each is validated (types,
        finite numbers in sane ranges, known kinds, booleans as booleans); if any is refused, nothing is
        imported and the error names each refused line (up to ten) with its reason: a history is data,
        and half an import is worse than none. A run already there — the same id, or the same content
        under another id (an export edited or converted twice) — is counted, not added again. With a
        ``project``, every imported run is put in it; without, each keeps the project its line names.
        """
        refused: list[str] = []
        count = added = skipped = 0
        with self._db.connect(write=True) as conn:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    run, rows = parse_line(line, f"{source or 'import'}:{lineno}")
                except HistoryError as exc:
                    count += 1
                    if len(refused) < 10:
                        refused.append(str(exc))
                    continue
                if count:
                    continue  # a line was refused: nothing will be imported, only validate the rest
                if self.project is not None:
                    run = _in_project(run, self.project)
                if _insert(conn, run, rows):
                    added += 1
                else:
                    skipped += 1
            if count:  # raised inside the transaction: it rolls back
                more = f" (and {count - 10} more)" if count > 10 else ""
                raise HistoryError(f"{count} line(s) refused, nothing imported{more}:\n  " + "\n  ".join(refused))
        if added >= 1000 and hasattr(self._db, "analyze"):
            self._db.analyze()  # the planner's statistics now, not when autovacuum gets to it
        return added, skipped


def _in_project(run: Run, project: str) -> Run:
    return Run.from_values((*run.values()[:-1], project))


def _insert(conn: Connection, run: Run, rows: Sequence[tuple[Any, ...]]) -> bool:
    """Insert a run and its rows inside the caller's transaction; False when it is there (by id or content)."""
    for other, host, commit in conn.query(
        "SELECT run_id, host, git_commit FROM runs WHERE time = ? AND run_id != ?", (run.time, run.run_id)
    ):
        if (host, commit) != (run.host, run.git_commit):
            continue
        stored = conn.query(f"SELECT {', '.join(CHECK_COLUMNS)} FROM checks WHERE run_id = ? ORDER BY seq", (other,))
        if [content(r) for r in stored] == [content(r) for r in rows]:
            return False  # the same run under another id
    added = conn.execute(
        f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))}) "
        "ON CONFLICT (run_id) DO NOTHING",
        run.values(),
    )
    if added:
        conn.executemany(
            f"INSERT INTO checks ({', '.join(CHECK_COLUMNS)}) VALUES ({', '.join('?' * len(CHECK_COLUMNS))})", rows
        )
    return bool(added)
