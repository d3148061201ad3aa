"""What a run history holds: runs, check rows, and the JSONL export lines that carry them between histories.

Pure data: no database here. :func:`row_values` turns a check record into the stored columns;
:func:`parse_line` reads one export line, validating every field (a history is data: a forged or damaged
line is refused with its reason, never stored).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ForgetguardError
from ..records import CheckRecord

EXPORT_FORMAT = "pytest-forgetguard-history"
# Export line schemas this version reads: 1 (runs without a completeness mark), 2, 3 (runs carry a project).
EXPORT_SCHEMAS = (1, 2, 3)
EXPORT_SCHEMA = 3
# The stored columns of a check, in table order (row_values builds them, checks' INSERT names them).
CHECK_COLUMNS = (
    "run_id", "seq", "name", "kind", "series", "base_fingerprint", "candidate", "candidate_fingerprint", "metric",
    "value", "drop_value", "budget", "passed", "error", "decided_by", "record",
)  # fmt: skip
RUN_COLUMNS = ("run_id", "time", "host", "git_commit", "source", "complete", "incomplete_reason", "project")


class HistoryError(ForgetguardError):
    """The history cannot be used (another schema version, not a history, unreadable, unreachable)."""


class HistoryUnreadable(HistoryError):
    """The file is not a readable history (corrupt, truncated, empty, not SQLite, cannot be opened): the gate
    moves it aside and starts a fresh one, where a history of another schema version is left alone."""


class HistoryUnavailable(HistoryError):
    """The history's server cannot be reached or refuses the connection (down, wrong credentials): the run's
    verdicts stand, the reports say it was not recorded and why, and forecasts fall back to measuring."""


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
    # The repository (or team) the run belongs to: several share one database without mixing their series.
    # None: recorded before histories had projects (visible to every project).
    project: str | None = None

    @classmethod
    def now(
        cls,
        git_commit: str | None = None,
        source: str = "",
        complete: bool = True,
        reason: str | None = None,
        project: str | None = None,
    ) -> "Run":
        return cls(uuid.uuid4().hex, time.time(), socket.gethostname(), git_commit, source, complete, reason, project)

    def values(self) -> tuple[Any, ...]:
        """The stored columns, in :data:`RUN_COLUMNS` order."""
        return (self.run_id, self.time, self.host, self.git_commit, self.source, int(self.complete),
                self.incomplete_reason, self.project)  # fmt: skip

    @classmethod
    def from_values(cls, r: Sequence[Any]) -> "Run":
        return cls(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7])


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
    project: str | None = None  # the run's project (None: recorded before projects)

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


def row_values(run_id: str, seq: int, rec: CheckRecord) -> tuple[Any, ...]:
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


def row_from_values(r: Sequence[Any]) -> Row:
    return Row(
        run_id=r[0], seq=r[1], name=r[2], kind=r[3], series=r[4], base_fingerprint=r[5], candidate=r[6],
        candidate_fingerprint=r[7], metric=r[8], value=r[9], drop=r[10], budget=r[11], passed=bool(r[12]),
        error=r[13], decided_by=r[14], record=json.loads(r[15]), time=r[16], complete=bool(r[17]),
        project=r[18],
    )  # fmt: skip


def _real(x: Any) -> float | None:
    """A number stored as a float (NaN and infinities as NULL: a non-finite value is never a point)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if x == x and x not in (float("inf"), float("-inf")) else None


def parse_line(line: str, where: str) -> tuple[Run, list[tuple[Any, ...]]]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise HistoryError(f"{where}: not a pytest-forgetguard history export line")
    if data.get("schema") not in EXPORT_SCHEMAS:
        known = ", ".join(map(str, EXPORT_SCHEMAS))
        raise HistoryError(f"{where}: history schema {data.get('schema')}, this version reads {known}")
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
    for key in ("host", "git_commit", "source", "incomplete_reason", "project"):
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
    from ..schema import KINDS

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
                  str(r.get("source") or ""), complete, r.get("incomplete_reason"), r.get("project"))  # fmt: skip
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
            rows.append(row_values(run.run_id, int(check["seq"]), rec))
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


def export_line(run: Run, rows: Sequence[Row]) -> str:
    """One run and its checks as a JSONL line (:func:`parse_line` reads it back)."""
    line = {
        "format": EXPORT_FORMAT,
        "schema": EXPORT_SCHEMA,
        "run": {
            "run_id": run.run_id,
            "time": run.time,
            "host": run.host,
            "git_commit": run.git_commit,
            "source": run.source,
            "complete": run.complete,
            "incomplete_reason": run.incomplete_reason,
            "project": run.project,
        },  # fmt: skip
        "checks": [{"seq": r.seq, "series": r.series, "decided_by": r.decided_by, "record": r.record} for r in rows],
    }
    return json.dumps(line, sort_keys=True) + "\n"


def content(row: Sequence[Any]) -> tuple[Any, ...]:
    """A stored check row without its run id, its record parsed (key order is not content)."""
    return (*row[1:-1], json.loads(row[-1]))
