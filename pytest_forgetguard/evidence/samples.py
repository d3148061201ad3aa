"""lm-eval ``--log_samples`` outputs read for ``forgetguard compare``: per-item values paired by document.

lm-eval writes one ``samples_<task>_<date>.jsonl`` per task, one JSON line per (document, filter) with
``doc_id``, ``doc_hash``, ``filter``, ``metrics`` (names) and each metric's per-item value (0/1 for
``acc``, a number for real-valued metrics, a ``[log-likelihood, bytes-or-words]`` pair for the
perplexities and bits per byte). Only those fields are kept, so memory grows with the items, not with
the documents' text. Every fault a file can have is a :class:`SamplesError` naming the file, the line
and the fix.

Example::

    base = read_runs(Path("base_out"))        # {task: path}
    values = read_values(base["arc_easy"], "acc", None)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ForgetguardError

SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")

# lm-eval metrics: (aggregation, higher is better). Others: 0/1 or real values aggregated by their mean,
# higher is better unless --lower-is-better says otherwise.
KNOWN_METRICS: dict[str, tuple[str, bool]] = {
    "bits_per_byte": ("bits_per_byte", False),
    "byte_perplexity": ("weighted_perplexity", False),
    "word_perplexity": ("weighted_perplexity", False),
    "perplexity": ("perplexity", False),
}


class SamplesError(ForgetguardError):
    """A samples file or directory that cannot be compared (``forgetguard compare`` exits 2)."""


@dataclass
class TaskValues:
    """One model's per-item values of one metric on one task: ``{doc_id: value}`` with their hashes."""

    task: str
    path: Path
    metric: str
    filter: str
    values: dict[int, Any]
    hashes: dict[int, str]


def task_of(path: Path) -> str:
    """The task a samples file is for, from lm-eval's file name (``samples_<task>_<date>.jsonl``).

    >>> task_of(Path("samples_arc_easy_2026-12-03T10-11-12.123456.jsonl"))
    'arc_easy'
    """
    m = SAMPLES_RE.match(path.name)
    if m is None:
        raise SamplesError(
            f"{path}: not an lm-eval samples file name (samples_<task>_<date>.jsonl, written by lm-eval "
            "--log_samples); pass such files or a directory that holds them"
        )
    return m.group("task")


def read_runs(path: Path) -> dict[str, Path]:
    """``{task: samples file}`` for a samples file or a directory searched recursively.

    A directory holding two runs of the same task is ambiguous: an error naming both files.
    """
    if not path.exists():
        raise SamplesError(f"{path}: no such file or directory")
    if path.is_file():
        return {task_of(path): path}
    found: dict[str, Path] = {}
    for file in sorted(path.rglob("samples_*.jsonl")):
        task = task_of(file)
        if task in found:
            raise SamplesError(
                f"{path}: two samples files for task {task!r} ({found[task]} and {file}); pass the file you mean"
            )
        found[task] = file
    if not found:
        raise SamplesError(f"{path}: no samples_<task>_<date>.jsonl files in it (run lm-eval with --log_samples)")
    return found


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below; binary: a wrong encoding is reported per line)
    except OSError as exc:
        raise SamplesError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with fh:
        number = 0
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SamplesError(f"{path}:{number}: not UTF-8 (byte 0x{raw[exc.start]:02x})") from None
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                last = not raw.endswith(b"\n")
                raise SamplesError(
                    f"{path}:{number}: not JSON ({exc.msg})"
                    + ("; the file ends mid-line: truncated? rerun lm-eval or restore the file" if last else "")
                ) from None
            if not isinstance(row, dict):
                raise SamplesError(f"{path}:{number}: a JSON object per line expected, got {type(row).__name__}")
            yield number, row
        if number == 0:
            raise SamplesError(f"{path}: empty; an lm-eval samples file has one JSON line per document")


def _check_value(path: Path, number: int, metric: str, value: Any) -> Any:
    numbers = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) != 2:
        raise SamplesError(
            f"{path}:{number}: {metric} is a list of {len(value)} values; forgetguard compares 0/1 or real "
            "values and [log-likelihood, length] pairs (corpus metrics such as F1 or BLEU are not per item)"
        )
    for x in numbers:
        if isinstance(x, bool):
            continue
        if not isinstance(x, (int, float)):
            raise SamplesError(
                f"{path}:{number}: {metric} is {type(x).__name__} {str(x)[:40]!r}, not a number; forgetguard compares "
                "0/1 or real per-item values and [log-likelihood, length] pairs"
            )
        if isinstance(x, int) and abs(x) > 2**53:
            raise SamplesError(f"{path}:{number}: {metric} is an integer of {len(str(x))} digits: not a score")
        if not math.isfinite(x):
            raise SamplesError(f"{path}:{number}: {metric} is {x}: a per-item value must be finite")
    if isinstance(value, list):
        if not value[1] > 0:
            raise SamplesError(f"{path}:{number}: {metric}'s length {value[1]} must be positive")
        return (float(value[0]), float(value[1]))
    return float(value)


def read_values(path: Path, metric: str | None, filter_: str | None) -> TaskValues:
    """One metric's per-item values of one samples file (the file's first metric and filter by default)."""
    task = task_of(path)
    values: dict[int, Any] = {}
    hashes: dict[int, str] = {}
    chosen_metric, chosen_filter = metric, filter_
    for number, row in _lines(path):
        for key in ("doc_id", "doc_hash", "filter", "metrics"):
            if key not in row:
                raise SamplesError(f"{path}:{number}: no {key!r}; is this an lm-eval --log_samples file?")
        if chosen_filter is None:
            chosen_filter = row["filter"]
        if row["filter"] != chosen_filter:
            continue
        names = row["metrics"]
        if not isinstance(names, list) or not names:
            raise SamplesError(f"{path}:{number}: 'metrics' must list the metric names lm-eval logged, got {names!r}")
        if chosen_metric is None:
            chosen_metric = str(names[0])
        if chosen_metric not in row:
            raise SamplesError(
                f"{path}:{number}: no metric {chosen_metric!r} (this task logs {', '.join(map(str, row['metrics']))}); "
                "pick one with --metric"
            )
        doc_id = row["doc_id"]
        if isinstance(doc_id, bool) or not isinstance(doc_id, int):
            raise SamplesError(f"{path}:{number}: doc_id {doc_id!r} is not an integer")
        if doc_id in values:
            raise SamplesError(
                f"{path}:{number}: doc_id {doc_id} appears twice for filter {chosen_filter!r}; "
                "two runs appended to one file? keep one run per file"
            )
        values[doc_id] = _check_value(path, number, chosen_metric, row[chosen_metric])
        hashes[doc_id] = str(row["doc_hash"])
    if not values:
        raise SamplesError(f"{path}: no items with filter {filter_!r}")
    return TaskValues(task, path, str(chosen_metric), str(chosen_filter), values, hashes)


def pair(base: TaskValues, cand: TaskValues) -> tuple[list[Any], list[Any]]:
    """The two runs' values on the same documents, in doc_id order; a document that differs (by
    ``doc_hash``) or is missing on one side is an error naming it."""
    if set(base.values) != set(cand.values):
        only_base = sorted(set(base.values) - set(cand.values))
        only_cand = sorted(set(cand.values) - set(base.values))
        side, ids = (base.path, only_base) if only_base else (cand.path, only_cand)
        raise SamplesError(
            f"task {base.task!r}: {len(only_base) + len(only_cand)} documents on one side only (e.g. doc_id {ids[0]} "
            f"only in {side}); both runs need the same documents (the same --limit and task version)"
        )
    for doc_id in sorted(base.values):
        if base.hashes[doc_id] != cand.hashes[doc_id]:
            raise SamplesError(
                f"task {base.task!r}: doc_id {doc_id} is a different document in {base.path} and {cand.path} "
                "(doc_hash differs): the runs used different data or task versions"
            )
    ids = sorted(base.values)
    b, c = [base.values[i] for i in ids], [cand.values[i] for i in ids]
    if any(isinstance(x, tuple) for x in b) != any(isinstance(x, tuple) for x in c):
        raise SamplesError(f"task {base.task!r}: {base.metric} has pairs on one side and numbers on the other")
    return b, c
