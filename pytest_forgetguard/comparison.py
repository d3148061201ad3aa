"""``Forgetguard``: the comparison of a candidate with its base (the ``forgetguard`` fixture's object).

A thin front: every kind of check lives in its own module of
:mod:`pytest_forgetguard.checks` (the measurement, the gate, the record and
the failure message), over the engine they share (:mod:`.checks.base`).
Every check computes a result object first, then decides; a gate raises a
subclass of ``AssertionError`` whose message says what was measured, the
value, the budget, the margin, the confidence interval, n and the worst
examples, and records itself (``record`` callback) for the session's reports.

Example (in a test)::

    def test_task_kl(forgetguard):
        result = forgetguard.assert_kl_budget("prompts.jsonl", budget=0.05)
        assert result.top1_agreement > 0.9

Outside pytest::

    store = ModelStore(device="cpu")
    base = store.get("models/base", role="base")
    fg = Forgetguard(base, store.get("runs/ckpt-400", base=base))
    fg.kl("prompts.jsonl").value
"""

from __future__ import annotations

from .checks import DriftChecks, KLChecks, RetentionChecks
from .checks.kl import DEFAULT_SAMPLE_FROM, SAMPLE_FROM

__all__ = ["DEFAULT_SAMPLE_FROM", "SAMPLE_FROM", "Forgetguard"]


class Forgetguard(KLChecks, RetentionChecks, DriftChecks):
    """Checks of ``candidate`` against ``base``: KL (``kl``, ``assert_kl_budget``), capability retention
    (``retention``, ``assert_retained``) and weight drift (``drift``, ``assert_drift``).

    Constructor arguments: see :class:`~pytest_forgetguard.checks.base.PairChecks`.
    """
