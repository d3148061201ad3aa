"""The candidate's retention items in growing chunks, stopped as soon as the verdict is known.

The base's per-item results are complete (evaluated once, cached). The candidate is evaluated on a
seeded random order of the same items — the order depends on ``--fg-seed`` and the check's tasks, so a
rerun evaluates the same items — in chunks of growing size, through lm-eval's own per-document
selection (``simple_evaluate(samples=...)``). After each chunk but the last, the anytime-valid tests of
:mod:`.evidence.sequential` look at the paired items so far: a ``pass`` or ``fail`` stops the
evaluation. A check that reaches the last item takes the fixed-sample verdict at the alpha its looks
left. Items are paired by document and by the exact prompt lm-eval built: a task whose prompts depend on
which documents are evaluated together (few-shot examples drawn in order) runs every remaining item,
with a note, never a silently different sample.

Example (what the retention gate does; ``evaluate_items`` runs lm-eval on the selected documents, or on
all of them for ``None``)::

    order = item_order(base_runs, "acc", "none", seed=1234)
    chunked = run_in_chunks(evaluate_items, base_runs, order, plan, "acc", "none")
    chunked.verdict            # a Verdict when a look decided, else None (the caller decides on all items)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .evidence import sequential
from .evidence.verdicts import Verdict, allowance_for
from .lmeval import TaskRun
from .stats import ItemValues

DEFAULT_MIN_ITEMS = 50  # the first look; later ones grow by GROWTH
GROWTH = 1.5


@dataclass(frozen=True)
class EarlyStop:
    """What a retention check asks of its looks (from its options and the gate's)."""

    max_drop: float | None
    max_drop_relative: float | None
    alpha: float
    min_items: int = DEFAULT_MIN_ITEMS
    higher_is_better: bool = True
    explicit: bool = False  # min_items was given (a task too small for it is then said, not silent)


@dataclass
class ChunkedRun:
    """The candidate's results on the items it was evaluated on, and how the looks went."""

    runs: dict[str, TaskRun]
    evaluated: list[tuple[str, int]]  # (task, doc_id) in evaluation order
    items_total: int
    looks: int = 0  # looks taken before the last item (each spends part of alpha)
    verdict: Verdict | None = None  # set when a look decided
    notes: list[str] = field(default_factory=list)


def item_order(base_runs: dict[str, TaskRun], metric: str, filter_: str, seed: int) -> list[tuple[str, int]]:
    """Every (task, doc_id) the base was scored on, in a random order fixed by ``seed`` and the tasks.

    >>> run = TaskRun("t", [{"doc_id": i, "doc_hash": "h", "filter": "none", "metrics": {"acc": 1.0}}
    ...                     for i in range(5)], {"acc": True}, {"acc": "mean"}, {})
    >>> item_order({"t": run}, "acc", "none", seed=0) == item_order({"t": run}, "acc", "none", seed=0)
    True
    """
    items = sorted((name, doc_id) for name, run in base_runs.items() for doc_id, _ in run.values(metric, filter_))
    digest = hashlib.sha256(f"{seed}|{'|'.join(sorted(base_runs))}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [items[i] for i in rng.permutation(len(items))]


def _index(runs: dict[str, TaskRun], metric: str, filter_: str) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for name, run in runs.items():
        for s in run.samples:
            if s["filter"] == filter_ and metric in s["metrics"]:
                out[(name, s["doc_id"])] = s
    return out


def _merge(into: dict[str, TaskRun], new: dict[str, TaskRun]) -> None:
    for name, run in new.items():
        if name in into:
            into[name] = replace(into[name], samples=[*into[name].samples, *run.samples])
        else:
            into[name] = run


def restrict(runs: dict[str, TaskRun], keep: set[tuple[str, int]]) -> dict[str, TaskRun]:
    """The runs with only the samples of the kept (task, doc_id) items (the base, to the candidate's)."""
    return {n: replace(r, samples=[s for s in r.samples if (n, s["doc_id"]) in keep]) for n, r in runs.items()}


def _mispaired(base: dict[tuple[str, int], dict[str, Any]], cand: dict[tuple[str, int], dict[str, Any]],
               items: list[tuple[str, int]]) -> tuple[str, int] | None:  # fmt: skip
    """The first item whose document or prompt differs between the two runs (None: all paired)."""
    for key in items:
        b, c = base.get(key), cand.get(key)
        if b is None or c is None or b["doc_hash"] != c["doc_hash"]:
            return key
        if b.get("prompt_hash") and c.get("prompt_hash") and b["prompt_hash"] != c["prompt_hash"]:
            return key
    return None


def run_in_chunks(
    evaluate_items: Callable[[dict[str, list[int]] | None], dict[str, TaskRun]],
    base_runs: dict[str, TaskRun],
    order: list[tuple[str, int]],
    stop: EarlyStop,
    metric: str,
    filter_: str,
    aggregation: str,
    aggregation_fn: Any = None,
) -> ChunkedRun:
    """Evaluate the candidate chunk by chunk in ``order`` until a look decides (see the module docstring).

    ``evaluate_items(samples)`` evaluates the candidate on the selected documents of each task (``None``:
    on every item, as the base was evaluated)."""
    total = len(order)
    base_index = _index(base_runs, metric, filter_)
    base_all = ItemValues([base_index[k]["metrics"][metric] for k in order], aggregation, aggregation_fn)
    test = sequential.plan(base_all, stop.higher_is_better, stop.max_drop, stop.max_drop_relative, stop.alpha)
    looks = sequential.schedule(total, max(1, stop.min_items), GROWTH)
    done = ChunkedRun({}, [], total)
    if test is None:
        done.notes.append(f"{aggregation} has no anytime-valid test: every item is evaluated")
        looks = [total]
    elif stop.min_items >= total and stop.explicit:
        done.notes.append(f"min_items {stop.min_items} is not below the task's {total} items: every item is evaluated")
    start = 0
    for k, n in enumerate(looks):
        chunk = order[start:n]
        _merge(done.runs, evaluate_items(_by_task(chunk)))
        done.evaluated += chunk
        start = n
        bad = _mispaired(base_index, _index(done.runs, metric, filter_), chunk)
        if bad is not None:
            # The chunk's prompts are not the full run's (few-shot examples drawn in evaluation order): no
            # chunk of this task pairs with the base. Evaluate the candidate as the base was, on every item.
            done.notes.append(
                f"task {bad[0]!r} document {bad[1]}: its prompt in a partial evaluation differs from the full "
                "one (few-shot examples drawn in evaluation order?): the candidate is evaluated on every item "
                "in one run, as the base was"
            )
            done.runs, done.evaluated = evaluate_items(None), list(order)
            return done
        if n == total or test is None:
            return done
        cand_index = _index(done.runs, metric, filter_)
        base_vals = ItemValues(
            [base_index[key]["metrics"][metric] for key in done.evaluated], aggregation, aggregation_fn
        )
        cand_vals = ItemValues(
            [cand_index[key]["metrics"][metric] for key in done.evaluated], aggregation, aggregation_fn
        )
        done.looks = k + 1
        decision = sequential.look(test, base_vals, cand_vals, stop.higher_is_better)
        if decision is not None:
            allowance = allowance_for(base_all.value(), stop.max_drop, stop.max_drop_relative)
            done.verdict = sequential.stopped_verdict(decision, test, base_vals, cand_vals, stop.higher_is_better,
                                                      allowance, stop.alpha, total, done.looks)  # fmt: skip
            return done
    return done


def _by_task(items: list[tuple[str, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, doc_id in items:
        out.setdefault(name, []).append(doc_id)
    return {name: sorted(ids) for name, ids in out.items()}
