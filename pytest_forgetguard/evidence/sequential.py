"""Anytime-valid verdicts: decide a paired drop while the candidate's items are still being evaluated.

The candidate is evaluated on a seeded random order of the task's items, in growing chunks; after each
chunk the drop is tested against the allowance with a test that stays valid however often it looks, so
the check can stop as soon as the answer is known:

- **bounded per-item drops** (accuracy, exact match, any mean of values in [0, 1]: drops in [-1, 1]):
  two betting tests (Waudby-Smith & Ramdas 2023; Shafer 2021). For ``pass`` the null is "the drop is
  at least the allowance ``a``": the wealth ``prod(1 + lambda_i (a - d_i))`` is a nonnegative
  supermartingale under it, so by Ville's inequality it reaches ``1 / alpha`` with probability at most
  ``alpha``, at any item, however the looks are placed. ``fail`` is the mirror image. The bets
  ``lambda_i`` are predictable (a clipped growth-rate-adaptive plug-in of the items before ``i``). Valid
  in finite samples for items drawn in random order from the task, with no other condition.
- **real-valued ratios** (bits per byte, perplexities, means of unbounded values): an asymptotic
  confidence sequence (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas 2024, Theorem 2.2) on the delta
  method's per-item influence values. Conditions: items in random order, finite variance (a
  2 + delta moment), and enough items for the central limit theorem: it looks only from 30 items on
  and with at least 10 items that differ between the models.

Error accounting: the looks before the last spend ``SEQUENTIAL_SHARE`` of ``alpha``; a check that has
not stopped when every item is evaluated takes the fixed-sample verdict (:mod:`.verdicts`) at the rest,
so by the union bound the whole procedure's false pass (and false fail) stays within ``alpha``. A
relative allowance is taken at the base score's bound (the base is evaluated in full: its bound is
computed once, at ``RELATIVE_SHARE`` of the looks' share), as the fixed-sample verdicts do.

Example::

    >>> import numpy as np
    >>> test = Sequential(pass_at=0.05, fail_at=0.05, alpha=0.01, bounded=True)
    >>> test.decide(np.zeros(400))        # 400 items, none flipped: the drop is within 0.05
    'pass'
    >>> test.decide(np.ones(60) * 0.5)    # half a point lost per item: over 0.05 long before 60 items
    'fail'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..stats import ItemValues
from .verdicts import RELATIVE_SHARE, RatioItems, Verdict, allowance_for

# Of a check's alpha, the part its looks before the last may spend; the fixed-sample verdict at the last
# item takes the rest. Small, so a check that runs every item loses little against a full evaluation's
# verdict; the betting tests need only log(1 / alpha) of evidence, so a small share costs few items.
SEQUENTIAL_SHARE = 0.2
BET_CAP = 0.75  # of the largest bet that keeps the wealth nonnegative (Waudby-Smith & Ramdas' c)
MIN_ASYMPTOTIC = 30  # items before the asymptotic sequence looks at all
MIN_DIFFERING = 10  # items that differ between the models, likewise


def _wealth_crossed(x: np.ndarray, cap: float, threshold: float) -> int | None:
    """The first item (1-based) at which betting on ``x`` (values with a nonpositive mean under the null)
    reaches ``threshold`` wealth, or None. ``cap``: the largest allowed bet (the wealth stays >= 0)."""
    log_threshold = math.log(threshold)
    log_wealth = 0.0
    total = 0.0
    squares = 0.0
    for i, xi in enumerate(x):
        # Predictable bet: the growth-rate-adaptive plug-in of the items so far, with a prior of one item
        # at mean 0 and variance 1/4 (it starts cautious and learns the spread).
        mean = total / (i + 1)
        var = (squares - i * mean * mean + 0.25) / (i + 1)
        bet = min(max(mean / (var + mean * mean), 0.0), cap)
        log_wealth += math.log1p(bet * xi)
        if log_wealth >= log_threshold:
            return i + 1
        total += xi
        squares += xi * xi
    return None


def wealth_crossing(x: np.ndarray, cap: float, alpha: float) -> int | None:
    """Public form of the betting test: the first item at which the wealth of betting against "mean(x) <= 0"
    reaches ``1 / alpha`` (None: never). Vectorised callers (simulations) use :func:`crossings`."""
    return _wealth_crossed(np.asarray(x, dtype=np.float64), cap, 1.0 / alpha)


def crossings(x: np.ndarray, cap: float, alpha: float) -> np.ndarray:
    """:func:`wealth_crossing` for many sequences at once (rows of ``x``): the first crossing of each (0: none)."""
    x = np.asarray(x, dtype=np.float64)
    reps, n = x.shape
    log_threshold = math.log(1.0 / alpha)
    log_wealth = np.zeros(reps)
    total = np.zeros(reps)
    squares = np.zeros(reps)
    first = np.zeros(reps, dtype=np.int64)
    for i in range(n):
        mean = total / (i + 1)
        var = (squares - i * mean * mean + 0.25) / (i + 1)
        bet = np.clip(mean / (var + mean * mean), 0.0, cap)
        log_wealth += np.log1p(bet * x[:, i])
        first[(first == 0) & (log_wealth >= log_threshold)] = i + 1
        total += x[:, i]
        squares += x[:, i] ** 2
    return first


def asymptotic_radius(sd: float, n: int, alpha: float, target: int = 100) -> float:
    """The half-width at ``n`` items of the asymptotic confidence sequence (Gaussian mixture boundary, tuned
    to be tightest near ``target`` items), for a per-item standard deviation ``sd``; valid at ``alpha``
    over all ``n`` at once (two-sided, so each side holds at ``alpha / 2``: conservative for one side).

    >>> round(asymptotic_radius(1.0, 100, 0.05), 4)
    0.3035
    """
    log = -2.0 * math.log(alpha)
    rho2 = (log + math.log(log + 1.0)) / target
    return sd * math.sqrt(2.0 * (n * rho2 + 1.0) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1.0) / alpha))


@dataclass(frozen=True)
class Sequential:
    """The two anytime-valid tests of one check: ``pass`` when the drop is shown within ``pass_at``, ``fail``
    when shown over ``fail_at`` (the allowance, at the base score's bounds for a relative one), each at
    ``alpha`` (the looks' share of the check's alpha)."""

    pass_at: float
    fail_at: float
    alpha: float
    bounded: bool

    def decide(self, drops: np.ndarray) -> str | None:
        """``pass``, ``fail`` or None (look again) on the per-item drops in evaluation order, for bounded
        items (values in [-1, 1]); for real-valued items use :meth:`decide_ratio`."""
        d = np.asarray(drops, dtype=np.float64)
        if not self.bounded:
            raise ValueError("decide() is for bounded per-item drops; use decide_ratio()")
        if len(d) == 0 or not np.isfinite(d).all() or (np.abs(d) > 1.0 + 1e-12).any():
            raise ValueError("bounded per-item drops must be finite numbers in [-1, 1]")
        passing = _wealth_crossed(self.pass_at - d, BET_CAP / (1.0 - min(self.pass_at, 0.999)), 1.0 / self.alpha)
        failing = _wealth_crossed(d - self.fail_at, BET_CAP / (1.0 + max(self.fail_at, -0.999)), 1.0 / self.alpha)
        if passing is None and failing is None:
            return None
        if failing is None or (passing is not None and passing < failing):
            return "pass"
        return "fail"

    def decide_ratio(self, drop: float, sd: float, n: int, differing: int) -> str | None:
        """``pass``, ``fail`` or None for a real-valued drop (the ratio's delta-method estimate after ``n``
        items, with its per-item standard deviation ``sd``): the asymptotic sequence, from
        ``MIN_ASYMPTOTIC`` items and ``MIN_DIFFERING`` differing ones on."""
        if n < MIN_ASYMPTOTIC or differing < MIN_DIFFERING or not (math.isfinite(drop) and math.isfinite(sd)):
            return None
        radius = asymptotic_radius(sd, n, self.alpha)
        if drop + radius <= self.pass_at:
            return "pass"
        if drop - radius > self.fail_at:
            return "fail"
        return None

    def bounds(self, drops: np.ndarray) -> tuple[float, float]:
        """The sequence's (lower, upper) bounds of the drop after these items: the allowances its two tests
        would have proven by now (bisection; for display and ``provable``)."""
        d = np.asarray(drops, dtype=np.float64)

        def proves_within(a: float) -> bool:
            return _wealth_crossed(a - d, BET_CAP / (1.0 - min(a, 0.999)), 1.0 / self.alpha) is not None

        def proves_over(a: float) -> bool:
            return _wealth_crossed(d - a, BET_CAP / (1.0 + max(a, -0.999)), 1.0 / self.alpha) is not None

        return _bisect(proves_over, -1.0, 1.0, want=False), _bisect(proves_within, -1.0, 1.0, want=True)


def _bisect(test: Callable[[float], bool], lo: float, hi: float, want: bool, steps: int = 30) -> float:
    """For ``want=True`` the smallest ``a`` in [lo, hi] with ``test(a)`` (``test`` true from a threshold up;
    hi when none); for ``want=False`` the largest (``test`` true up to a threshold; lo when none)."""
    if not test(hi if want else lo):
        return hi if want else lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if test(mid) == want else (mid, hi)
    return hi if want else lo


def schedule(total: int, first: int, growth: float = 1.5) -> list[int]:
    """The cumulative numbers of items at which the check looks: ``first``, then growing by ``growth``,
    ending at ``total``.

    >>> schedule(1200, 100)
    [100, 150, 225, 338, 507, 760, 1140, 1200]
    >>> schedule(80, 100)
    [80]
    """
    if total < 1 or first < 1 or growth <= 1:
        raise ValueError("a schedule needs total >= 1, first >= 1 and growth > 1")
    looks = []
    n = float(first)
    while math.ceil(n) < total:
        looks.append(math.ceil(n))
        n *= growth
    return [*looks, total]


# -- the gate's use: paired lm-eval values in evaluation order ----------------------------------------


def plan(
    base: ItemValues,
    higher_is_better: bool,
    max_drop: float | None,
    max_drop_relative: float | None,
    alpha: float,
) -> Sequential | None:
    """The tests a check's looks run, from the base's values on every item (it is evaluated in full); None
    when the values have no anytime-valid method here (an aggregation that is not a mean or a ratio of
    sums: the candidate then runs every item). A relative allowance is taken at the base score's bounds,
    at ``RELATIVE_SHARE`` of the looks' alpha (Wilson for 0/1 items, t for the rest)."""
    from scipy.stats import t as student

    from .paired import RATIO_AGGREGATIONS
    from .verdicts import _wilson

    a_seq = alpha * SEQUENTIAL_SHARE
    spec = RATIO_AGGREGATIONS.get(base.aggregation)
    if spec is None or spec[1] != base.pairs or len(base) < 2:
        return None
    bounded = base.aggregation == "mean" and not base.pairs and bool(((base.a >= 0) & (base.a <= 1)).all())
    value = base.value()
    low = high = value
    a_test = a_seq
    if max_drop_relative is not None:
        a_test = a_seq * (1 - RELATIVE_SHARE)
        a_base = a_seq * RELATIVE_SHARE
        if base.binary:
            low, high = _wilson(int((base.a == 1.0).sum()), len(base), a_base)
        else:  # the base's score bound from its items' spread (delta method, as the fixed-sample verdicts)
            items = RatioItems(base.a, base.a, base.b if base.pairs else np.ones_like(base.a),
                               spec[0], higher_is_better)  # fmt: skip
            _, inf = items.influence()
            half = float(student.ppf(1 - a_base, len(base) - 1)) * float(inf.std(ddof=1)) / math.sqrt(len(base))
            low, high = value - half, value + half
    smallest = 0.0 if low <= 0.0 <= high else min(abs(low), abs(high))
    pass_at = allowance_for(smallest, max_drop, max_drop_relative)
    fail_at = allowance_for(max(abs(low), abs(high)), max_drop, max_drop_relative)
    return Sequential(pass_at, fail_at, a_test, bounded)


def look(test: Sequential, base: ItemValues, cand: ItemValues, higher_is_better: bool) -> str | None:
    """``pass``, ``fail`` or None (evaluate more) on the items evaluated so far, in evaluation order."""
    from .paired import ratio_items

    if test.bounded:
        drops = (base.a - cand.a) if higher_is_better else (cand.a - base.a)
        if not (np.isfinite(drops).all() and (np.abs(drops) <= 1.0).all()):
            return None  # the candidate's values left [0, 1]: no bounded test; the fixed-sample verdict decides
        return test.decide(drops)
    items = ratio_items(base, cand, higher_is_better)
    if items is None:
        return None
    inf, _ = items.influence()
    n = len(items.base)
    return test.decide_ratio(items.drop, float(inf.std(ddof=1)) if n > 1 else math.inf, n,
                             int((items.base != items.cand).sum()))  # fmt: skip


def stopped_verdict(
    verdict: str,
    test: Sequential,
    base: ItemValues,
    cand: ItemValues,
    higher_is_better: bool,
    allowance: float,
    alpha: float,
    total: int,
    looks: int,
) -> Verdict:
    """The :class:`~.verdicts.Verdict` of a check its looks decided after ``len(base)`` of ``total`` items."""
    from .paired import ratio_items

    n = len(base)
    if test.bounded:
        drops = (base.a - cand.a) if higher_is_better else (cand.a - base.a)
        drop = float(drops.mean())
        low, high = test.bounds(drops)
        method = "anytime-valid betting test (paired, bounded items)"
    else:
        items = ratio_items(base, cand, higher_is_better)
        assert items is not None  # look() decided on it
        inf, _ = items.influence()
        drop = items.drop
        radius = asymptotic_radius(float(inf.std(ddof=1)), n, test.alpha)
        low, high = drop - radius, drop + radius
        method = "asymptotic confidence sequence (paired ratio, delta method)"
    note = f"decided after {n:,} of {total:,} items ({looks} look{'s' if looks != 1 else ''})"
    return Verdict(verdict, drop, min(low, drop), max(high, drop), allowance, alpha, n, method, None, high, (note,))
