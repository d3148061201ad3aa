"""Retention checks: lm-eval tasks on both models, compared item by item, and the allowed drop.

Options (enums and defaults: :data:`~pytest_forgetguard.schema.RETENTION_KEYS`):
``task`` (one or more lm-eval tasks, pooled over their items), ``metric``,
``include_path``, ``num_fewshot``, ``limit``, ``filter``, ``batch_size``,
``apply_chat_template``, ``backend``; the gate: ``max_drop`` and/or
``max_drop_relative``, decided at ``alpha`` (pass / fail / inconclusive, see
:mod:`pytest_forgetguard.evidence.verdicts`) with ``on_inconclusive`` and the
``gate`` policy (strict, significant, observed).
The base's per-item results are cached by its content fingerprint.

Example (in a test)::

    def test_keeps_capitals(forgetguard):
        forgetguard.assert_retained("fg_capitals", max_drop=0.10, alpha=0.05)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .. import context
from ..early_stop import DEFAULT_MIN_ITEMS, EarlyStop
from ..errors import CapabilityForgotten, ForgetguardError
from ..evidence.sequential import SEQUENTIAL_SHARE
from ..evidence.verdicts import DEFAULT_ALPHA, allowance_for
from ..retention import GATES, ON_INCONCLUSIVE, RetentionResult
from .base import LARGE_INPUT, PairChecks, check_number

if TYPE_CHECKING:
    from ..forecast import Forecast
    from ..lmeval import TaskRun
    from ..records import CheckRecord


class RetentionChecks(PairChecks):
    """``retention()`` measures; ``assert_retained()`` gates on it."""

    # Set by assert_retained while it measures: refuses a task too small to pass before the candidate runs.
    _before_candidate: "Callable[[RetentionResult], None] | None" = None
    # Set by assert_retained while it measures: the candidate is evaluated in chunks, stopped when decided.
    _early_stop: "EarlyStop | None" = None

    def retention(
        self,
        task: str | Sequence[str],
        metric: str | None = None,
        include_path: Any = None,
        num_fewshot: int | None = None,
        limit: int | float | None = None,
        filter: str | None = None,  # noqa: A002 (lm-eval's word)
        batch_size: int = 8,
        apply_chat_template: bool = False,
        backend: str = "hf",
    ) -> RetentionResult:
        """Run lm-eval task(s) on both models and compare them item by item.

        ``task`` is a task or group name or a list of them (looked up in the
        shipped probes, ``include_path`` and lm-eval's own tasks); ``metric``
        defaults to the task's first metric. Several tasks are pooled over
        their items (lm-eval's size-weighted group score). The base's
        per-item results come from the cache when nothing they depend on
        changed. ``backend="vllm"`` runs lm-eval's vLLM backend (CUDA, ``vllm``
        installed; otherwise a warning and the HF backend).
        """
        names = [task] if isinstance(task, str) else list(task)
        if limit is not None and (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or not (0 < limit <= 1 or (limit > 1 and float(limit).is_integer()))
        ):
            raise ValueError(
                f"limit must be a positive number of items: a whole number (>= 1) or a fraction in (0, 1], got {limit!r}"
            )
        if num_fewshot is not None and (
            isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0
        ):
            raise ValueError(f"num_fewshot must be an integer >= 0, got {num_fewshot!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        with self._measuring():
            return self._measure_retention(
                names, metric, include_path, num_fewshot, limit, filter, batch_size, apply_chat_template, backend,
                self._before_candidate,
            )  # fmt: skip

    def assert_retained(
        self,
        task: str | Sequence[str],
        max_drop: float | None = None,
        max_drop_relative: float | None = None,
        gate: str = "strict",
        name: str | None = None,
        alpha: float | None = None,
        on_inconclusive: str = "fail",
        forecast_from: str | None = None,
        forecast_coverage: float = 0.9,
        skip_if_forecast_within: bool = False,
        audit_rate: float = 0.1,
        stop_early: bool = True,
        min_items: int | None = None,
        **retention_options: Any,
    ) -> RetentionResult:
        """Fail with :class:`~pytest_forgetguard.errors.CapabilityForgotten` when the candidate lost more than allowed.

        ``max_drop`` is absolute (metric units), ``max_drop_relative`` a fraction
        of the base score; with both, the tighter applies. The verdict at
        ``alpha`` (default: ``--fg-alpha``, else 0.05) is ``pass`` when the drop's
        one-sided upper bound is within the allowance, ``fail`` when its lower
        bound is over it, ``inconclusive`` otherwise; ``on_inconclusive``
        (``fail``, the default, or ``pass`` with a warning) says what the last
        does. ``gate``: ``strict`` (default) is that rule; ``significant`` the
        same, always with ``on_inconclusive="pass"``; ``observed`` the point estimate
        against the allowance, with no error rate.

        ``forecast_from`` names a KL check of the suite (measured here when it
        has not run in this process): the drop is forecast from its KL value
        with a line fitted on the run history (conformal bounds: an interval at
        ``forecast_coverage`` and a one-sided upper bound at ``alpha``) and shown
        beside the measured drop. With ``skip_if_forecast_within``, an upper bound
        within the allowance decides the check without running lm-eval on the
        candidate (``details.decided_by: "forecast"``) — on evidence only (see
        :meth:`~pytest_forgetguard.forecast.Calibration.evidence_problems`), and
        a seeded share ``audit_rate`` of such checks is measured anyway
        (``details.audit``), so the history learns how often forecasts hold.

        ``stop_early`` (default): the candidate is evaluated on a seeded random order of the items in
        chunks (the first of ``min_items``) and stops as soon as an anytime-valid test decides
        (:mod:`~pytest_forgetguard.early_stop`); the error rate stays ``alpha``. ``--fg-no-early-stop``,
        ``stop_early=False`` and ``gate="observed"`` (a point estimate needs every item) run every item.
        """
        __tracebackhide__ = True
        metric = str(retention_options.get("metric") or "-")
        with self._running(name, kind="retention", metric=metric) as run:  # a bad argument is recorded too
            _validate(gate, on_inconclusive, max_drop, max_drop_relative, forecast_coverage, audit_rate)
            if not isinstance(stop_early, bool):
                raise ValueError(f"stop_early must be true or false, got {stop_early!r}")
            if min_items is not None and (
                isinstance(min_items, bool) or not isinstance(min_items, int) or min_items < 1
            ):
                raise ValueError(f"min_items must be a whole number >= 1, got {min_items!r}")
            alpha = self.resolved_alpha(alpha)
            forecast, note, series, audit = None, None, None, False
            if forecast_from is not None:
                plan = ForecastPlan(forecast_from, forecast_coverage, alpha, skip_if_forecast_within, audit_rate)
                planner = _planner(max_drop, max_drop_relative, gate, alpha, on_inconclusive)
                decided, forecast, note, series, audit = self._try_forecast(
                    plan, run.name, task, retention_options, planner
                )
                if decided is not None:
                    decided.gate_on(max_drop, max_drop_relative, gate, alpha, on_inconclusive)
                    if not decided.passed:  # the bound reaches past the allowance: no skip, so no audit either
                        audit = False
                        note = (
                            f"the forecast's upper bound at alpha {alpha:g} is {forecast.upper:+.4g}, over the "  # type: ignore[union-attr]
                            f"allowance {decided.allowance:.4g}: measured"
                        )
                    elif not audit:
                        run.finish(decided.to_record(run.name, run.candidate), True)
                        return decided
            self._before_candidate = _planner(max_drop, max_drop_relative, gate, alpha, on_inconclusive)
            if stop_early and self.early_stop and gate != "observed":
                first = DEFAULT_MIN_ITEMS if min_items is None else min_items
                self._early_stop = EarlyStop(max_drop, max_drop_relative, alpha, first, explicit=min_items is not None)
            try:
                result = self.retention(task, **retention_options)
            finally:
                self._before_candidate = self._early_stop = None
            result.forecast = None if forecast is None else forecast.to_json()
            result.forecast_note, result.series, result.audit = note, series, audit
            result.gate_on(max_drop, max_drop_relative, gate, alpha, on_inconclusive)
            inconclusive = result.inconclusive_note(run.name)
            if inconclusive:
                context.note(inconclusive)
            message = None if result.passed else result.failure_message(self.candidate.short_label, run.name)
            run.finish(result.to_record(run.name, run.candidate), result.passed, message)
            if message is not None:
                raise CapabilityForgotten(message, result)
            if inconclusive:
                # After recording: a warnings-as-errors setting must not lose the check's record.
                self._warn(inconclusive + f" (passed: {_why_passed(result)})")
            return result

    def resolved_alpha(self, alpha: float | None) -> float:
        """The check's alpha: ``--fg-alpha`` when given (it wins over a suite's key), else the argument,
        else 0.05. A value outside (0, 0.5) is a ``ValueError`` naming it."""
        value = self.alpha if self.alpha is not None else alpha
        if value is None:
            return DEFAULT_ALPHA
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 0.5:
            raise ValueError(f"alpha must be a number in (0, 0.5), got {value!r}")
        return float(value)

    # -- forecasts -------------------------------------------------------------------

    def _try_forecast(
        self,
        plan: "ForecastPlan",
        name: str,
        task: str | Sequence[str],
        options: dict[str, Any],
        planner: "Callable[[RetentionResult], None]",
    ) -> tuple["RetentionResult | None", "Forecast | None", str | None, str | None, bool]:
        """(a result decided by forecast or None, the forecast, why it does not decide, this check's
        series, whether this check is an audit: skippable, measured anyway). A task too small for the
        measured check to ever pass is not skipped either: the measurement path says why."""
        forecast, note, series, decisive = self._forecast(plan, task, options)
        if not (plan.skip and forecast is not None and decisive):
            return None, forecast, note, series, False
        if not self.forecasts or not self.forecasts.skip_allowed:
            return None, forecast, "--fg-no-forecast-skip: measured", series, False
        decided = self._decided_by_forecast(forecast, task, options, planner)
        if decided is None:
            return None, forecast, "the task is too small for this check to pass: measured", series, False
        audit = _audited(self.seed, name, self._fingerprint(), plan.audit_rate)
        if audit:
            note = f"audit: a forecast that could decide, measured anyway (audit_rate {plan.audit_rate:g})"
        return decided, forecast, note, series, audit

    def _fingerprint(self) -> str | None:
        try:
            return self.candidate.fingerprint
        except ForgetguardError:
            return None

    def _forecast(
        self, plan: "ForecastPlan", task: str | Sequence[str], options: dict[str, Any]
    ) -> tuple["Forecast | None", str | None, str | None, bool]:
        """(forecast, why there is none or why it may not decide, this check's series, whether it may decide)."""
        from ..forecast import Calibration

        source = self.forecasts
        if source is None:
            return None, "no run history in this run (--fg-no-history, or outside pytest)", None, False
        rec = self._kl_for_forecast(plan.kl_check, measure=plan.skip)
        if isinstance(rec, str):
            return None, rec, None, False
        if rec is None:
            return None, f"KL check {plan.kl_check!r} has not run for this candidate in this process", None, False
        kl = rec.value
        if rec.error is not None or not isinstance(kl, (int, float)) or not math.isfinite(kl):
            return None, f"KL check {plan.kl_check!r} did not give a finite value", None, False
        series = self._retention_series(task, options)
        kl_series = rec.details.get("series")
        if not kl_series:
            return None, f"KL check {plan.kl_check!r} has no series to calibrate on", series, False
        points = source.points(str(kl_series), series, self.base.fingerprint, self._fingerprint())
        if len(points) < 2:
            return None, f"no calibration yet ({len(points)} past candidate(s) measured both checks)", series, False
        calibration = Calibration.fit(points)
        forecast = calibration.forecast(float(kl), plan.coverage, source=plan.kl_check, alpha=plan.alpha)
        if forecast is None:
            more = calibration.needed(plan.coverage)
            why = f"{more} more measured run(s) needed for a {plan.coverage:.0%} forecast (have {calibration.n})"
            return None, why, series, False
        if forecast.extrapolation:
            lo, hi = min(calibration.x), max(calibration.x)
            why = f"KL {kl:.4g} is outside the range seen [{lo:.4g}, {hi:.4g}]: an extrapolation never decides"
            return forecast, why, series, False
        if not rec.passed:
            return forecast, f"KL check {plan.kl_check!r} failed: the forecast does not decide", series, False
        problems = calibration.evidence_problems(plan.alpha)
        if problems:
            return forecast, "the history may not decide: " + "; ".join(problems), series, False
        return forecast, None, series, True

    def _kl_for_forecast(self, kl_check: str, measure: bool) -> "CheckRecord | str | None":
        """The KL check's record for this candidate: from this process, or — where a skip is possible —
        measured now from the suite's options (under pytest-xdist it may have run in another worker: every
        process decides alike), once per candidate. A measurement that fails is a note, not this check's
        error (the KL check reports it itself)."""
        source = self.forecasts
        if source is None:
            return None
        found = source.kl_record(kl_check, self.candidate.label)
        if found is not None or not measure:
            return found
        spec = source.kl_options(kl_check)
        if spec is None:
            return None
        options = dict(spec)
        budget = options.pop("budget")
        try:
            result = self.kl(**options)  # type: ignore[attr-defined]  # KLChecks: the same pair of models
        except ForgetguardError as exc:
            return f"KL check {kl_check!r} could not be measured here ({type(exc).__name__}: {exc})"
        result.budget = budget
        rec: CheckRecord = result.to_record(kl_check, self.candidate.label)
        rec.settle(result.passed)
        source.keep_kl_record(rec)
        return rec

    def _decided_by_forecast(
        self,
        forecast: "Forecast",
        task: str | Sequence[str],
        options: dict[str, Any],
        planner: "Callable[[RetentionResult], None]",
    ) -> RetentionResult | None:
        """A result decided by the forecast (the base's score measured or cached, the candidate's not); None
        when the task is too small for the measured check to ever pass (``planner`` refuses it)."""
        from ..lmeval import evaluate, lm_eval_aggregation
        from ..retention import compare

        names = [task] if isinstance(task, str) else list(task)
        base_runs = evaluate(
            self.base, names, cache=self.cache, settings={"dtype": self.base.dtype, "device": self.base.device_class},
            seed=self.seed, warn=self._warn, parallel=self.parallel,
            **{k: v for k, v in options.items() if k not in ("metric", "filter")},
        )  # fmt: skip
        # The base against itself: its score, metric, filter and direction, as a measured check would see them.
        base = compare(base_runs, base_runs, metric=options.get("metric"), filter_=options.get("filter"),
                       seed=self.seed, aggregation_fn=lm_eval_aggregation)  # fmt: skip
        try:
            planner(base)
        except ValueError:
            return None
        return RetentionResult(
            tasks=base.tasks, metric=base.metric, filter=base.filter, higher_is_better=base.higher_is_better,
            base_value=base.base_value, candidate_value=float("nan"), ci_low=float("nan"), ci_high=float("nan"),
            n=0, p_value=None, lost=None, gained=None, per_task=[], decided_by="forecast",
            forecast=forecast.to_json(), series=self._retention_series(task, options), items_total=base.n,
        )  # fmt: skip

    def _retention_series(self, task: str | Sequence[str], options: dict[str, Any]) -> str:
        from ..lmeval import series_key

        names = [task] if isinstance(task, str) else list(task)
        return series_key(
            self.base,
            names,
            options.get("include_path"),
            options.get("num_fewshot"),
            options.get("limit"),
            self.seed,
            bool(options.get("apply_chat_template", False)),
            str(options.get("backend", "hf")),
            {"dtype": self.base.dtype, "device": self.base.device_class},
            options.get("metric"),
            options.get("filter"),
        )

    def _measure_retention(
        self,
        names: list[str],
        metric: str | None,
        include_path: Any,
        num_fewshot: int | None,
        limit: int | float | None,
        filter: str | None,  # noqa: A002
        batch_size: int,
        apply_chat_template: bool,
        backend: str,
        before_candidate: "Callable[[RetentionResult], None] | None" = None,
    ) -> RetentionResult:
        from ..lmeval import evaluate, find_tasks, lm_eval_aggregation
        from ..retention import compare

        find_tasks(names, include_path)  # an unknown task or a broken task file: an error before any model loads
        self._vocab(False)
        options = dict(
            include_path=include_path,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            seed=self.seed,
            apply_chat_template=apply_chat_template,
            backend=backend,
            warn=self._warn,
            parallel=self.parallel,
        )
        settings = {"dtype": self.base.dtype, "device": self.base.device_class}
        misses = self.cache.misses if self.cache is not None else 0
        base_runs = evaluate(self.base, names, cache=self.cache, settings=settings, **options)
        base_cached = self.cache is not None and self.cache.misses == misses
        if before_candidate is not None:
            # The base against itself: the task's items, metric and direction, before the candidate's cost.
            before_candidate(
                compare(base_runs, base_runs, metric=metric, filter_=filter, seed=self.seed, aggregation_fn=lm_eval_aggregation)
            )  # fmt: skip
        large = large_task(names, base_runs)
        if large is not None:  # before the candidate's run, which costs as much as the base's did
            self._warn(large)
        if self._early_stop is None:
            cand_runs = evaluate(self.candidate, names, **options)
            result = compare(
                base_runs, cand_runs, metric=metric, filter_=filter, seed=self.seed, aggregation_fn=lm_eval_aggregation
            )
        else:
            result = self._in_chunks(names, base_runs, metric, filter, options, self._early_stop)
        result.base_cached = base_cached
        return result

    def _in_chunks(
        self,
        names: list[str],
        base_runs: "dict[str, TaskRun]",
        metric: str | None,
        filter_: str | None,
        options: dict[str, Any],
        stop: EarlyStop,
    ) -> RetentionResult:
        """The candidate in growing chunks of a seeded order of the base's items, until a look decides."""
        from ..early_stop import item_order, restrict, run_in_chunks
        from ..lmeval import evaluate, lm_eval_aggregation
        from ..retention import compare

        whole = compare(base_runs, base_runs, metric=metric, filter_=filter_, seed=self.seed,
                        aggregation_fn=lm_eval_aggregation)  # fmt: skip
        assert whole.paired is not None
        stop = replace(stop, higher_is_better=whole.higher_is_better)
        order = item_order(base_runs, whole.metric, whole.filter, self.seed)
        chunked = run_in_chunks(
            lambda samples: evaluate(self.candidate, names, samples=samples, **options),
            base_runs, order, stop, whole.metric, whole.filter, whole.paired[0].aggregation, whole.paired[0].fn,
        )  # fmt: skip
        for note in chunked.notes:
            context.note(note)
        result = compare(restrict(base_runs, set(chunked.evaluated)), chunked.runs, metric=whole.metric,
                         filter_=whole.filter, seed=self.seed, aggregation_fn=lm_eval_aggregation)  # fmt: skip
        if len(chunked.evaluated) < chunked.items_total:
            # The base's score is known on every item: report it, and the candidate's as the base's plus the
            # paired delta on the items compared (so every candidate shows the same base score).
            delta = result.delta
            result.base_value, result.candidate_value = whole.base_value, whole.base_value + delta
        result.items_total = chunked.items_total
        result.early = chunked.verdict
        result.looks = chunked.looks + (chunked.verdict is None)  # the last item's fixed-sample verdict is a look
        result.alpha_spent = chunked.looks and stop.alpha * SEQUENTIAL_SHARE
        return result


def large_task(names: Sequence[str], runs: "dict[str, TaskRun]") -> str | None:
    """A warning for a retention check over more than :data:`~.base.LARGE_INPUT` items, with how to cut it."""
    items = sum(len({s["doc_id"] for s in run.samples}) for run in runs.values())
    if items <= LARGE_INPUT:
        return None
    return (
        f"retention check on {', '.join(names)}: {items:,} items (after limit), each one or more lm-eval requests "
        "for base and candidate alike. Cut it with limit (suite: `limit: 1000`, or a fraction such as `limit: 0.1`)"
    )


def _validate(
    gate: str,
    on_inconclusive: str,
    max_drop: float | None,
    max_drop_relative: float | None,
    forecast_coverage: float,
    audit_rate: float,
) -> None:
    """The gate's options, each a ``ValueError`` naming it (suite files are checked earlier, by the schema)."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
    if on_inconclusive not in ON_INCONCLUSIVE:
        raise ValueError(f"on_inconclusive must be one of {', '.join(ON_INCONCLUSIVE)}, got {on_inconclusive!r}")
    for label, v in (("max_drop", max_drop), ("max_drop_relative", max_drop_relative)):
        if v is not None:
            check_number(label, v)
    if max_drop is None and max_drop_relative is None:
        raise ValueError("assert_retained needs max_drop (absolute) and/or max_drop_relative")
    if not (isinstance(forecast_coverage, (int, float)) and 0 < forecast_coverage < 1):
        raise ValueError(f"forecast_coverage must be in (0, 1), got {forecast_coverage!r}")
    if isinstance(audit_rate, bool) or not isinstance(audit_rate, (int, float)) or not 0 <= audit_rate <= 1:
        raise ValueError(f"audit_rate must be a number in [0, 1], got {audit_rate!r}")


@dataclass(frozen=True)
class ForecastPlan:
    """A retention check's forecast options: the KL check, the interval's coverage, the alpha its upper
    bound is taken at, whether it may skip the measurement, and the share of skips audited."""

    kl_check: str
    coverage: float
    alpha: float
    skip: bool
    audit_rate: float


def _audited(seed: int, name: str, fingerprint: str | None, rate: float) -> bool:
    """Whether a check a forecast could decide is measured anyway: a seeded draw from the run's seed, the
    check and the candidate, so every process (serial, xdist, torchrun) and every rerun draws alike."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{seed}|{name}|{fingerprint}".encode()).hexdigest()
    return int(digest[:13], 16) / 16**13 < rate


def _planner(
    max_drop: float | None, max_drop_relative: float | None, gate: str, alpha: float, on_inconclusive: str
) -> "Callable[[RetentionResult], None]":
    """A check, run on the base's results before the candidate is evaluated, that refuses a task too small
    to ever pass: binary items fewer than a pass needs even when no item flips (strict gate, inconclusive
    fails). Spending the candidate's evaluation on it could only end inconclusive."""

    def plan(base: RetentionResult) -> None:
        from ..evidence.planning import minimum_items

        if gate != "strict" or on_inconclusive != "fail" or base.paired is None or not base.paired[0].binary:
            return
        allowance = allowance_for(base.base_value, max_drop, max_drop_relative)
        needed = minimum_items(allowance, alpha)
        if needed is None or base.n < needed:
            at_least = "no number of items proves a drop of 0" if needed is None else f"at least {needed} items"
            raise ValueError(
                f"{', '.join(base.tasks)} has {base.n} items (after limit); proving a drop within {allowance:.4g} "
                f"at alpha {alpha:g} needs {at_least} even when no item flips, so this check could never pass. "
                "Use more items (a larger limit or task), a larger allowance, on_inconclusive: pass, or gate: "
                "observed (no error rate); `forgetguard plan` prints the numbers"
            )

    return plan


def _why_passed(result: RetentionResult) -> str:
    if result.gate == "observed":
        return "gate: observed decides on the point estimate"
    return "on_inconclusive: pass" if result.gate == "strict" else "gate: significant passes an inconclusive verdict"


def run_suite_check(fg: RetentionChecks, name: str, options: dict[str, Any]) -> RetentionResult:
    """A suite's ``retention:`` check through the same gate as the fixture."""
    __tracebackhide__ = True
    opts = dict(options)
    task = opts.pop("task")
    return fg.assert_retained(task, name=name, **opts)
