"""The run history: every check of every ``--forgetguard`` run, to calibrate forecasts on — in a SQLite file
on one machine, or a PostgreSQL database a whole team's CI shares.

One row per check record (the JSON report's row, plus the series it belongs to, the base and candidate
fingerprints and the run's time, host, git commit and project). A check's **series** is a digest of
everything that changes its number (for KL: the prompt tokens, direction, sampling settings, seed and the
base; for retention: the base cache's task key and the metric), so a changed prompt file, task or base
starts a new series and series are never mixed.

Modules: :mod:`.location` (paths and URLs, passwords kept out of messages), :mod:`.rows` (what is stored,
and the validated JSONL export), :mod:`.migrations` (the versioned schema), :mod:`.store` (the operations,
written once), :mod:`.sqlite` and :mod:`.postgres` (the two databases).

Example::

    history = History(".cache/history.sqlite")          # or "postgresql://ci@db/forgetguard"
    history.add_run(Run.now(git_commit="1f2e3d"), records)
    for row in history.rows(series="3f2a..."):
        print(row.candidate, row.value)
"""

from __future__ import annotations

from collections import Counter

from .location import Location, LocationError, parse_location, redact
from .migrations import SCHEMA_VERSION
from .rows import (
    EXPORT_FORMAT,
    HistoryError,
    HistoryUnavailable,
    HistoryUnreadable,
    Row,
    Run,
    git_commit,
)
from .store import History

__all__ = [
    "EXPORT_FORMAT",
    "SCHEMA_VERSION",
    "History",
    "HistoryError",
    "HistoryUnavailable",
    "HistoryUnreadable",
    "Location",
    "LocationError",
    "Row",
    "Run",
    "copy_history",
    "git_commit",
    "parse_location",
    "redact",
]


def copy_history(source: History, target: History) -> tuple[int, int, tuple[int, int]]:
    """Copy every run of ``source`` into ``target`` in one transaction, then check the row counts.

    Returns (runs added, runs already there, (runs, checks) of the source). Raises :class:`HistoryError` when
    the target does not hold every run and check row of the source afterwards.

    Example::

        copy_history(History(".cache/history.sqlite"), History("postgresql://ci@db/forgetguard"))
    """
    want = source.counts()
    added, skipped = target.import_jsonl(source.export_lines(), source=source.location.display)
    run_ids = [r.run_id for r in source.runs()]
    source_checks: Counter[str] = Counter()
    target_checks: Counter[str] = Counter()
    for start in range(0, len(run_ids), 1000):
        chunk = run_ids[start : start + 1000]
        source_checks.update(r.run_id for r in source.rows(run_ids=chunk, records=False))
        target_checks.update(r.run_id for r in target.rows(run_ids=chunk, records=False))
    present = {r.run_id for r in target.runs()} & set(run_ids)
    # A run found there under another id (by content) was skipped; every other must be there whole.
    missing = len(run_ids) - len(present)
    short = [r for r in present if target_checks[r] != source_checks[r]]
    if missing > skipped or short:
        raise HistoryError(
            f"the copy to {target.location.display} is incomplete: of the source's {want[0]} runs and {want[1]} "
            f"check rows, {missing} runs are missing and {len(short)} have other check rows than the source"
        )
    return added, skipped, want
