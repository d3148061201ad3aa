"""Retention checks: lm-eval tasks on both models, compared item by item, and the allowed drop.

Options (enums and defaults: :data:`~pytest_forgetguard.schema.RETENTION_KEYS`):
``task`` (one or more lm-eval tasks, pooled over their items), ``metric``,
``include_path``, ``num_fewshot``, ``limit``, ``filter``, ``batch_size``,
``apply_chat_template``, ``backend``; the gate: ``max_drop`` and/or
``max_drop_relative`` with a ``gate`` policy (observed, significant, strict).
The base's per-item results are cached by its content fingerprint.

Example (in a test)::

    def test_keeps_capitals(forgetguard):
        forgetguard.assert_retained("fg_capitals", max_drop=0.05, gate="significant")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import context
from ..errors import CapabilityForgotten, ForgetguardError
from ..retention import GATES, RetentionResult
from .base import PairChecks, check_number

if TYPE_CHECKING:
    from ..forecast import Forecast


class RetentionChecks(PairChecks):
    """``retention()`` measures; ``assert_retained()`` gates on it."""

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
                names, metric, include_path, num_fewshot, limit, filter, batch_size, apply_chat_template, backend
            )

    def assert_retained(
        self,
        task: str | Sequence[str],
        max_drop: float | None = None,
        max_drop_relative: float | None = None,
        gate: str = "observed",
        name: str | None = None,
        forecast_from: str | None = None,
        forecast_coverage: float = 0.9,
        skip_if_forecast_within: bool = False,
        **retention_options: Any,
    ) -> RetentionResult:
        """Fail with :class:`~pytest_forgetguard.errors.CapabilityForgotten` when the candidate lost more than allowed.

        ``max_drop`` is absolute (metric units), ``max_drop_relative`` a fraction
        of the base score; with both, the tighter applies. ``gate``: ``observed``
        (default) fails when the observed drop exceeds the allowance;
        ``significant`` only when it does so with 95% confidence; ``strict``
        unless the 95% CI shows the drop is within the allowance.

        ``forecast_from`` names a KL check that ran before for this candidate:
        the drop is forecast from its KL value with a line fitted on the run
        history (a jackknife+ interval at ``forecast_coverage``) and shown beside
        the measured drop. With ``skip_if_forecast_within``, a forecast interval
        that lies entirely within the allowance decides the check without
        running lm-eval on the candidate (``details.decided_by: "forecast"``);
        an interval that straddles the allowance, an extrapolation, a KL check
        that failed, or too little history: the check runs.
        """
        __tracebackhide__ = True
        metric = str(retention_options.get("metric") or "-")
        with self._running(name, kind="retention", metric=metric) as run:  # a bad argument is recorded too
            if gate not in GATES:
                raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
            for label, v in (("max_drop", max_drop), ("max_drop_relative", max_drop_relative)):
                if v is not None:
                    check_number(label, v)
            if max_drop is None and max_drop_relative is None:
                raise ValueError("assert_retained needs max_drop (absolute) and/or max_drop_relative")
            if not (isinstance(forecast_coverage, (int, float)) and 0 < forecast_coverage < 1):
                raise ValueError(f"forecast_coverage must be in (0, 1), got {forecast_coverage!r}")
            forecast, note, series = None, None, None
            if forecast_from is not None:
                forecast, note, series, decisive = self._forecast(
                    forecast_from, forecast_coverage, task, retention_options
                )
                if skip_if_forecast_within and forecast is not None:
                    decided = self._decide_by_forecast(forecast, decisive, task, retention_options)
                    if isinstance(decided, RetentionResult):
                        decided.gate_on(max_drop, max_drop_relative, gate)
                        if decided.passed:
                            run.finish(decided.to_record(run.name, run.candidate), True)
                            return decided
                        note = (
                            f"the forecast interval reaches {forecast.high:+.4g}, over the allowance "
                            f"{decided.allowance:.4g}: measured"
                        )
                    elif decided is not None:
                        note = decided
            result = self.retention(task, **retention_options)
            result.forecast = None if forecast is None else forecast.to_json()
            result.forecast_note, result.series = note, series
            result.gate_on(max_drop, max_drop_relative, gate)
            if forecast is not None and note is not None and "interval reaches" not in note:
                allowance = result.allowance
                if allowance is not None and not forecast.high <= allowance:  # NaN-safe: says so too
                    result.forecast_note = (
                        f"{note}; its interval also reaches {forecast.high:+.4g}, over the allowance {allowance:.4g}"
                    )
            underpowered = result.underpowered(run.name)
            if underpowered:
                context.note(underpowered)
            message = None if result.passed else result.failure_message(self.candidate.short_label, run.name)
            run.finish(result.to_record(run.name, run.candidate), result.passed, message)
            if message is not None:
                raise CapabilityForgotten(message, result)
            if underpowered:
                # After recording: a warnings-as-errors setting must not lose the check's record.
                self._warn(underpowered)
            return result

    # -- forecasts -------------------------------------------------------------------

    def _forecast(
        self, kl_check: str, coverage: float, task: str | Sequence[str], options: dict[str, Any]
    ) -> tuple["Forecast | None", str | None, str | None, bool]:
        """(forecast, why there is none, this check's series, whether the forecast may decide)."""
        from ..forecast import Calibration

        source = self.forecasts
        if source is None:
            return None, "no run history in this run (--fg-no-history, or outside pytest)", None, False
        rec = source.kl_record(kl_check, self.candidate.label)
        if rec is None:
            return None, f"KL check {kl_check!r} has not run for this candidate in this process", None, False
        kl = rec.value
        if rec.error is not None or not isinstance(kl, (int, float)) or not math.isfinite(kl):
            return None, f"KL check {kl_check!r} did not give a finite value", None, False
        series = self._retention_series(task, options)
        kl_series = rec.details.get("series")
        if not kl_series:
            return None, f"KL check {kl_check!r} has no series to calibrate on", series, False
        try:
            exclude: str | None = self.candidate.fingerprint
        except ForgetguardError:
            exclude = None
        points = source.points(str(kl_series), series, self.base.fingerprint, exclude)
        if len(points) < 2:
            return None, f"no calibration yet ({len(points)} past candidate(s) measured both checks)", series, False
        calibration = Calibration.fit(points)
        forecast = calibration.forecast(float(kl), coverage, source=kl_check)
        if forecast is None:
            more = calibration.needed(coverage)
            return (
                None,
                f"{more} more measured run(s) needed for a {coverage:.0%} forecast (have {calibration.n})",
                series,
                False,
            )
        if forecast.extrapolation:
            lo, hi = min(calibration.x), max(calibration.x)
            return (
                forecast,
                f"KL {kl:.4g} is outside the range seen [{lo:.4g}, {hi:.4g}]: an extrapolation never decides",
                series,
                False,
            )
        if not rec.passed:
            return forecast, f"KL check {kl_check!r} failed: the forecast does not decide", series, False
        return forecast, None, series, True

    def _decide_by_forecast(
        self, forecast: "Forecast", decisive: bool, task: str | Sequence[str], options: dict[str, Any]
    ) -> "RetentionResult | str | None":
        """A result decided by the forecast (the base's score measured or cached, the candidate's not),
        or why the forecast cannot decide (None: a note was given already)."""
        if not decisive:
            return None
        if not self.forecasts or not self.forecasts.skip_allowed:
            return "--fg-no-forecast-skip: measured"
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
        return RetentionResult(
            tasks=base.tasks, metric=base.metric, filter=base.filter, higher_is_better=base.higher_is_better,
            base_value=base.base_value, candidate_value=float("nan"), ci_low=float("nan"), ci_high=float("nan"),
            n=0, p_value=None, lost=None, gained=None, per_task=[], decided_by="forecast",
            forecast=forecast.to_json(), series=self._retention_series(task, options),
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
        cand_runs = evaluate(self.candidate, names, **options)
        result = compare(
            base_runs, cand_runs, metric=metric, filter_=filter, seed=self.seed, aggregation_fn=lm_eval_aggregation
        )
        result.base_cached = base_cached
        return result


def run_suite_check(fg: RetentionChecks, name: str, options: dict[str, Any]) -> RetentionResult:
    """A suite's ``retention:`` check through the same gate as the fixture."""
    __tracebackhide__ = True
    opts = dict(options)
    task = opts.pop("task")
    return fg.assert_retained(task, name=name, **opts)
