"""Drift checks: how far the candidate's weights moved from the base's, and its limits.

A cheap diagnostic (RL's Razor found weight-change norms predict forgetting
poorly): the relative L2 norm of the change and the share of weights that
changed by more than ``tolerance`` (:data:`~pytest_forgetguard.schema.DRIFT_KEYS`).
PEFT adapters are compared through their effective weights.

Example (in a test)::

    def test_weights(forgetguard):
        forgetguard.assert_drift(max_relative_l2=0.05)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..drift import DriftResult
from ..errors import DriftExceeded
from .base import PairChecks, check_number


class DriftChecks(PairChecks):
    """``drift()`` measures; ``assert_drift()`` gates on it."""

    def drift(self, tolerance: float = 1e-5) -> DriftResult:
        """Weight change of the candidate relative to the base (see :mod:`pytest_forgetguard.drift`).

        Tokenizers that differ do not stop the comparison of weights, but they
        are worth knowing: a warning says so.
        """
        from ..drift import weight_drift
        from ..models import tokenizer_difference

        tolerance = check_number("tolerance", tolerance)
        with self._measuring():
            result = weight_drift(self.base, self.candidate, tolerance=tolerance)
            differ = tokenizer_difference(self.base, self.candidate)
            if differ is not None:
                self._warn(
                    f"{differ}: the weights were compared, but the two models do not read text the same way "
                    "(a KL or retention check of this pair would say more)"
                )
            return result

    def assert_drift(
        self,
        max_relative_l2: float | None = None,
        max_changed_fraction: float | None = None,
        tolerance: float = 1e-5,
        name: str | None = None,
    ) -> DriftResult:
        """Fail with :class:`~pytest_forgetguard.errors.DriftExceeded` when the weights moved more than allowed."""
        __tracebackhide__ = True
        metric = "relative_l2" if max_relative_l2 is not None else "changed_fraction"
        with self._running(name, kind="drift", metric=metric) as run:  # a bad argument is recorded too
            if max_relative_l2 is None and max_changed_fraction is None:
                raise ValueError("assert_drift needs max_relative_l2 and/or max_changed_fraction")
            limits = {
                "relative_l2": None if max_relative_l2 is None else check_number("max_relative_l2", max_relative_l2),
                "changed_fraction": None
                if max_changed_fraction is None
                else check_number("max_changed_fraction", max_changed_fraction),
            }
            run.pending.budget = limits[metric]
            result = dataclasses.replace(self.drift(tolerance), limits=limits)
            message = None if result.passed else result.failure_message(self.candidate.short_label)
            run.finish(result.to_record(run.name, run.candidate), result.passed, message)
            if message is not None:
                raise DriftExceeded(message, result)
            return result


def run_suite_check(fg: DriftChecks, name: str, options: dict[str, Any]) -> DriftResult:
    """A suite's ``drift:`` check through the same gate as the fixture."""
    __tracebackhide__ = True
    return fg.assert_drift(name=name, **options)
