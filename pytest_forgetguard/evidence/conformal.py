"""Prediction bounds for a forecast drop: full conformal prediction over a line, with normalized scores.

For past points (KL_i, drop_i) and a new candidate's KL, the one-sided upper bound ``U`` at level
``alpha`` satisfies P(new drop <= U) >= 1 - alpha **in finite samples** whenever the new point is
exchangeable with the past ones (full conformal prediction; Vovk, Gammerman, Shafer 2005; Lei et al.,
JASA 2018): every candidate value y of the new drop is tried, the line and a spread model are fitted
on the n + 1 points *including* (KL, y) — a symmetric procedure — and y stays in the prediction set
while its score is not among the top alpha share of the n + 1 scores.

The score is the residual divided by a spread that grows linearly with KL, ``|KL| + median(|KL|)`` over
the n + 1 points, so the bound widens where forgetting is noisier (at large KL, as the RL's Razor
experiment's points are). The spread depends on the KL values only, never on the drops: so it is
symmetric in the points (the finite-sample guarantee holds whether the shape is right or not: only
the bound's width depends on it), and a huge candidate drop cannot inflate its own spread (a spread
fitted to the residuals can, and then the bound at a high-leverage KL is infinite).

Finite only with enough points: n >= 1 / alpha - 1 (19 at alpha 0.05). What this does *not* promise:
anything when the new candidate is not like the past ones (another task, another kind of fine-tune, a
KL outside the range seen) — the forecast rules refuse those (:mod:`pytest_forgetguard.forecast`).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> kl = rng.uniform(0, 1, 40); drop = 0.02 * kl + rng.normal(0, 0.002, 40)
    >>> u = upper_bound(kl, drop, 0.5, alpha=0.05)
    >>> 0.01 < u < 0.016
    True
"""

from __future__ import annotations

import math

import numpy as np

GRID = 241  # candidate values of the new drop tried before the last crossing is refined


def points_needed(alpha: float) -> int:
    """The fewest past points for which a one-sided bound at ``alpha`` is finite (n >= 1/alpha - 1).

    >>> points_needed(0.05), points_needed(0.1)
    (19, 9)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    n = 1
    while math.ceil((1.0 - alpha) * (n + 1) - 1e-9) > n:
        n += 1
    return n


def _p_values(x: np.ndarray, y: np.ndarray, x0: float, ys: np.ndarray) -> np.ndarray:
    """The conformal p-value of each candidate new value in ``ys`` (the share of the n + 1 normalized
    residuals at least as large as the new point's)."""
    m = len(ys)
    xs = np.append(x, x0)  # n + 1
    ya = np.empty((m, len(xs)))
    ya[:, :-1] = y
    ya[:, -1] = ys
    xm = xs.mean()
    dx = xs - xm
    sxx = float((dx * dx).sum())
    ym = ya.mean(axis=1, keepdims=True)
    slope = ((ya - ym) * dx).sum(axis=1, keepdims=True) / sxx if sxx > 0 else np.zeros((m, 1))
    resid = ya - (ym + slope * dx)
    ax = np.abs(xs)
    spread = ax + max(float(np.median(ax)), 1e-12)
    scores = resid / spread
    at_least: np.ndarray = (scores >= scores[:, -1:] - 1e-12 * np.abs(scores[:, -1:])).mean(axis=1)
    return at_least


def upper_bound(x: np.ndarray, y: np.ndarray, x0: float, alpha: float) -> float:
    """The one-sided (1 - alpha) conformal upper bound of the drop at KL ``x0``; +inf with too few points.

    The largest candidate value whose p-value exceeds ``alpha``: found on a grid wide enough that the
    top of it is out of the set, then refined by bisection at the last crossing.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all() and math.isfinite(x0)):
        raise ValueError("conformal bounds need finite points")
    if len(x) < points_needed(alpha):
        return math.inf
    centre = float(np.polyval(np.polyfit(x, y, 1), x0)) if np.ptp(x) > 0 else float(y.mean())
    scale = float(np.ptp(y)) + float(np.abs(y - y.mean()).max()) + 1e-12
    lo, hi = centre - 4 * scale, centre + 4 * scale
    for _ in range(60):  # widen until the top is out of the set (a new value far above is an outlier)
        if _p_values(x, y, x0, np.array([hi]))[0] <= alpha:
            break
        hi = centre + 2 * (hi - centre)
    else:
        return math.inf
    grid = np.linspace(lo, hi, GRID)
    inside = _p_values(x, y, x0, grid) > alpha
    if not inside.any():
        return lo  # the whole grid is out: the set lies below it (cannot happen with the widened top)
    last = int(np.nonzero(inside)[0][-1])
    a, b = float(grid[last]), float(grid[min(last + 1, GRID - 1)])
    for _ in range(60):
        mid = (a + b) / 2
        if _p_values(x, y, x0, np.array([mid]))[0] > alpha:
            a = mid
        else:
            b = mid
    return b


def lower_bound(x: np.ndarray, y: np.ndarray, x0: float, alpha: float) -> float:
    """The one-sided (1 - alpha) conformal lower bound (the upper bound of the negated drops, negated)."""
    return -upper_bound(x, -np.asarray(y, dtype=np.float64), x0, alpha)
