"""Capability retention: base and candidate compared item by item, and the gate on the drop.

The two models' per-item results (:class:`~.lmeval.TaskRun`, from lm-eval) are
paired by (task, doc_id, doc_hash); the difference of the aggregate gets a
paired bootstrap CI and, for 0/1 metrics, an exact McNemar test. ``drop`` is
signed so that positive means worse (it honours ``higher_is_better``). The
gate policies (:func:`gate_passes`) decide on the drop against an allowance.

Example::

    result = compare(base_runs, candidate_runs, metric="acc")
    result.gate_on(max_drop=0.05, max_drop_relative=None, gate="significant")
    result.passed, result.drop, result.drop_ci
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import NonFiniteError, RetentionError
from .records import CheckRecord
from .schema import RETENTION_KEYS
from .stats import ItemValues, mcnemar_exact, paired_bootstrap

if TYPE_CHECKING:
    from .lmeval import TaskRun

GATES: tuple[str, ...] = RETENTION_KEYS["gate"].enum


@dataclass
class TaskDelta:
    task: str
    n: int
    base_value: float
    candidate_value: float


@dataclass
class FlippedItem:
    task: str
    doc_id: int
    prompt: str
    target: str
    base_answer: str | None
    candidate_answer: str | None


@dataclass
class RetentionResult:
    """Paired comparison of base and candidate on the same items.

    ``delta`` is candidate minus base in the metric's own units; ``drop`` is
    signed so that positive means worse (it honours ``higher_is_better``),
    with its confidence interval ``drop_ci``.
    """

    tasks: tuple[str, ...]
    metric: str
    filter: str
    higher_is_better: bool
    base_value: float
    candidate_value: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float | None
    lost: int | None
    gained: int | None
    per_task: list[TaskDelta]
    flipped: list[FlippedItem] = field(default_factory=list)
    allowance: float | None = None
    gate: str = "observed"
    base_cached: bool = False  # every base result came from the cache: only the candidate ran
    # How the allowance was derived (set by the gate), so a report can say "5% of base".
    max_drop: float | None = None
    max_drop_relative: float | None = None
    # "measurement", or "forecast": the drop was forecast from KL, lm-eval did not run on the candidate.
    decided_by: str = "measurement"
    forecast: dict[str, Any] | None = None  # the forecast shown beside the drop (Forecast.to_json())
    forecast_note: str | None = None  # why there is no forecast, or why it did not decide
    series: str | None = None  # what makes the drop comparable across runs (the run history's key)

    @property
    def delta(self) -> float:
        return self.candidate_value - self.base_value

    @property
    def drop(self) -> float:
        return -self.delta if self.higher_is_better else self.delta

    @property
    def drop_ci(self) -> tuple[float, float]:
        if self.higher_is_better:
            return -self.ci_high, -self.ci_low
        return self.ci_low, self.ci_high

    def gate_on(self, max_drop: float | None, max_drop_relative: float | None, gate: str) -> None:
        """Set the allowance (in metric units, from the base's score) and the gate policy this result is judged by."""
        self.allowance = allowance_for(self.base_value, max_drop, max_drop_relative)
        self.max_drop, self.max_drop_relative, self.gate = max_drop, max_drop_relative, gate

    @property
    def passed(self) -> bool:
        """The gate's verdict (False before :meth:`gate_on`; never True for a non-finite number).

        Decided by forecast: the whole forecast interval lies within the allowance.
        """
        if self.allowance is None:
            return False
        if self.decided_by == "forecast":
            high = (self.forecast or {}).get("high")
            return isinstance(high, (int, float)) and math.isfinite(high) and high <= self.allowance
        return gate_passes(self, self.allowance, self.gate)

    def underpowered(self, name: str) -> str | None:
        """A warning when the drop's 95% CI is wider than the allowance, with about how many items would do."""
        if self.allowance is None:
            return None
        lo, hi = self.drop_ci
        width = hi - lo
        if not width > self.allowance:
            return None
        needed = math.ceil(self.n * (width / self.allowance) ** 2) if self.allowance > 0 else None
        return (
            f"retention check {name!r} is underpowered: its 95% CI of the drop is {width:.3g} wide, "
            f"wider than the allowance {self.allowance:.3g}"
            + (f"; about {needed} items would be needed (it has {self.n})" if needed else "")
        )

    def to_record(self, name: str, candidate: str) -> CheckRecord:
        """The check's row in the reports: base and candidate scores, the delta and its CI, the allowed drop.

        Decided by forecast: the base's score, the allowance and the forecast; nothing measured.
        """
        forecast_details = {"decided_by": self.decided_by, "forecast": self.forecast, "series": self.series}
        if self.forecast_note:
            forecast_details["forecast_note"] = self.forecast_note
        if self.decided_by == "forecast":
            return CheckRecord(
                name=name, kind="retention", candidate=candidate, metric=self.metric, base_value=self.base_value,
                budget=self.allowance,
                details={"tasks": list(self.tasks), "gate": self.gate, "max_drop": self.max_drop,
                         "max_drop_relative": self.max_drop_relative, "higher_is_better": self.higher_is_better,
                         "base_cached": self.base_cached, **forecast_details},
            )  # fmt: skip
        lo, hi = self.drop_ci
        details: dict[str, Any] = {
            "tasks": list(self.tasks),
            "gate": self.gate,
            "drop": self.drop,
            "drop_ci": [lo, hi],
            "max_drop": self.max_drop,
            "max_drop_relative": self.max_drop_relative,
            "higher_is_better": self.higher_is_better,
            "p_value": self.p_value,
            "base_cached": self.base_cached,
            "lost": self.lost,
            "gained": self.gained,
            "per_task": [vars(t) for t in self.per_task],
            **forecast_details,
        }
        if self.underpowered(name):
            details["underpowered"] = True
        return CheckRecord(
            name=name,
            kind="retention",
            candidate=candidate,
            metric=self.metric,
            value=self.candidate_value,
            base_value=self.base_value,
            candidate_value=self.candidate_value,
            delta=self.delta,
            budget=self.allowance,
            ci_low=self.ci_low,
            ci_high=self.ci_high,
            n=self.n,
            p_value=self.p_value,
            details=details,
        )

    def failure_message(self, candidate: str, name: str) -> str:
        """What a failed gate says: scores, the drop and its CI against the allowance, the items that flipped."""
        lo, hi = self.drop_ci
        flips = "\n".join(
            f"    [{f.task} #{f.doc_id}] ...{f.prompt[-120:]!r} -> right {f.target!r}; base said "
            f"{f.base_answer!r}, candidate said {f.candidate_answer!r}"
            for f in self.flipped
        )
        per_task = "\n".join(
            f"    {t.task}: {t.base_value:.4g} -> {t.candidate_value:.4g} ({t.n} items)" for t in self.per_task
        )
        underpowered = self.underpowered(name)
        allowance = self.allowance if self.allowance is not None else float("nan")
        return (
            f"capability forgotten by candidate {candidate!r} (gate: {self.gate}):\n"
            f"  {self.summary()}\n"
            f"  drop {self.drop:+.4g} (95% CI {lo:+.4g}..{hi:+.4g}) vs allowed {allowance:.4g}\n"
            + (f"  per task:\n{per_task}\n" if len(self.per_task) > 1 else "")
            + (
                f"  items the base got right and the candidate got wrong (first {len(self.flipped)}):\n{flips}"
                if flips
                else ""
            )
            + (f"\n  note: {underpowered}" if underpowered else "")
        )

    def summary(self) -> str:
        p = "" if self.p_value is None else f", McNemar p = {self.p_value:.3g} ({self.lost} lost, {self.gained} gained)"
        return (
            f"{self.metric} base {self.base_value:.4g} -> candidate {self.candidate_value:.4g} "
            f"(delta {self.delta:+.4g}, 95% CI {self.ci_low:+.4g}..{self.ci_high:+.4g}) on {self.n} paired items"
            f" of {', '.join(self.tasks)}{p}"
        )


def allowance_for(base_value: float, max_drop: float | None, max_drop_relative: float | None) -> float:
    """The allowed drop in metric units (the tighter of the two when both are given)."""
    if max_drop is None and max_drop_relative is None:
        raise ValueError("a retention check needs max_drop (absolute) and/or max_drop_relative")
    options = []
    if max_drop is not None:
        options.append(float(max_drop))
    if max_drop_relative is not None:
        options.append(float(max_drop_relative) * abs(base_value))
    return min(options)


def gate_passes(result: RetentionResult, allowance: float, gate: str) -> bool:
    """The documented gate policies.

    observed:    pass unless the observed drop exceeds the allowance (default);
    significant: fail only when the drop exceeds the allowance with 95% confidence
                 (the CI's low end of the drop is above it): no failures on noise;
    strict:      pass only when the data show the drop is within the allowance
                 (the CI's high end of the drop is at most the allowance).
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
    lo, hi = result.drop_ci
    numbers = (result.drop, lo, hi, result.base_value, result.candidate_value)
    if not all(math.isfinite(x) for x in numbers):
        return False
    if gate == "observed":
        return result.drop <= allowance
    if gate == "significant":
        return lo <= allowance
    return hi <= allowance


def compare(
    base_runs: dict[str, TaskRun],
    cand_runs: dict[str, TaskRun],
    metric: str | None = None,
    filter_: str | None = None,
    seed: int = 0,
    max_flipped: int = 5,
    aggregation_fn: Callable[[str], Any] | None = None,
) -> RetentionResult:
    """Pair the two runs item by item and compute the delta, its CI and McNemar's p."""
    tasks = tuple(base_runs)
    if not tasks:
        raise RetentionError("lm-eval produced no task results")
    first = base_runs[tasks[0]]
    metric = metric or first.metrics()[0]
    for name in tasks:
        if metric not in base_runs[name].higher_is_better:
            raise RetentionError(
                f"task {name!r} has no metric {metric!r}; it reports {', '.join(base_runs[name].metrics())}"
            )
    hib = {base_runs[n].higher_is_better[metric] for n in tasks}
    aggs = {base_runs[n].aggregation.get(metric, "mean") for n in tasks}
    if len(hib) > 1 or len(aggs) > 1:
        raise RetentionError(
            f"metric {metric!r} is not comparable across {', '.join(tasks)} (different direction or aggregation)"
        )
    aggregation = aggs.pop()
    fn = aggregation_fn(aggregation) if aggregation_fn else None
    filter_ = filter_ or first.filters()[0]
    base_items: list[Any] = []
    cand_items: list[Any] = []
    keys: list[tuple[str, int]] = []
    per_task = []
    for name in tasks:
        if name not in cand_runs:
            raise RetentionError(f"the candidate has no results for task {name!r}")
        b, c = base_runs[name].values(metric, filter_), cand_runs[name].values(metric, filter_)
        if not b:
            raise RetentionError(
                f"task {name!r} has no items with filter {filter_!r}; filters: {base_runs[name].filters()}"
            )
        if set(b) != set(c):
            raise RetentionError(
                f"task {name!r}: base and candidate were scored on different items "
                f"({len(set(b) ^ set(c))} unpaired); the task or its data changed between the runs"
            )
        ordered = sorted(b)
        base_items += [b[k] for k in ordered]
        cand_items += [c[k] for k in ordered]
        keys += [(name, k[0]) for k in ordered]
        per_task.append(
            TaskDelta(
                name,
                len(ordered),
                ItemValues([b[k] for k in ordered], aggregation, fn).value(),
                ItemValues([c[k] for k in ordered], aggregation, fn).value(),
            )
        )
    bv, cv = ItemValues(base_items, aggregation, fn), ItemValues(cand_items, aggregation, fn)
    base_value, cand_value = bv.value(), cv.value()
    if not (math.isfinite(base_value) and math.isfinite(cand_value)):
        raise NonFiniteError(f"{metric} is not finite (base {base_value}, candidate {cand_value})")
    lo, hi = paired_bootstrap(bv, cv, seed=seed)
    p_value = lost = gained = None
    flipped: list[FlippedItem] = []
    if bv.binary and cv.binary:
        lost, gained, p_value = mcnemar_exact(bv.a, cv.a)
        good = 1.0 if hib.pop() else 0.0
        for (name, doc_id), x, y in zip(keys, bv.a, cv.a):
            if x == good and y != good and len(flipped) < max_flipped:
                sb = base_runs[name].sample(doc_id, filter_)
                sc = cand_runs[name].sample(doc_id, filter_)
                flipped.append(
                    FlippedItem(name, doc_id, sb["prompt"], sb["target"], sb.get("answer"), sc.get("answer"))
                )
    return RetentionResult(
        tasks=tasks,
        metric=metric,
        filter=filter_,
        higher_is_better=base_runs[tasks[0]].higher_is_better[metric],
        base_value=base_value,
        candidate_value=cand_value,
        ci_low=lo,
        ci_high=hi,
        n=len(base_items),
        p_value=p_value,
        lost=lost,
        gained=gained,
        per_task=per_task,
        flipped=flipped,
    )
