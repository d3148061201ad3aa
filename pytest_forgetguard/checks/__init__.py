"""The kinds of check, one module each, over the shared engine in :mod:`.base`.

Each module gives a mixin of :class:`~.base.PairChecks` with its measurement
and its gate (``kl``/``assert_kl_budget``, ``retention``/``assert_retained``,
``drift``/``assert_drift``) and ``run_suite_check``, which runs a suite file's
check of that kind through the same gate. :class:`~pytest_forgetguard.comparison.Forgetguard`
is their union. A new kind of check is a new module here, its mixin added to
``Forgetguard`` and its runner to :data:`SUITE_RUNNERS`, and its options in
:mod:`pytest_forgetguard.schema`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import drift, kl, retention
from .base import PairChecks, check_number
from .drift import DriftChecks
from .kl import KLChecks
from .retention import RetentionChecks

# kind (the key a suite's check uses) -> runner(forgetguard, check name, options)
SUITE_RUNNERS: dict[str, Callable[[Any, str, dict[str, Any]], Any]] = {
    "kl": kl.run_suite_check,
    "drift": drift.run_suite_check,
    "retention": retention.run_suite_check,
}

__all__ = ["SUITE_RUNNERS", "DriftChecks", "KLChecks", "PairChecks", "RetentionChecks", "check_number"]
