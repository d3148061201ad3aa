"""The run history: every check of every ``--forgetguard`` run, in SQLite, to calibrate forecasts on.

One row per check record (the JSON report's row, plus the series it belongs
to, the base and candidate fingerprints and the run's time, host and git
commit). A check's **series** is a digest of everything that changes its
number (for KL: the prompt tokens, direction, sampling settings, seed and the
base; for retention: the base cache's task key and the metric), so a changed
prompt file, task or base starts a new series and series are never mixed.

Safe to share: WAL mode and a busy timeout for concurrent runs on one file; a
run is written in one transaction at its end (a killed run adds nothing);
pytest-xdist's controller alone writes. Histories from several machines merge
through JSONL (:meth:`History.export_jsonl` / :meth:`History.import_jsonl`):
a run carries a unique id, so importing it twice adds nothing.

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
"""


class HistoryError(ForgetguardError):
    """The history file cannot be used (another schema version, not a history, unreadable)."""


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
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open the run history {self.path}: {exc}") from None
        with closing(conn):
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                if write:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                self._upgrade(conn)
                self._check_schema(conn)
                yield conn
            except sqlite3.DatabaseError as exc:
                raise HistoryError(f"{self.path} is not a forgetguard run history ({exc})") from None

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
            raise HistoryError(f"{self.path} is not a forgetguard run history ({exc})") from None
        if found is None:
            raise HistoryError(f"{self.path} is not a forgetguard run history (no schema version)")
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
        return self._add(run, rows)

    def _add(self, run: Run, rows: Sequence[tuple[Any, ...]]) -> bool:
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                added = conn.execute(
                    "INSERT OR IGNORE INTO runs (run_id, time, host, git_commit, source, complete, incomplete_reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run.run_id, run.time, run.host, run.git_commit, run.source, int(run.complete),
                     run.incomplete_reason),
                ).rowcount  # fmt: skip
                if added:
                    conn.executemany(f"INSERT INTO checks VALUES ({', '.join('?' * 16)})", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return bool(added)

    # -- reading ---------------------------------------------------------------------

    def runs(self) -> list[Run]:
        with self._connect(write=False) as conn:
            found = conn.execute(
                "SELECT run_id, time, host, git_commit, source, complete, incomplete_reason FROM runs ORDER BY time"
            ).fetchall()
        return [Run(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in found]

    def rows(
        self,
        name: str | None = None,
        series: str | None = None,
        base_fingerprint: str | None = None,
        kind: str | None = None,
    ) -> list[Row]:
        """Check rows in run order, optionally only those of one check name, series, base or kind."""
        where, args = [], []
        for column, value in (
            ("name", name),
            ("series", series),
            ("base_fingerprint", base_fingerprint),
            ("kind", kind),
        ):
            if value is not None:
                where.append(f"c.{column} = ?")
                args.append(value)
        query = (
            "SELECT c.run_id, c.seq, c.name, c.kind, c.series, c.base_fingerprint, c.candidate, "
            "c.candidate_fingerprint, c.metric, c.value, c.drop_value, c.budget, c.passed, c.error, c.decided_by, "
            "c.record, r.time, r.complete FROM checks c JOIN runs r USING (run_id)"
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
        """Add the runs of an export; returns (runs added, runs already there).

        Every line is validated first (types, finite numbers in sane ranges, known kinds, booleans as
        booleans); if any is refused, nothing is imported and the error names each refused line (up to
        ten) with its reason: a history is data, and half an import is worse than none.
        """
        parsed: list[tuple[Run, list[tuple[Any, ...]]]] = []
        refused: list[str] = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                parsed.append(_parse_line(line, f"{source or 'import'}:{lineno}"))
            except HistoryError as exc:
                refused.append(str(exc))
        if refused:
            more = f" (and {len(refused) - 10} more)" if len(refused) > 10 else ""
            raise HistoryError(
                f"{len(refused)} line(s) refused, nothing imported{more}:\n  " + "\n  ".join(refused[:10])
            )
        added = skipped = 0
        for run, rows in parsed:
            if self._add(run, rows):
                added += 1
            else:
                skipped += 1
        return added, skipped


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
    details = record.get("details") or {}
    if not isinstance(details, dict):
        raise ValueError(f"check {i}: details must be an object")
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
        for i, check in enumerate(data["checks"]):
            _validate_record(check.get("record") if isinstance(check, dict) else None, i)
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
