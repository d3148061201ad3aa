"""The evidence layer: pure functions that turn numbers into decisions with stated error rates.

:mod:`.verdicts` decides a paired drop against an allowance (PASS / FAIL / INCONCLUSIVE at ``alpha``);
:mod:`.planning` says how many items a decision needs. The gate, the ``forgetguard`` command and the
training callback all decide through here.
"""
