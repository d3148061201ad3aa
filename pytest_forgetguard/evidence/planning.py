"""How many items a retention verdict needs, before any model runs (``forgetguard plan``).

A paired binary comparison's variance comes from the items on which the two models disagree (the flip
rate): a candidate that flips few items is proven within its allowance with far fewer items than an
unpaired test needs. With flip rate ``d``, true drop ``drop``, allowance ``m``, the items for power
``1 - beta`` at level ``alpha`` are about ``((z_{1-alpha} + z_{1-beta}) / (m - drop))^2 (d - drop^2)``,
and never fewer than :func:`minimum_items` (what proves ``m`` when no item flips at all).

Example::

    >>> items_for(0.03, flip_rate=0.1)      # allowance 3 points, 10% of items flip, power 0.8
    720
    >>> round(provable_allowance(720, flip_rate=0.1), 4)
    0.03
    >>> minimum_items(0.02)                  # a 2-point allowance can never pass on fewer items
    180
"""

from __future__ import annotations

import math

from .verdicts import POWER, binary_items_needed, corrected_items, min_items_binary, z_quantile


def minimum_items(allowance: float, alpha: float = 0.05) -> int | None:
    """The fewest paired binary items that can prove ``allowance`` at ``alpha`` (every item agreeing);
    None when none can (an allowance of 0)."""
    return min_items_binary(allowance, alpha)


def items_for(
    allowance: float, flip_rate: float, alpha: float = 0.05, power: float = POWER, drop: float = 0.0
) -> int | None:
    """Paired binary items for a pass with probability ``power`` when the true drop is ``drop``.

    None when no number of items will do (``drop`` at or over the allowance, or an allowance of 0).
    """
    _check(allowance, flip_rate, alpha, power)
    if not drop < allowance:
        return None
    floor = minimum_items(allowance, alpha)
    if floor is None:
        return None
    var = flip_rate - drop * drop
    if var <= 0:
        return floor
    z = z_quantile(1.0 - alpha) + z_quantile(power)
    return max(floor, corrected_items(z, math.sqrt(var), allowance - drop))


def provable_allowance(n: int, flip_rate: float, alpha: float = 0.05, power: float = POWER, drop: float = 0.0) -> float:
    """The smallest allowance that ``n`` paired binary items prove with probability ``power`` (the inverse
    of :func:`items_for`)."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"the number of items must be a positive integer, got {n!r}")
    _check(0.5, flip_rate, alpha, power)
    lo, hi = drop, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        needed = items_for(mid, flip_rate, alpha, power, drop)
        if needed is not None and needed <= n:
            hi = mid
        else:
            lo = mid
    return hi


def _check(allowance: float, flip_rate: float, alpha: float, power: float) -> None:
    if not (0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if not (0.5 <= power < 1.0):
        raise ValueError(f"power must be in [0.5, 1), got {power}")
    if not (0.0 <= flip_rate <= 1.0):
        raise ValueError(f"the flip rate is a share of items, in [0, 1], got {flip_rate}")
    if not (0.0 <= allowance <= 1.0):
        raise ValueError(f"an allowance on a 0/1 metric is in [0, 1], got {allowance}")


__all__ = ["binary_items_needed", "items_for", "minimum_items", "provable_allowance"]
