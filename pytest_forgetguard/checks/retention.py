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

from collections.abc import Sequence
from typing import Any

from .. import context
from ..errors import CapabilityForgotten
from ..retention import GATES, RetentionResult
from .base import PairChecks, check_number


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
        **retention_options: Any,
    ) -> RetentionResult:
        """Fail with :class:`~pytest_forgetguard.errors.CapabilityForgotten` when the candidate lost more than allowed.

        ``max_drop`` is absolute (metric units), ``max_drop_relative`` a fraction
        of the base score; with both, the tighter applies. ``gate``: ``observed``
        (default) fails when the observed drop exceeds the allowance;
        ``significant`` only when it does so with 95% confidence; ``strict``
        unless the 95% CI shows the drop is within the allowance.
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
            result = self.retention(task, **retention_options)
            result.gate_on(max_drop, max_drop_relative, gate)
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
