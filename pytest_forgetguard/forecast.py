"""Forecasting forgetting from KL: a linear fit per (KL check, retention check) pair, with jackknife+ intervals.

The relation ``drop ≈ a + b · KL`` is fitted on a team's own past candidates
(the run history: each point is one candidate's measured KL on the new task
and its measured drop on a retention check). A forecast for a new candidate
comes with a **jackknife+ prediction interval** (Barber, Candès, Ramdas,
Tibshirani, *Predictive inference with the jackknife+*, Annals of
Statistics 2021): for a new point exchangeable with the n past ones, the
interval holds the true drop with probability at least 1 − 2α, and in
practice about 1 − α, whatever the noise distribution. It needs
``n ≥ (1 − α) / α`` points to be finite (9 at 90%): with fewer, there is no
forecast, and :attr:`Calibration.needed` says how many more runs would give one.
A KL outside the range of past KL values is an **extrapolation**: forgetting
can grow much faster than linearly at large KL, so such a forecast is shown
but never decides anything.

Example::

    cal = Calibration.fit([(0.01, 0.0002), (0.1, 0.001), (0.3, 0.004), ...])
    f = cal.forecast(0.05, coverage=0.9)
    f.drop, f.low, f.high, f.extrapolation
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_COVERAGE = 0.9


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; a flat line through the mean when x does not vary."""
    xm, ym = float(x.mean()), float(y.mean())
    sxx = float(((x - xm) ** 2).sum())
    if sxx == 0.0:
        return ym, 0.0
    slope = float(((x - xm) * (y - ym)).sum()) / sxx
    return ym - slope * xm, slope


def points_needed(coverage: float) -> int:
    """The fewest past points for which a jackknife+ interval at ``coverage`` is finite.

    The upper bound is the ⌈coverage·(n+1)⌉-th smallest of n values, which exists only when that rank
    is at most n.

    >>> points_needed(0.9), points_needed(0.8), points_needed(0.95)
    (9, 4, 19)
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    n = 1
    while math.ceil(coverage * (n + 1) - 1e-9) > n:
        n += 1
    return n


@dataclass(frozen=True)
class Forecast:
    """A forecast drop at one KL value, with its jackknife+ interval (same units and sign as the check's drop)."""

    drop: float
    low: float
    high: float
    n: int
    r2: float
    kl: float
    coverage: float
    extrapolation: bool
    source: str = ""  # the KL check the forecast comes from ("from" in reports)

    def to_json(self) -> dict[str, Any]:
        """``details.forecast`` in the JSON report (CONTRACT.md): drop, low, high, n, r2, from, kl, coverage, extrapolation."""
        data = asdict(self)
        data["from"] = data.pop("source")
        return data

    def within(self, allowance: float) -> bool:
        """Whether the whole interval lies within the allowed drop (and the forecast may decide)."""
        return not self.extrapolation and math.isfinite(self.high) and self.high <= allowance


@dataclass(frozen=True)
class Calibration:
    """The fit of a retention check's drop on a KL check's value over past candidates."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    intercept: float
    slope: float
    r2: float
    spearman: float
    loo_errors: tuple[float, ...]  # |y_i - the fit without i, at x_i|: the jackknife residuals

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> "Calibration":
        """Fit on (kl, drop) points; every value must be finite.

        >>> cal = Calibration.fit([(0.0, 0.0), (1.0, 1.0), (2.0, 2.1), (3.0, 2.9)])
        >>> round(cal.slope, 3), round(cal.r2, 3)
        (0.98, 0.996)
        """
        if not points:
            raise ValueError("no points to fit")
        arr = np.asarray(points, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("a calibration point is not finite")
        x, y = arr[:, 0], arr[:, 1]
        a, b = _ols(x, y)
        resid = y - (a + b * x)
        sst = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float((resid**2).sum()) / sst if sst > 0 else 0.0
        loo = []
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            if keep.sum() == 0:
                loo.append(float("inf"))
                continue
            ai, bi = _ols(x[keep], y[keep])
            loo.append(abs(float(y[i] - (ai + bi * x[i]))))
        spearman = _spearman(x, y)
        return cls(tuple(map(float, x)), tuple(map(float, y)), a, b, r2, spearman, tuple(loo))

    @property
    def n(self) -> int:
        return len(self.x)

    def needed(self, coverage: float = DEFAULT_COVERAGE) -> int:
        """How many more past points a forecast at ``coverage`` needs (0: enough)."""
        return max(0, points_needed(coverage) - self.n)

    def forecast(self, kl: float, coverage: float = DEFAULT_COVERAGE, source: str = "") -> Forecast | None:
        """The forecast drop at ``kl`` with its jackknife+ interval, or None with too few points.

        For each past point i, the line fitted without it predicts μ₋ᵢ(kl) and missed point i by
        Rᵢ; the interval runs from the ⌊α(n+1)⌋-th smallest μ₋ᵢ(kl) − Rᵢ to the ⌈(1−α)(n+1)⌉-th
        smallest μ₋ᵢ(kl) + Rᵢ, with α = 1 − coverage.
        """
        if not math.isfinite(kl):
            raise ValueError(f"the KL to forecast from is not finite: {kl!r}")
        if self.needed(coverage) > 0:
            return None
        x, y = np.asarray(self.x), np.asarray(self.y)
        n = len(x)
        alpha = 1.0 - coverage
        lows, highs = [], []
        for i in range(n):
            keep = np.arange(n) != i
            ai, bi = _ols(x[keep], y[keep])
            mu = ai + bi * kl
            lows.append(mu - self.loo_errors[i])
            highs.append(mu + self.loo_errors[i])
        k_high = math.ceil((1.0 - alpha) * (n + 1) - 1e-9)  # 1-based rank
        k_low = math.floor(alpha * (n + 1) + 1e-9)
        high = float(np.sort(highs)[k_high - 1])
        low = float(np.sort(lows)[k_low - 1]) if k_low >= 1 else float("-inf")
        return Forecast(
            drop=self.intercept + self.slope * kl,
            low=low,
            high=high,
            n=n,
            r2=self.r2,
            kl=float(kl),
            coverage=coverage,
            extrapolation=not (min(self.x) <= kl <= max(self.x)),
            source=source,
        )

    def budget_for(self, allowance: float, coverage: float = DEFAULT_COVERAGE, steps: int = 400) -> float | None:
        """The largest KL in the range seen at which the forecast's upper bound stays within ``allowance``.

        The KL budget the evidence supports: a candidate under it is forecast (at ``coverage``) to
        lose at most the allowed drop. None when even the smallest KL seen is forecast over the
        allowance, or when there are too few points; never beyond the largest KL seen.
        """
        if self.needed(coverage) > 0:
            return None
        grid = np.linspace(min(self.x), max(self.x), steps)
        best = None
        for kl in grid:
            f = self.forecast(float(kl), coverage)
            if f is None or f.high > allowance:
                break
            best = float(kl)
        return best


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)
