"""Verdicts with stated error rates: PASS, FAIL or INCONCLUSIVE on a paired drop against an allowance.

A retention gate claims "the candidate's drop is within the allowance". This module turns paired
per-item results into that claim the way a non-inferiority trial does (ICH E9/E10):

- ``pass`` when the one-sided upper confidence bound of the drop at level ``alpha`` is within the
  allowance (a drop *equal* to the allowance is within it);
- ``fail`` when the one-sided lower bound is over it;
- ``inconclusive`` otherwise, with the items that would decide it at the observed spread.

So a candidate whose true drop is at the allowance passes with probability at most ``alpha``, and one
whose true drop is at the allowance fails with probability at most ``alpha`` too.

Methods (every function here is pure: numbers in, numbers out; no pytest, no lm-eval):

- **binary items, mean aggregation** (accuracy, exact match): the score test for a difference of paired
  proportions with its restricted maximum-likelihood variance (Tango 1998), with a continuity
  correction of half an item toward the null. The exact false-pass probability at the boundary,
  enumerated over the trinomial for n up to 1,000, allowances 0.01-0.1 and every discordance rate
  tried, is at most 0.048 at ``alpha = 0.05`` (tests/unit/test_verdicts.py recomputes it);
- **ratios of sums** (bits per byte, word/byte perplexity, means of real values): the paired drop
  linearised (delta method) over items, Student-t bounds with n - 1 degrees of freedom; asymptotic,
  stated for n >= 30 with no item dominating the sums (the simulations in the tests cover skewed
  lengths and heavy-tailed differences);
- **a relative allowance** (``max_drop_relative``) depends on the base's score, itself measured: the
  drop's bound takes 90% of ``alpha`` and the base score's bound the other 10% (a union bound), so
  the error rate stays within ``alpha`` without treating the base's score as exact.

Example::

    >>> v = paired_binary(lost=3, gained=4, n=400, base_correct=280, max_drop=0.05, alpha=0.05)
    >>> v.verdict, round(v.high, 4), v.items_needed
    ('pass', 0.0116, None)
    >>> paired_binary(lost=9, gained=2, n=60, base_correct=40, max_drop=0.05, alpha=0.05).verdict
    'inconclusive'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VERDICTS = ("pass", "fail", "inconclusive")
DEFAULT_ALPHA = 0.05  # a retention check's alpha when neither it nor --fg-alpha gives one
POWER = 0.8  # the power at which "items needed" is planned
# Items moved toward each null before the score test, so the exact error rates stay <= alpha: half an
# item for a pass; a whole one for a fail, where few discordant items make the count of lost ones skewed
# (a heavier upper tail than the normal's).
CONTINUITY = 0.5
FAIL_CONTINUITY = 1.0
RELATIVE_SHARE = 0.1  # of alpha, spent on the base score's bound when the allowance is relative


@dataclass(frozen=True)
class Verdict:
    """The decision on one paired drop, with everything a person needs to act on it.

    ``drop`` is positive when the candidate is worse. ``low`` and ``high`` are one-sided confidence
    bounds of the drop (each at ``alpha``; together a ``1 - 2 alpha`` interval). ``allowance`` is the
    allowed drop in the metric's units (from the base's observed score for a relative allowance);
    ``items_needed`` is the number of items that would decide an inconclusive result with power 0.8 at
    the observed drop and spread (None when decided, or when no number of items would: a drop that
    sits on the allowance); ``provable`` the smallest absolute allowance these items prove.
    """

    verdict: str
    drop: float
    low: float
    high: float
    allowance: float
    alpha: float
    n: int
    method: str
    items_needed: int | None = None
    provable: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def decided(self) -> bool:
        return self.verdict != "inconclusive"

    def passes(self, on_inconclusive: str = "fail") -> bool:
        """Whether a gate passes: on ``pass``, and on ``inconclusive`` only under ``on_inconclusive="pass"``."""
        return self.verdict == "pass" or (self.verdict == "inconclusive" and on_inconclusive == "pass")

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "drop": self.drop,
            "low": self.low,
            "high": self.high,
            "allowance": self.allowance,
            "alpha": self.alpha,
            "n": self.n,
            "method": self.method,
            "items_needed": self.items_needed,
            "provable": self.provable,
        }

    def explain(self) -> str:
        """One line: the verdict, the drop and its bounds against the allowance, and what would decide it.

        >>> paired_binary(9, 2, 60, 40, max_drop=0.05, alpha=0.05).explain()  # doctest: +NORMALIZE_WHITESPACE
        'INCONCLUSIVE: drop +0.1167, one-sided 95% bounds [+0.01515, +0.2238] vs allowance 0.05; about 251 items
        would decide it (power 0.8 at the observed drop and spread); these 60 items prove only an allowance of
        0.2238'
        """
        level = f"{1 - self.alpha:.0%}"
        head = (
            f"{self.verdict.upper()}: drop {self.drop:+.4g}, one-sided {level} bounds [{self.low:+.4g}, "
            f"{self.high:+.4g}] vs allowance {self.allowance:.4g}"
        )
        if self.verdict == "inconclusive":
            if self.items_needed is not None:
                head += (
                    f"; about {self.items_needed} items would decide it (power {POWER:g} at the observed drop and "
                    "spread)"
                )
            else:
                head += "; the drop sits on the allowance: no number of items decides it"
            if self.provable is not None and math.isfinite(self.provable):
                head += f"; these {self.n} items prove only an allowance of {self.provable:.4g}"
        return head + "".join(f"; {note}" for note in self.notes)


def z_quantile(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be a number in (0, 0.5), got {alpha!r}")


# -- paired binary items: the score test for a difference of paired proportions ------------------


def score_z(lost: float, gained: float, n: int, delta0: float) -> float:
    """The score statistic for H0: p_lost - p_gained = ``delta0`` over ``n`` paired binary items.

    The variance is that of one item's difference under the null, with the cell probabilities at their
    restricted maximum-likelihood values (closed form; Tango 1998). Decreasing in ``delta0``.

    >>> round(score_z(10, 10, 200, 0.0), 6), score_z(0, 0, 100, 0.0)
    (0.0, 0.0)
    """
    d = float(delta0)
    b = lost + gained - d * (2 * n - lost + gained)
    c = gained * d * (1.0 - d)
    p_gained = (b + math.sqrt(max(b * b + 8.0 * n * c, 0.0))) / (4.0 * n)
    var = n * (2.0 * p_gained + d - d * d)
    num = lost - gained - n * d
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _score_bound(lost: float, gained: float, n: int, z: float, upper: bool) -> float:
    """The ``delta0`` at which the score statistic equals -z (upper bound) or +z (lower bound)."""
    target = -z if upper else z
    lo, hi = -1.0 + 1e-12, 1.0 - 1e-12
    point = (lost - gained) / n
    if upper:
        lo = min(max(point, lo), hi)
        if score_z(lost, gained, n, hi) > target:
            return 1.0
    else:
        hi = max(min(point, hi), lo)
        if score_z(lost, gained, n, lo) < target:
            return -1.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if score_z(lost, gained, n, mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def binary_bounds(lost: int, gained: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided (lower, upper) confidence bounds of the paired drop (lost - gained) / n, each at ``alpha``.

    :data:`CONTINUITY` items more lost for the upper bound, :data:`FAIL_CONTINUITY` fewer (or more gained
    where too few were lost) for the lower one.

    >>> lo, hi = binary_bounds(0, 0, 200, 0.05)
    >>> round(lo, 4), round(hi, 4)
    (-0.0221, 0.0179)
    """
    z = z_quantile(1.0 - alpha)
    high = _score_bound(lost + CONTINUITY, gained, n, z, upper=True)
    shift = min(lost, FAIL_CONTINUITY)
    low = _score_bound(lost - shift, gained + FAIL_CONTINUITY - shift, n, z, upper=False)
    return min(low, (lost - gained) / n), max(high, (lost - gained) / n)


def binary_items_needed(drop: float, discordance: float, allowance: float, alpha: float) -> int | None:
    """Items that decide a paired binary comparison with power :data:`POWER` (normal approximation).

    ``discordance`` is the share of items on which the two models disagree. With none, the minimum that
    proves the allowance when no item flips (:func:`min_items_binary`).

    >>> binary_items_needed(0.0, 0.1, 0.03, 0.05)   # background: about 700 at d = 0.1, margin 0.03
    720
    """
    gap = abs(allowance - drop)
    if gap <= 1e-12:
        return None
    var = discordance - drop * drop
    if var <= 0.0:
        return min_items_binary(allowance, alpha) if drop < allowance else None
    return corrected_items(z_quantile(1.0 - alpha) + z_quantile(POWER), math.sqrt(var), gap)


def corrected_items(z: float, sd: float, gap: float) -> int:
    """n with sqrt(n) gap - CONTINUITY / sqrt(n) = z sd: the normal approximation, less the half item the
    score test gives away (a quadratic in sqrt(n))."""
    root = (z * sd + math.sqrt(z * z * sd * sd + 4 * gap * CONTINUITY)) / (2 * gap)
    return max(2, math.ceil(root * root))


def min_items_binary(allowance: float, alpha: float) -> int | None:
    """The fewest paired binary items that can prove ``allowance`` at all (every item agreeing).

    None when no number can (allowance 0). The score statistic with no discordant item is
    -sqrt(n d/(1 - d)) at d = allowance, after the half-item continuity correction; this inverts it.

    >>> min_items_binary(0.02, 0.05), min_items_binary(0.10, 0.05)
    (180, 34)
    """
    _check_alpha(alpha)
    if not allowance > 0:
        return None
    if allowance >= 1:
        return 1
    z = z_quantile(1.0 - alpha)
    n = 1
    # score_z is monotone in n here; a doubling then bisection search stays exact.
    while score_z(CONTINUITY, 0.0, n, allowance) > -z:
        n *= 2
        if n > 10**9:
            return None
    lo, hi = n // 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if score_z(CONTINUITY, 0.0, mid, allowance) <= -z:
            hi = mid
        else:
            lo = mid
    return hi


def paired_binary(
    lost: int,
    gained: int,
    n: int,
    base_correct: int,
    max_drop: float | None = None,
    max_drop_relative: float | None = None,
    alpha: float = 0.05,
) -> Verdict:
    """The verdict on paired 0/1 items: ``lost`` right for the base only, ``gained`` for the candidate only.

    ``base_correct`` (items the base got right) gives the base's score for a relative allowance.
    """
    _check_alpha(alpha)
    if n <= 0:
        raise ValueError("a verdict needs at least one paired item")
    if not (0 <= lost and 0 <= gained and lost + gained <= n and 0 <= base_correct <= n):
        raise ValueError(f"impossible counts: lost {lost}, gained {gained}, base right {base_correct} of {n}")
    drop = (lost - gained) / n
    base = base_correct / n
    a_drop = alpha * (1 - RELATIVE_SHARE) if max_drop_relative is not None else alpha
    low, high = binary_bounds(lost, gained, n, a_drop)
    base_low, base_high = base, base
    if max_drop_relative is not None:
        base_low, base_high = _wilson(base_correct, n, alpha * RELATIVE_SHARE)
    verdict, pass_at = _decide(drop, low, high, base, base_low, base_high, max_drop, max_drop_relative)
    allowance = allowance_for(base, max_drop, max_drop_relative)
    needed = None
    if verdict == "inconclusive":
        bar = pass_at if drop < pass_at else allowance  # a pass is judged against the base score's lower bound
        needed = binary_items_needed(drop, (lost + gained) / n, bar, a_drop)
        needed = None if needed is None else max(needed, n + 1)  # these n did not decide it
    return Verdict(verdict, drop, low, high, allowance, alpha, n, "paired score (Tango)", needed, high,
                   _relative_note(allowance, pass_at, verdict))  # fmt: skip


def _wilson(successes: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided Wilson score bounds of a proportion, each at ``alpha``."""
    z = z_quantile(1.0 - alpha)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


# -- ratios of sums: bits per byte, perplexities, means of real values ----------------------------

TRANSFORMS: dict[str, tuple[Callable[[float], float], Callable[[float], float]]] = {
    # name: (f, f') applied to the ratio R = sum(values) / sum(weights)
    "identity": (lambda r: r, lambda r: 1.0),
    "bits": (lambda r: -r / math.log(2), lambda r: -1.0 / math.log(2)),  # bits per byte from log-likelihoods
    "exp_neg": (lambda r: math.exp(-r), lambda r: -math.exp(-r)),  # perplexity from mean log-likelihood
}


@dataclass(frozen=True)
class RatioItems:
    """Paired per-item values whose aggregate is ``f(sum(values) / sum(weights))``.

    ``weights`` are shared by both models (1 for a mean; bytes or words for bits per byte and the
    perplexities: a property of the document, not the model).

    >>> items = RatioItems(np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), np.ones(3), "identity", True)
    >>> round(items.drop, 4), items.base_value
    (0.3333, 0.6666666666666666)
    """

    base: np.ndarray
    cand: np.ndarray
    weights: np.ndarray
    transform: str
    higher_is_better: bool

    def _aggregate(self, values: np.ndarray) -> tuple[float, float]:
        f, _ = TRANSFORMS[self.transform]
        r = float(values.sum() / self.weights.sum())
        return r, f(r)

    @property
    def base_value(self) -> float:
        return self._aggregate(self.base)[1]

    @property
    def cand_value(self) -> float:
        return self._aggregate(self.cand)[1]

    @property
    def drop(self) -> float:
        delta = self.cand_value - self.base_value
        return -delta if self.higher_is_better else delta

    def influence(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-item influence of the drop and of the base's score (delta method), n of each."""
        _, fprime = TRANSFORMS[self.transform]
        w_mean = float(self.weights.mean())
        rb, _ = self._aggregate(self.base)
        rc, _ = self._aggregate(self.cand)
        base_inf = fprime(rb) * (self.base - rb * self.weights) / w_mean
        cand_inf = fprime(rc) * (self.cand - rc * self.weights) / w_mean
        sign = -1.0 if self.higher_is_better else 1.0
        return sign * (cand_inf - base_inf), base_inf


MIN_DIFFERING = 10  # items whose values differ, below which a real-valued drop is not bounded at all


def bounded_mean(items: RatioItems) -> bool:
    """A plain mean of values in [0, 1] (F1, partial credit, ...): bounded, so an exact-in-finite-samples
    bound applies (:func:`bernstein_bounds`) instead of the asymptotic t."""
    return (
        items.transform == "identity"
        and bool((items.weights == 1).all())
        and bool(((items.base >= 0) & (items.base <= 1) & (items.cand >= 0) & (items.cand <= 1)).all())
    )


def bernstein_bounds(diffs: np.ndarray, alpha: float) -> tuple[float, float]:
    """One-sided (lower, upper) bounds of the mean of per-item drops in [-1, 1], each at ``alpha``: the
    empirical Bernstein bound (Maurer & Pontil 2009, Theorem 4), valid in finite samples for bounded
    values, also when every item agrees (where a t bound would claim certainty).

    >>> lo, hi = bernstein_bounds(np.zeros(200), 0.05)
    >>> round(hi, 4)
    0.0865
    """
    n = len(diffs)
    z = (np.asarray(diffs, dtype=np.float64) + 1.0) / 2.0  # into [0, 1]
    var = float(z.var(ddof=1)) if n > 1 else 0.25
    log = math.log(2.0 / alpha)
    half = math.sqrt(2.0 * var * log / n) + 7.0 * log / (3.0 * max(n - 1, 1))
    mean = float(z.mean())
    return 2.0 * (mean - half) - 1.0, 2.0 * (mean + half) - 1.0


def ratio_bounds(items: RatioItems, alpha: float) -> tuple[float, float, float]:
    """One-sided (lower, upper) bounds of the drop, each at ``alpha``, and the per-item standard deviation:
    empirical Bernstein for a mean of values in [0, 1], else the delta method's t bound."""
    from scipy.stats import t as student

    n = len(items.base)
    drop_inf, _ = items.influence()
    sd = float(np.sqrt((drop_inf**2).sum() / (n - 1))) if n > 1 else math.inf
    if bounded_mean(items):
        sign = -1.0 if items.higher_is_better else 1.0
        low, high = bernstein_bounds(sign * (items.cand - items.base), alpha)
        return min(low, items.drop), max(high, items.drop), sd
    q = float(student.ppf(1.0 - alpha, max(n - 1, 1)))
    half = q * sd / math.sqrt(n)
    return items.drop - half, items.drop + half, sd


def paired_ratio(
    items: RatioItems,
    max_drop: float | None = None,
    max_drop_relative: float | None = None,
    alpha: float = 0.05,
) -> Verdict:
    """The verdict on paired real-valued items aggregated as a ratio of sums (see :class:`RatioItems`)."""
    _check_alpha(alpha)
    n = len(items.base)
    if n < 2:
        raise ValueError("a verdict on real-valued items needs at least two paired items")
    if not (len(items.cand) == n == len(items.weights)):
        raise ValueError("base, candidate and weights must have one value per item")
    if not (np.isfinite(items.base).all() and np.isfinite(items.cand).all() and np.isfinite(items.weights).all()):
        raise ValueError("a per-item value is not finite")
    if not (items.weights > 0).all():
        raise ValueError("every item's weight (bytes, words) must be positive")
    a_drop = alpha * (1 - RELATIVE_SHARE) if max_drop_relative is not None else alpha
    low, high, sd = ratio_bounds(items, a_drop)
    base = items.base_value
    base_low = base_high = base
    if max_drop_relative is not None:
        from scipy.stats import t as student

        _, base_inf = items.influence()
        se = float(np.sqrt((base_inf**2).sum() / (n - 1) / n))
        q = float(student.ppf(1.0 - alpha * RELATIVE_SHARE, n - 1))
        base_low, base_high = base - q * se, base + q * se
    drop = items.drop
    verdict, pass_at = _decide(drop, low, high, base, base_low, base_high, max_drop, max_drop_relative)
    differing = int((items.base != items.cand).sum())
    notes: tuple[str, ...] = ()
    if not bounded_mean(items) and differing < MIN_DIFFERING:
        # The t bound rests on the spread of the differences: with (almost) none, it would claim certainty.
        verdict = "inconclusive"
        notes = (f"only {differing} of {n} items differ between the models: too few to bound a real-valued drop "
                 f"(at least {MIN_DIFFERING} are needed)",)  # fmt: skip
    allowance = allowance_for(base, max_drop, max_drop_relative)
    needed = None
    if verdict == "inconclusive":
        gap = abs(allowance - drop)
        if gap > 1e-15 and sd > 0:
            z = z_quantile(1.0 - a_drop) + z_quantile(POWER)
            needed = max(n + 1, math.ceil((z * sd / gap) ** 2))
    notes += _relative_note(allowance, pass_at, verdict)
    method = "paired mean (empirical Bernstein)" if bounded_mean(items) else "paired ratio (delta method, t)"
    if n < 30 and not bounded_mean(items):
        notes += (f"only {n} items: the bounds are asymptotic and may be off below about 30",)
    return Verdict(verdict, drop, low, high, allowance, alpha, n, method, needed, high, notes)


def bootstrap_verdict(
    drop: float,
    low: float,
    high: float,
    base: float,
    n: int,
    max_drop: float | None = None,
    max_drop_relative: float | None = None,
    alpha: float = 0.05,
) -> Verdict:
    """The verdict from percentile-bootstrap bounds (each at ``alpha``), for aggregations that are not a
    ratio of sums (lm-eval's F1, BLEU, ...): approximate, and a relative allowance takes the base's
    observed score as exact. Says so in its notes."""
    _check_alpha(alpha)
    verdict, _ = _decide(drop, low, high, base, base, base, max_drop, max_drop_relative)
    allowance = allowance_for(base, max_drop, max_drop_relative)
    note = "percentile bootstrap bounds: approximate, no stated error rate for this aggregation"
    return Verdict(verdict, drop, low, high, allowance, alpha, n, "paired bootstrap (percentile)", None, high, (note,))


# -- shared ---------------------------------------------------------------------------------------


def allowance_for(base: float, max_drop: float | None, max_drop_relative: float | None) -> float:
    """The allowed drop in metric units at the base's score ``base`` (the tighter of the two when both are
    given): the one definition the gate, ``forgetguard compare`` and the verdicts share.

    >>> round(allowance_for(0.7, 0.05, 0.05), 6)
    0.035
    """
    options = []
    if max_drop is not None:
        options.append(float(max_drop))
    if max_drop_relative is not None:
        options.append(float(max_drop_relative) * abs(base))
    if not options:
        raise ValueError("a verdict needs max_drop (absolute) and/or max_drop_relative")
    return min(options)


def _decide(
    drop: float,
    low: float,
    high: float,
    base: float,
    base_low: float,
    base_high: float,
    max_drop: float | None,
    max_drop_relative: float | None,
) -> tuple[str, float]:
    """(pass / fail / inconclusive, the allowance a pass was judged against). A relative allowance is
    taken at the base score's bound that makes the claim hardest: its smallest plausible value for a
    pass, its largest for a fail."""
    if not all(math.isfinite(x) for x in (drop, low, high, base, base_low, base_high)):
        raise ValueError("a verdict needs finite numbers")
    # |base| is smallest where the interval is closest to zero (zero itself when it straddles it).
    smallest = 0.0 if base_low <= 0.0 <= base_high else min(abs(base_low), abs(base_high))
    largest = max(abs(base_low), abs(base_high))
    pass_at = allowance_for(smallest, max_drop, max_drop_relative) if max_drop_relative is not None else max_drop
    fail_at = allowance_for(largest, max_drop, max_drop_relative) if max_drop_relative is not None else max_drop
    if pass_at is None or fail_at is None:
        raise ValueError("a verdict needs max_drop (absolute) and/or max_drop_relative")
    if high <= pass_at:
        return "pass", pass_at
    if low > fail_at:
        return "fail", pass_at
    return "inconclusive", pass_at


def _relative_note(allowance: float, pass_at: float, verdict: str) -> tuple[str, ...]:
    """Why a relative allowance can stay unproven although the drop's bound is within it."""
    if verdict != "inconclusive" or not pass_at < allowance * 0.999:
        return ()
    return (
        f"a pass needs the bound within {pass_at:.4g}: the relative allowance at the base score's lower bound "
        "(the base's score is measured too)",
    )


def observed(drop: float, allowance: float) -> str:
    """The old ``gate: observed`` rule: the point estimate against the allowance, no error rate."""
    if not (math.isfinite(drop) and math.isfinite(allowance)):
        raise ValueError("a verdict needs finite numbers")
    # A drop equal to the allowance is within it, also when float arithmetic (0.7 - 0.68) says 0.02000000000000002.
    return "pass" if drop <= allowance + 1e-12 * max(1.0, abs(allowance)) else "fail"
