"""The run history: every check of every ``--forgetguard`` run, in SQLite, to calibrate forecasts on.

One row per check record (the JSON report's row, plus the series it belongs
to, the base and candidate fingerprints and the run's time, host and git
commit). A check's **series** is a digest of everything that changes its
number (for KL: the prompt tokens, direction, sampling settings, seed and the
base; for retention: the base cache's task key and the metric), so a changed
prompt file, task or base starts a new series and series are never mixed.

Safe to share: WAL mode and a busy timeout for concurrent runs on one file; a
run is written in one transaction at its end (a killed run adds nothing); a new
file is built beside its path and linked into place whole (a full disk leaves no
0-byte history); pytest-xdist's controller alone writes. Histories from several
machines merge through JSONL (:meth:`History.export_jsonl` /
:meth:`History.import_jsonl`): a run carries a unique id, and a run already
there — by id or by content — is not added again.

A file that is not a readable history (corrupt, truncated, empty, not SQLite)
raises :class:`HistoryUnreadable`; the gate then moves it aside
(:meth:`History.move_aside`, never deleting it) and starts a fresh one.

Example::

    history = History(Path(".cache/history.sqlite"))
    history.add_run(Run.now(git_commit="1f2e3d"), records)
    for row in history.rows(series="3f2a..."):
        print(row.candidate, row.value)
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import ForgetguardError
from .files import file_mode
from .records import CheckRecord

# 2: runs record whether they finished (complete, incomplete_reason); a schema 1 file upgrades in place.
SCHEMA_VERSION = 2
EXPORT_FORMAT = "pytest-forgetguard-history"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    host TEXT,
    git_commit TEXT,
    source TEXT,
    complete INTEGER NOT NULL DEFAULT 1,
    incomplete_reason TEXT
);
CREATE TABLE IF NOT EXISTS checks (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    series TEXT,
    base_fingerprint TEXT,
    candidate TEXT NOT NULL,
    candidate_fingerprint TEXT,
    metric TEXT,
    value REAL,
    drop_value REAL,
    budget REAL,
    passed INTEGER NOT NULL,
    error TEXT,
    decided_by TEXT,
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX IF NOT EXISTS checks_by_series ON checks (series, base_fingerprint);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (time);
"""


class HistoryError(ForgetguardError):
    """The history file cannot be used (another schema version, not a history, unreadable)."""


class HistoryUnreadable(HistoryError):
    """The file is not a readable history (corrupt, truncated, empty, not SQLite, cannot be opened): the gate
    moves it aside and starts a fresh one, where a history of another schema version is left alone."""


@dataclass(frozen=True)
class Run:
    """One pytest run: a unique id, when, where, and the git commit of the working tree (when there is one)."""

    run_id: str
    time: float
    host: str = ""
    git_commit: str | None = None
    source: str = ""  # where the run came from when it was imported or converted (a file, a machine)
    # False for a run that did not finish (Ctrl-C, -x, an internal error): kept, shown, never calibrated on.
    complete: bool = True
    incomplete_reason: str | None = None

    @classmethod
    def now(
        cls, git_commit: str | None = None, source: str = "", complete: bool = True, reason: str | None = None
    ) -> "Run":
        return cls(uuid.uuid4().hex, time.time(), socket.gethostname(), git_commit, source, complete, reason)


@dataclass(frozen=True)
class Row:
    """One check of one run, as stored."""

    run_id: str
    seq: int
    name: str
    kind: str
    series: str | None
    base_fingerprint: str | None
    candidate: str
    candidate_fingerprint: str | None
    metric: str | None
    value: float | None
    drop: float | None
    budget: float | None
    passed: bool
    error: str | None
    decided_by: str | None
    record: dict[str, Any] = field(compare=False, repr=False)
    time: float = 0.0
    complete: bool = True  # the run it belongs to finished

    @property
    def forecast(self) -> dict[str, Any] | None:
        """The forecast the check showed when it ran (its ``details.forecast``), if any."""
        value = self.record.get("details", {}).get("forecast")
        return value if isinstance(value, dict) else None

    @property
    def audit(self) -> bool:
        """Whether the check was an audit: a forecast could have decided it, and it was measured anyway."""
        return self.record.get("details", {}).get("audit") is True


def git_commit(where: Path) -> str | None:
    """The commit checked out at ``where`` (``+dirty`` when the tree has changes), or None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def _row_values(run_id: str, seq: int, rec: CheckRecord) -> tuple[Any, ...]:
    details = rec.details
    drop = details.get("drop") if rec.kind == "retention" else None
    data = rec.to_json()
    data["base"] = rec.base_info
    data["candidate_info"] = rec.candidate_info
    return (
        run_id,
        seq,
        rec.name,
        rec.kind,
        details.get("series"),
        (rec.base_info or {}).get("fingerprint"),
        rec.candidate,
        (rec.candidate_info or {}).get("fingerprint"),
        rec.metric,
        _real(rec.value),
        _real(drop),
        _real(rec.budget),
        int(rec.passed),
        rec.error,
        details.get("decided_by"),
        json.dumps(data, default=str),
    )


def _row(r: Sequence[Any]) -> Row:
    return Row(
        run_id=r[0], seq=r[1], name=r[2], kind=r[3], series=r[4], base_fingerprint=r[5], candidate=r[6],
        candidate_fingerprint=r[7], metric=r[8], value=r[9], drop=r[10], budget=r[11], passed=bool(r[12]),
        error=r[13], decided_by=r[14], record=json.loads(r[15]), time=r[16], complete=bool(r[17]),
    )  # fmt: skip


def _real(x: Any) -> float | None:
    """A number SQLite keeps as REAL (NaN and infinities as NULL: a non-finite value is never a point)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if x == x and x not in (float("inf"), float("-inf")) else None


class History:
    """A run history in one SQLite file (created on first write)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<History {self.path}>"

    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.exists():
            raise HistoryError(f"no run history at {self.path} yet: run pytest --forgetguard first")
        if write and not self.path.exists():
            self._create()
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None
        with closing(conn):
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                if write:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                self._upgrade(conn)
                self._check_schema(conn)
            except sqlite3.DatabaseError as exc:
                raise self._unreadable(exc) from None
            try:
                yield conn
            except sqlite3.DatabaseError as exc:  # a page read mid-query: a truncated or corrupt file
                raise self._unreadable(exc) from None

    def _unreadable(self, exc: sqlite3.DatabaseError) -> HistoryError:
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
                conn.executescript(_SCHEMA)
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
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

    def move_aside(self) -> Path:
        """Rename the file (and its WAL and shared-memory files) to ``<name>.unreadable-<time>``; never deletes.

        Returns the new path of the main file. Example::

            try:
                rows = history.rows()
            except HistoryUnreadable:
                print("moved to", history.move_aside())
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.unreadable-{stamp}-{uuid.uuid4().hex[:6]}")
        for suffix in ("-wal", "-shm", "-journal"):
            companion = self.path.with_name(self.path.name + suffix)
            if companion.exists():
                os.replace(companion, aside.with_name(aside.name + suffix))
        os.replace(self.path, aside)
        return aside

    def verify(self) -> None:
        """Raise :class:`HistoryUnreadable` (or :class:`HistoryError`, another schema) unless the file opens as a
        history: its header, schema version and the first page of each table. Cheap: it reads a few pages.

        Example::

            History(Path(".cache/history.sqlite")).verify()
        """
        with self._connect(write=False) as conn:
            for table in ("runs", "checks"):
                conn.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()
            conn.execute("SELECT max(time) FROM runs").fetchone()  # the time index's last page

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Schema 1 -> 2 in place, in one transaction: runs gain ``complete`` (1: every old run finished, as
        far as anyone knew) and ``incomplete_reason``."""
        try:
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError:
            return  # not a history: _check_schema says so
        if found is None or found[0] != "1":
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ALTER TABLE runs ADD COLUMN complete INTEGER NOT NULL DEFAULT 1")
            conn.execute("ALTER TABLE runs ADD COLUMN incomplete_reason TEXT")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise HistoryError(
                f"{self.path} is a schema 1 run history that could not be upgraded to {SCHEMA_VERSION} ({exc}): "
                "make it writable, or export it with the forgetguard version that wrote it"
            ) from None

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):  # an empty file, or another program's SQLite database
                raise HistoryUnreadable(f"{self.path} is not a forgetguard run history ({exc})") from None
            raise
        if found is None:
            raise HistoryUnreadable(f"{self.path} is not a forgetguard run history (no schema version)")
        if found[0] != str(SCHEMA_VERSION):
            version = found[0]
            raise HistoryError(
                f"{self.path} is a run history of schema {version}, not {SCHEMA_VERSION}: export it with the "
                "forgetguard version that wrote it, or start a new file (--fg-history PATH)"
            )

    # -- writing ---------------------------------------------------------------------

    def add_run(self, run: Run, records: Sequence[CheckRecord]) -> bool:
        """Add a run and its check records in one transaction; False when the run is there already."""
        rows = [_row_values(run.run_id, seq, rec) for seq, rec in enumerate(records)]
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                added = _insert(conn, run, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return added

    # -- reading ---------------------------------------------------------------------

    def runs(self, last: int | None = None) -> list[Run]:
        """The runs in time order; ``last``: only the latest N (answered from the time index)."""
        query = "SELECT run_id, time, host, git_commit, source, complete, incomplete_reason FROM runs"
        with self._connect(write=False) as conn:
            if last is None:
                found = conn.execute(query + " ORDER BY time").fetchall()
            else:
                found = conn.execute(query + " ORDER BY time DESC LIMIT ?", (max(last, 0),)).fetchall()[::-1]
        return [Run(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in found]

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
        where, args = [], []
        for column, value in (("name", name), ("base_fingerprint", base_fingerprint), ("kind", kind)):
            if value is not None:
                where.append(f"c.{column} = ?")
                args.append(value)
        for column, values in (("series", series), ("run_id", run_ids)):
            if values is not None:
                values = [values] if isinstance(values, str) else list(values)
                where.append(f"c.{column} IN ({', '.join('?' * len(values))})" if values else "0")
                args.extend(values)
        query = (
            "SELECT c.run_id, c.seq, c.name, c.kind, c.series, c.base_fingerprint, c.candidate, "
            "c.candidate_fingerprint, c.metric, c.value, c.drop_value, c.budget, c.passed, c.error, c.decided_by, "
            + ("c.record" if records else "'{}'")
            + ", r.time, r.complete FROM checks c JOIN runs r USING (run_id)"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY r.time, c.run_id, c.seq"
        )
        with self._connect(write=False) as conn:
            found = conn.execute(query, args).fetchall()
        return [_row(r) for r in found]

    # -- sharing ----------------------------------------------------------------------

    def export_jsonl(self, out: IO[str]) -> int:
        """Write every run as one JSON line (its checks inside); returns how many."""
        runs = self.runs()
        by_run: dict[str, list[Row]] = {}
        for row in self.rows():
            by_run.setdefault(row.run_id, []).append(row)
        for run in runs:
            line = {
                "format": EXPORT_FORMAT,
                "schema": SCHEMA_VERSION,
                "run": {
                    "run_id": run.run_id,
                    "time": run.time,
                    "host": run.host,
                    "git_commit": run.git_commit,
                    "source": run.source,
                    "complete": run.complete,
                    "incomplete_reason": run.incomplete_reason,
                },  # fmt: skip
                "checks": [
                    {"seq": r.seq, "series": r.series, "decided_by": r.decided_by, "record": r.record}
                    for r in by_run.get(run.run_id, [])
                ],
            }
            out.write(json.dumps(line, sort_keys=True) + "\n")
        return len(runs)

    def import_jsonl(self, lines: Iterable[str], source: str = "") -> tuple[int, int]:
        """Add the runs of an export, in one transaction; returns (runs added, runs already there).

        Lines are read one at a time (memory does not grow with the file). Each is validated (types,
        finite numbers in sane ranges, known kinds, booleans as booleans); if any is refused, nothing is
        imported and the error names each refused line (up to ten) with its reason: a history is data,
        and half an import is worse than none. A run already there — the same id, or the same content
        under another id (an export edited or converted twice) — is counted, not added again.
        """
        refused: list[str] = []
        count = added = skipped = 0
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for lineno, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        run, rows = _parse_line(line, f"{source or 'import'}:{lineno}")
                    except HistoryError as exc:
                        count += 1
                        if len(refused) < 10:
                            refused.append(str(exc))
                        continue
                    if count:
                        continue  # a line was refused: nothing will be imported, only validate the rest
                    if _insert(conn, run, rows):
                        added += 1
                    else:
                        skipped += 1
                if count:
                    more = f" (and {count - 10} more)" if count > 10 else ""
                    raise HistoryError(f"{count} line(s) refused, nothing imported{more}:\n  " + "\n  ".join(refused))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return added, skipped


def _content(row: Sequence[Any]) -> tuple[Any, ...]:
    """A stored check row without its run id, its record parsed (key order is not content)."""
    return (*row[1:-1], json.loads(row[-1]))


def _insert(conn: sqlite3.Connection, run: Run, rows: Sequence[tuple[Any, ...]]) -> bool:
    """Insert a run and its rows inside the caller's transaction; False when it is there (by id or content)."""
    for (other,) in conn.execute(
        "SELECT run_id FROM runs WHERE time = ? AND host IS ? AND git_commit IS ? AND run_id != ?",
        (run.time, run.host, run.git_commit, run.run_id),
    ).fetchall():
        stored = conn.execute("SELECT * FROM checks WHERE run_id = ? ORDER BY seq", (other,)).fetchall()
        if [_content(r) for r in stored] == [_content(r) for r in rows]:
            return False  # the same run under another id
    added = conn.execute(
        "INSERT OR IGNORE INTO runs (run_id, time, host, git_commit, source, complete, incomplete_reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (run.run_id, run.time, run.host, run.git_commit, run.source, int(run.complete), run.incomplete_reason),
    ).rowcount
    if added:
        conn.executemany(f"INSERT INTO checks VALUES ({', '.join('?' * 16)})", rows)
    return bool(added)


def _parse_line(line: str, where: str) -> tuple[Run, list[tuple[Any, ...]]]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise HistoryError(f"{where}: not a pytest-forgetguard history export line")
    if data.get("schema") not in (1, SCHEMA_VERSION):  # schema 1 exports: runs without a completeness mark
        raise HistoryError(f"{where}: history schema {data.get('schema')}, this version reads 1 and {SCHEMA_VERSION}")
    return _parse_export(data, where)


# A run's time must be a real moment (after 2001-09-09, before 2096): NaN, infinities and 1e308 are not.
_TIME_RANGE = (1e9, 4e9)
# No measured number comes near this (a random model's perplexity is about 1e13); 1e308 is a forged row.
_VALUE_LIMIT = 1e100


def _optional(where: str, key: str, x: Any, kind: type | tuple[type, ...] = str) -> None:
    if x is not None and (isinstance(x, bool) or not isinstance(x, kind)):
        raise ValueError(f"{where}{key} must be {_KIND_WORDS.get(kind, 'a string')} or null, got {x!r}")


_KIND_WORDS: dict[Any, str] = {str: "a string", dict: "an object", int: "a whole number", (int, float): "a number"}


def _validate_run(r: Any) -> None:
    if not isinstance(r, dict):
        raise ValueError("'run' must be an object")
    if not isinstance(r.get("run_id"), str) or not r["run_id"]:
        raise ValueError("run_id must be a non-empty string")
    t = r.get("time")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (_TIME_RANGE[0] <= t <= _TIME_RANGE[1]):
        raise ValueError(f"time must be a Unix time between 2001 and 2096, got {t!r}")
    if not isinstance(r.get("complete", True), bool):
        raise ValueError(f"complete must be true or false, got {r.get('complete')!r}")
    for key in ("host", "git_commit", "source", "incomplete_reason"):
        _optional("", key, r.get(key))


def _validate_check(check: Any, i: int, seqs: set[int]) -> None:
    if not isinstance(check, dict):
        raise ValueError(f"check {i} must be an object")
    seq = check.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 1_000_000 or seq in seqs:
        raise ValueError(f"check {i}: seq must be a distinct whole number from 0, got {seq!r}")
    seqs.add(seq)
    for key in ("series", "decided_by"):
        _optional(f"check {i}: ", key, check.get(key))
    _validate_record(check.get("record"), i)


def _validate_record(record: Any, i: int) -> None:
    from .schema import KINDS

    if not isinstance(record, dict):
        raise ValueError(f"check {i}: 'record' must be an object")
    if record.get("kind") not in KINDS:
        raise ValueError(f"check {i}: unknown kind {record.get('kind')!r} (known: {', '.join(KINDS)})")
    for key in ("name", "candidate"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise ValueError(f"check {i}: {key} must be a non-empty string, got {record.get(key)!r}")
    if not isinstance(record.get("passed"), bool):
        raise ValueError(f"check {i}: passed must be true or false, got {record.get('passed')!r}")
    where = f"check {i}: "
    for key in ("metric", "error", "nodeid", "file"):
        _optional(where, key, record.get(key))
    _optional(where, "n", record.get("n"), int)
    for key in ("base", "candidate_info", "details"):
        _optional(where, key, record.get(key), dict)
    for key in ("base", "candidate_info"):
        for sub in ("spec", "fingerprint"):
            _optional(where, f"{key}.{sub}", (record.get(key) or {}).get(sub))
    details = record.get("details") or {}
    for key in ("series", "decided_by"):
        _optional(where, f"details.{key}", details.get(key))
    numbers = {k: record.get(k) for k in ("value", "base_value", "candidate_value", "delta", "budget", "ci_low",
                                          "ci_high", "p_value")}  # fmt: skip
    numbers["details.drop"] = details.get("drop")
    for key, x in numbers.items():
        if x is None or (isinstance(x, str) and x in ("nan", "inf", "-inf")):
            continue  # the report writes a non-finite number as text: kept as no value, never a point
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(f"check {i}: {key} must be a number, got {x!r}")
        if not abs(x) <= _VALUE_LIMIT:
            raise ValueError(f"check {i}: {key} = {x!r} is not a plausible value (|x| <= {_VALUE_LIMIT:g})")
    if record.get("passed") and record.get("error"):
        raise ValueError(f"check {i}: a check with an error cannot have passed")


def _parse_export(data: dict[str, Any], where: str) -> tuple[Run, list[tuple[Any, ...]]]:
    try:
        r = data["run"]
        _validate_run(r)
        if not isinstance(data.get("checks"), list):
            raise ValueError("'checks' must be a list")
        seqs: set[int] = set()
        for i, check in enumerate(data["checks"]):
            _validate_check(check, i, seqs)
        complete = r.get("complete", True)
        run = Run(str(r["run_id"]), float(r["time"]), str(r.get("host") or ""), r.get("git_commit"),
                  str(r.get("source") or ""), complete, r.get("incomplete_reason"))  # fmt: skip
        rows = []
        for check in data["checks"]:
            record = dict(check["record"])
            base_info, cand_info = record.pop("base", None), record.pop("candidate_info", None)
            rec = CheckRecord.from_payload(
                {**_record_fields(record), "base_info": base_info, "candidate_info": cand_info}
            )
            rec.details.setdefault("series", check.get("series"))
            if check.get("decided_by"):
                rec.details.setdefault("decided_by", check["decided_by"])
            rows.append(_row_values(run.run_id, int(check["seq"]), rec))
    except KeyError as exc:
        raise HistoryError(f"{where}: a run without {exc}") from None
    except (TypeError, ValueError) as exc:
        raise HistoryError(f"{where}: {exc}") from None
    return run, rows


def _record_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The CheckRecord fields of a report row (strings back to NaN/inf where the report wrote them)."""
    allowed = {"name", "kind", "candidate", "metric", "value", "base_value", "candidate_value", "delta", "budget",
               "ci_low", "ci_high", "n", "p_value", "passed", "error", "nodeid", "file", "details"}  # fmt: skip
    out = {k: v for k, v in data.items() if k in allowed}
    for k in ("value", "base_value", "candidate_value", "delta", "budget", "ci_low", "ci_high", "p_value"):
        if isinstance(out.get(k), str):
            out[k] = float(out[k])
    out["details"] = dict(out.get("details") or {})
    return out


def default_history_path(cache_dir: Path | None) -> Path | None:
    """``history.sqlite`` in the cache directory (None when caching is off), or ``FORGETGUARD_HISTORY``."""
    env = os.environ.get("FORGETGUARD_HISTORY")
    if env:
        return Path(env).expanduser()
    return None if cache_dir is None else cache_dir / "history.sqlite"
