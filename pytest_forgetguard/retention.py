"""Capability retention: base and candidate compared item by item, and the verdict on the drop.

The two models' per-item results (:class:`~.lmeval.TaskRun`, from lm-eval) are
paired by (task, doc_id, doc_hash). ``drop`` is signed so that positive means
worse (it honours ``higher_is_better``). :meth:`RetentionResult.gate_on` decides
it against an allowance through :mod:`.evidence.verdicts`: ``pass`` when the
drop's one-sided upper bound at ``alpha`` is within the allowance, ``fail`` when
its lower bound is over it, ``inconclusive`` otherwise (with the items that
would decide). A paired bootstrap CI describes a measurement that has no gate;
for 0/1 metrics McNemar's exact test says whether anything changed at all.

Example::

    result = compare(base_runs, candidate_runs, metric="acc")
    result.gate_on(max_drop=0.05, max_drop_relative=None, gate="strict", alpha=0.05)
    result.passed, result.verdict.verdict, result.drop, result.drop_ci
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import NonFiniteError, RetentionError
from .evidence.verdicts import DEFAULT_ALPHA, Verdict, allowance_for, observed
from .records import CheckRecord
from .schema import RETENTION_KEYS
from .stats import ItemValues, mcnemar_exact, paired_bootstrap

if TYPE_CHECKING:
    from .lmeval import TaskRun

GATES: tuple[str, ...] = RETENTION_KEYS["gate"].enum
ON_INCONCLUSIVE: tuple[str, ...] = RETENTION_KEYS["on_inconclusive"].enum


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
    with its interval ``drop_ci``: the verdict's one-sided bounds at ``alpha``
    once :meth:`gate_on` decided, else a 95% paired bootstrap interval.
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
    gate: str = "strict"
    base_cached: bool = False  # every base result came from the cache: only the candidate ran
    # How the allowance was derived (set by the gate), so a report can say "5% of base".
    max_drop: float | None = None
    max_drop_relative: float | None = None
    # "measurement", or "forecast": the drop was forecast from KL, lm-eval did not run on the candidate.
    decided_by: str = "measurement"
    forecast: dict[str, Any] | None = None  # the forecast shown beside the drop (Forecast.to_json())
    forecast_note: str | None = None  # why there is no forecast, or why it did not decide
    series: str | None = None  # what makes the drop comparable across runs (the run history's key)
    alpha: float = DEFAULT_ALPHA
    on_inconclusive: str = "fail"
    verdict: Verdict | None = None  # set by gate_on (a measured check)
    items_total: int | None = None  # the task's items after ``limit`` (n: those compared)
    looks: int = 1  # decisions taken: the looks of early stopping, and the last item's fixed-sample verdict
    early: Verdict | None = None  # the verdict of the look that stopped the candidate's evaluation early
    alpha_spent: float = 0.0  # of alpha, spent by looks before the last item (the fixed-sample verdict gets the rest)
    audit: bool = False  # a forecast could have decided: measured anyway (audit_rate), its forecast kept
    # The paired per-item values the verdict is computed from (not reported).
    paired: tuple[ItemValues, ItemValues] | None = field(default=None, repr=False, compare=False)

    @property
    def delta(self) -> float:
        return self.candidate_value - self.base_value

    @property
    def drop(self) -> float:
        return -self.delta if self.higher_is_better else self.delta

    @property
    def drop_ci(self) -> tuple[float, float]:
        if self.verdict is not None:
            return self.verdict.low, self.verdict.high
        if self.higher_is_better:
            return -self.ci_high, -self.ci_low
        return self.ci_low, self.ci_high

    @property
    def ci_level(self) -> float:
        """The coverage of :attr:`drop_ci`: ``1 - 2 alpha`` for a verdict's two one-sided bounds, else 0.95."""
        return 1.0 - 2.0 * self.alpha if self.verdict is not None else 0.95

    def gate_on(
        self,
        max_drop: float | None,
        max_drop_relative: float | None,
        gate: str,
        alpha: float = DEFAULT_ALPHA,
        on_inconclusive: str = "fail",
    ) -> None:
        """Set the allowance (in metric units, from the base's score) and decide the drop against it.

        ``gate``: ``strict`` (the verdict at ``alpha``, an inconclusive one passing only under
        ``on_inconclusive="pass"``), ``significant`` (the same, inconclusive passes), ``observed`` (the
        point estimate against the allowance: no error rate; the verdict is still computed and shown).
        """
        self.allowance = allowance_for(self.base_value, max_drop, max_drop_relative)
        self.max_drop, self.max_drop_relative, self.gate = max_drop, max_drop_relative, gate
        self.alpha, self.on_inconclusive = alpha, "pass" if gate == "significant" else on_inconclusive
        if self.decided_by == "measurement" and self.paired is not None:
            if self.early is not None:
                self.verdict = self.early
            else:
                self.verdict = decide(self, max_drop, max_drop_relative, alpha - self.alpha_spent)
                if self.alpha_spent:
                    note = (f"{self.looks - 1} earlier look(s) did not decide: the verdict on every item is at alpha "
                            f"{alpha - self.alpha_spent:g} (the looks spent {self.alpha_spent:g})")  # fmt: skip
                    self.verdict = replace(self.verdict, notes=(*self.verdict.notes, note))
            lo, hi = self.verdict.low, self.verdict.high
            self.ci_low, self.ci_high = (-hi, -lo) if self.higher_is_better else (lo, hi)

    @property
    def passed(self) -> bool:
        """The gate's verdict (False before :meth:`gate_on`; never True for a non-finite number).

        Decided by forecast: the forecast's one-sided upper bound at alpha lies within the allowance.
        """
        if self.allowance is None:
            return False
        if self.decided_by == "forecast":
            upper = (self.forecast or {}).get("upper")
            return isinstance(upper, (int, float)) and math.isfinite(upper) and upper <= self.allowance
        numbers = (self.drop, self.base_value, self.candidate_value)
        if not all(math.isfinite(x) for x in numbers):
            return False
        if self.gate == "observed":
            return observed(self.drop, self.allowance) == "pass"  # a drop equal to the allowance is within it
        return self.verdict is not None and self.verdict.passes(self.on_inconclusive)

    @property
    def verdict_word(self) -> str | None:
        """``pass``, ``fail`` or ``inconclusive``: the verdict at ``alpha`` (the point estimate's under
        ``gate: observed``); None before :meth:`gate_on` or for a forecast."""
        if self.allowance is None or self.decided_by == "forecast":
            return None
        if self.gate == "observed":
            return observed(self.drop, self.allowance) if math.isfinite(self.drop) else None
        return None if self.verdict is None else self.verdict.verdict

    def inconclusive_note(self, name: str) -> str | None:
        """What a check that its data cannot decide says: the drop, its bounds, the items that would decide.

        Shown with the failure under ``on_inconclusive: fail``, as a warning when the check passes anyway
        (``on_inconclusive: pass``, ``gate: significant``) and under ``gate: observed``.
        """
        if self.verdict is None or self.verdict.verdict != "inconclusive":
            return None
        total = f" (the task has {self.items_total})" if self.items_total and self.verdict.items_needed else ""
        return f"retention check {name!r} is inconclusive at alpha {self.alpha:g}: {self.verdict.explain()}{total}"

    def to_record(self, name: str, candidate: str) -> CheckRecord:
        """The check's row in the reports: base and candidate scores, the delta and its bounds, the allowed drop.

        Decided by forecast: the base's score, the allowance and the forecast; nothing measured.
        """
        decision = {**self._verdict_details(), **self._forecast_details()}
        if self.decided_by == "forecast":
            return CheckRecord(
                name=name, kind="retention", candidate=candidate, metric=self.metric, base_value=self.base_value,
                budget=self.allowance,
                details={"tasks": list(self.tasks), "gate": self.gate, "max_drop": self.max_drop,
                         "max_drop_relative": self.max_drop_relative, "higher_is_better": self.higher_is_better,
                         "base_cached": self.base_cached, **decision},
            )  # fmt: skip
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
            details=self._measured_details(decision),
        )

    def _forecast_details(self) -> dict[str, Any]:
        """How the check was decided, and the forecast: shown for a measured check too (audits, history)."""
        details: dict[str, Any] = {"decided_by": self.decided_by, "forecast": self.forecast, "series": self.series}
        if self.audit:
            details["audit"] = True
        if self.forecast_note:
            details["forecast_note"] = self.forecast_note
        return details

    def _verdict_details(self) -> dict[str, Any]:
        """The verdict and what it rests on; a forecast passes or stays inconclusive (it never fails)."""
        forecast = self.decided_by == "forecast"
        return {
            "verdict": ("pass" if self.passed else "inconclusive") if forecast else self.verdict_word,
            "alpha": self.alpha,
            "on_inconclusive": self.on_inconclusive,
            "items_needed": None if self.verdict is None else self.verdict.items_needed,
            "items_total": self.items_total if self.items_total is not None else (self.n or None),
            "looks": self.looks if self.decided_by == "measurement" else 0,
        }

    def _measured_details(self, decision: dict[str, Any]) -> dict[str, Any]:
        """A measured check's details: the drop and its bounds, the flips, the per-task scores, then ``decision``."""
        lo, hi = self.drop_ci
        details: dict[str, Any] = {
            "tasks": list(self.tasks),
            "gate": self.gate,
            "drop": self.drop,
            "drop_ci": [lo, hi],
            "ci_level": self.ci_level,
            "max_drop": self.max_drop,
            "max_drop_relative": self.max_drop_relative,
            "higher_is_better": self.higher_is_better,
            "p_value": self.p_value,
            "base_cached": self.base_cached,
            "lost": self.lost,
            "gained": self.gained,
            "per_task": [vars(t) for t in self.per_task],
            **decision,
        }
        if self.verdict is not None:
            details["method"] = self.verdict.method
            details["provable"] = self.verdict.provable
        return details

    def failure_message(self, candidate: str, name: str) -> str:
        """What a failed gate says: scores, the verdict with the drop's bounds against the allowance, the
        items that flipped, and what would decide an inconclusive one."""
        flips = "\n".join(
            f"    [{f.task} #{f.doc_id}] ...{f.prompt[-120:]!r} -> right {f.target!r}; base said "
            f"{f.base_answer!r}, candidate said {f.candidate_answer!r}"
            for f in self.flipped
        )
        per_task = "\n".join(
            f"    {t.task}: {t.base_value:.4g} -> {t.candidate_value:.4g} ({t.n} items)" for t in self.per_task
        )
        word = self.verdict_word or "fail"
        head = "capability forgotten" if word == "fail" else "retention not shown"
        if self.verdict is not None and self.gate != "observed":
            decision = f"  {self.verdict.explain()}\n"
        else:
            lo, hi = self.drop_ci
            allowance = self.allowance if self.allowance is not None else float("nan")
            decision = (
                f"  drop {self.drop:+.4g} ({self.ci_level:.0%} interval {lo:+.4g}..{hi:+.4g}) vs allowed {allowance:.4g}"
                " (gate: observed, the point estimate: no error rate)\n"
            )
        return (
            f"{head} by candidate {candidate!r} (verdict: {word}, alpha {self.alpha:g}, gate: {self.gate}):\n"
            f"  {self.summary()}\n"
            + decision
            + (f"  per task:\n{per_task}\n" if len(self.per_task) > 1 else "")
            + (
                f"  items the base got right and the candidate got wrong (first {len(self.flipped)}):\n{flips}"
                if flips
                else ""
            )
        ).rstrip("\n")

    def summary(self) -> str:
        p = "" if self.p_value is None else f", McNemar p = {self.p_value:.3g} ({self.lost} lost, {self.gained} gained)"
        lo, hi = self.ci_low, self.ci_high
        return (
            f"{self.metric} base {self.base_value:.4g} -> candidate {self.candidate_value:.4g} "
            f"(delta {self.delta:+.4g}, {self.ci_level:.0%} interval {lo:+.4g}..{hi:+.4g}) on {self.n} paired items"
            f" of {', '.join(self.tasks)}{p}"
        )


def decide(result: RetentionResult, max_drop: float | None, max_drop_relative: float | None, alpha: float) -> Verdict:
    """The verdict on a measured result's paired items (:mod:`.evidence.paired`)."""
    from .evidence.paired import decide_items

    if result.paired is None:
        raise RetentionError("no paired items to decide on")
    bv, cv = result.paired
    try:
        return decide_items(bv, cv, result.higher_is_better, max_drop, max_drop_relative, alpha)
    except ValueError as exc:
        raise RetentionError(f"{', '.join(result.tasks)}: {exc}") from None


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
    hib, aggregation = _comparable_metric(base_runs, metric)
    fn = aggregation_fn(aggregation) if aggregation_fn else None
    filter_ = filter_ or first.filters()[0]
    keys, base_items, cand_items, per_task = _paired_items(base_runs, cand_runs, metric, filter_, aggregation, fn)
    bv, cv = ItemValues(base_items, aggregation, fn), ItemValues(cand_items, aggregation, fn)
    base_value, cand_value = bv.value(), cv.value()
    if not (math.isfinite(base_value) and math.isfinite(cand_value)):
        raise NonFiniteError(f"{metric} is not finite (base {base_value}, candidate {cand_value})")
    lo, hi = paired_bootstrap(bv, cv, seed=seed)
    p_value = lost = gained = None
    flipped: list[FlippedItem] = []
    if bv.binary and cv.binary:
        lost, gained, p_value = mcnemar_exact(bv.a, cv.a)
        flipped = _flipped(base_runs, cand_runs, keys, bv, cv, hib, filter_, max_flipped)
    return RetentionResult(
        tasks=tasks,
        metric=metric,
        filter=filter_,
        higher_is_better=hib,
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
        items_total=len(base_items),
        paired=(bv, cv),
    )


def _comparable_metric(base_runs: dict[str, TaskRun], metric: str) -> tuple[bool, str]:
    """The metric's direction and aggregation, the same in every task: else the tasks' items cannot be pooled."""
    tasks = tuple(base_runs)
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
    return hib.pop(), aggs.pop()


def _paired_items(
    base_runs: dict[str, TaskRun],
    cand_runs: dict[str, TaskRun],
    metric: str,
    filter_: str,
    aggregation: str,
    fn: object,
) -> tuple[list[tuple[str, int]], list[Any], list[Any], list[TaskDelta]]:
    """Both runs' values on the same items, task by task in doc order: (task, doc_id) keys, the base's and the
    candidate's values, and each task's scores. Items scored in one run only mean the data changed: an error."""
    base_items: list[Any] = []
    cand_items: list[Any] = []
    keys: list[tuple[str, int]] = []
    per_task = []
    for name in base_runs:
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
    return keys, base_items, cand_items, per_task


def _flipped(
    base_runs: dict[str, TaskRun],
    cand_runs: dict[str, TaskRun],
    keys: list[tuple[str, int]],
    bv: ItemValues,
    cv: ItemValues,
    higher_is_better: bool,
    filter_: str,
    max_flipped: int,
) -> list[FlippedItem]:
    """The first ``max_flipped`` 0/1 items the base got right and the candidate wrong, with both answers."""
    good = 1.0 if higher_is_better else 0.0
    flipped: list[FlippedItem] = []
    for (name, doc_id), x, y in zip(keys, bv.a, cv.a):
        if x == good and y != good and len(flipped) < max_flipped:
            sb = base_runs[name].sample(doc_id, filter_)
            sc = cand_runs[name].sample(doc_id, filter_)
            flipped.append(FlippedItem(name, doc_id, sb["prompt"], sb["target"], sb.get("answer"), sc.get("answer")))
    return flipped
