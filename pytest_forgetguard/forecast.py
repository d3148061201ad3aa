"""Forecasting forgetting from KL: a line per (KL check, retention check) pair, with conformal bounds.

The relation ``drop ≈ a + b · KL`` is fitted on a team's own past candidates (the run history: each
point is one candidate's measured KL on the new task and its measured drop on a retention check). A
forecast for a new candidate comes with **full conformal prediction bounds**
(:mod:`pytest_forgetguard.evidence.conformal`): if the new candidate is exchangeable with the past
ones, its drop lies under the one-sided upper bound at ``alpha`` with probability at least
``1 - alpha`` in finite samples, whatever the noise distribution — and the scores are normalized by a
spread that grows with KL, so the bound widens where the history is noisier. The displayed interval at
``coverage`` is the two one-sided bounds at ``(1 - coverage) / 2`` each.

A forecast needs ``n >= 1/alpha' - 1`` points (19 for a 90% interval or a bound at alpha 0.05). A
forecast **decides** a check only on evidence that deserves it (:meth:`Calibration.evidence_problems`):
enough points, KL values that vary, no duplicated points, a slope whose confidence interval excludes
zero, a KL inside the range seen (an extrapolation is shown, never decides), and the upper bound at the
check's alpha within the allowance.

Example::

    cal = Calibration.fit([(0.01, 0.0002), (0.1, 0.001), (0.3, 0.004), ...])
    f = cal.forecast(0.05, coverage=0.9, alpha=0.05)
    f.drop, f.low, f.high, f.upper, f.extrapolation
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .evidence.conformal import lower_bound, upper_bound
from .evidence.conformal import points_needed as one_sided_points_needed

DEFAULT_COVERAGE = 0.9
DEFAULT_ALPHA = 0.05


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line; a flat line through the mean when x does not vary."""
    xm, ym = float(x.mean()), float(y.mean())
    sxx = float(((x - xm) ** 2).sum())
    if sxx == 0.0:
        return ym, 0.0
    slope = float(((x - xm) * (y - ym)).sum()) / sxx
    return ym - slope * xm, slope


def points_needed(coverage: float) -> int:
    """The fewest past points for which a two-sided conformal interval at ``coverage`` is finite.

    Each side is a one-sided bound at ``(1 - coverage) / 2``, finite from n >= 2/(1 - coverage) - 1.

    >>> points_needed(0.9), points_needed(0.8), points_needed(0.5)
    (19, 9, 3)
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    return one_sided_points_needed((1.0 - coverage) / 2.0)


@dataclass(frozen=True)
class Forecast:
    """A forecast drop at one KL value (same units and sign as the check's drop): the two-sided interval
    ``low``..``high`` at ``coverage``, and ``upper``, the one-sided bound at ``alpha`` that decides."""

    drop: float
    low: float
    high: float
    n: int
    r2: float
    kl: float
    coverage: float
    extrapolation: bool
    source: str = ""  # the KL check the forecast comes from ("from" in reports)
    upper: float = math.inf
    alpha: float = DEFAULT_ALPHA

    def to_json(self) -> dict[str, Any]:
        """``details.forecast`` in the JSON report (CONTRACT.md): drop, low, high, n, r2, from, kl, coverage,
        extrapolation, and upper and alpha."""
        data = asdict(self)
        data["from"] = data.pop("source")
        return data

    def within(self, allowance: float) -> bool:
        """Whether the upper bound at alpha lies within the allowed drop (and the forecast may decide)."""
        return not self.extrapolation and math.isfinite(self.upper) and self.upper <= allowance


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

    def forecast(
        self, kl: float, coverage: float = DEFAULT_COVERAGE, source: str = "", alpha: float = DEFAULT_ALPHA
    ) -> Forecast | None:
        """The forecast drop at ``kl`` with its conformal interval at ``coverage`` and its one-sided upper
        bound at ``alpha``; None with too few points for the interval."""
        if not math.isfinite(kl):
            raise ValueError(f"the KL to forecast from is not finite: {kl!r}")
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
        # The decision needs the bound at alpha, the display the interval at coverage: either may be missing
        # (an infinite bound) while the other exists, so a wide display interval never blocks a decision.
        if self.n < min(points_needed(coverage), one_sided_points_needed(alpha)):
            return None
        x, y = np.asarray(self.x), np.asarray(self.y)
        side = (1.0 - coverage) / 2.0
        return Forecast(
            drop=self.intercept + self.slope * kl,
            low=lower_bound(x, y, kl, side),
            high=upper_bound(x, y, kl, side),
            n=self.n,
            r2=self.r2,
            kl=float(kl),
            coverage=coverage,
            extrapolation=not (min(self.x) <= kl <= max(self.x)),
            source=source,
            upper=upper_bound(x, y, kl, alpha),
            alpha=alpha,
        )

    def evidence_problems(self, alpha: float = DEFAULT_ALPHA) -> list[str]:
        """Why this history may not decide a check by forecast at ``alpha`` (empty: it may).

        >>> Calibration.fit([(0.1, 0.0)] * 25).evidence_problems()[:2]
        ['the KL values do not vary (all 0.1)', '24 duplicated points (the same KL and drop): imported twice?']
        """
        problems = []
        needed = one_sided_points_needed(alpha)
        if self.n < needed:
            problems.append(f"{self.n} points, a bound at alpha {alpha:g} needs {needed}")
        distinct = len(set(self.x))
        if distinct < 3:
            shown = ", ".join(f"{v:.4g}" for v in sorted(set(self.x)))
            problems.append(f"the KL values do not vary (all {shown})" if distinct == 1 else
                            f"only {distinct} distinct KL values ({shown})")  # fmt: skip
        duplicates = self.n - len(set(zip(self.x, self.y)))
        if duplicates:
            problems.append(f"{duplicates} duplicated points (the same KL and drop): imported twice?")
        lo, hi = self.slope_interval(alpha)
        if not (lo > 0 or hi < 0):
            problems.append(
                f"the slope's {1 - alpha:.0%} interval [{lo:.4g}, {hi:.4g}] includes 0 (R² {self.r2:.2f}): "
                "KL does not predict this drop here"
            )
        return problems

    def slope_interval(self, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
        """The OLS slope's two-sided ``1 - alpha`` t interval (nan with fewer than three points or no spread)."""
        from scipy.stats import t as student

        x, y = np.asarray(self.x), np.asarray(self.y)
        n = len(x)
        sxx = float(((x - x.mean()) ** 2).sum())
        if n < 3 or sxx == 0.0:
            return math.nan, math.nan
        resid = y - (self.intercept + self.slope * x)
        se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
        q = float(student.ppf(1 - alpha / 2, n - 2))
        return self.slope - q * se, self.slope + q * se

    def budget_for(self, allowance: float, alpha: float = DEFAULT_ALPHA, steps: int = 60) -> float | None:
        """The largest KL in the range seen at which the forecast's upper bound at ``alpha`` stays within
        ``allowance``.

        The KL budget the evidence supports: a candidate under it is forecast (at ``alpha``) to lose at
        most the allowed drop. None when even the smallest KL seen is forecast over the allowance, when
        the history may not decide (:meth:`evidence_problems`); never beyond the largest KL seen.
        """
        if self.evidence_problems(alpha):
            return None
        x, y = np.asarray(self.x), np.asarray(self.y)
        best = None
        for kl in np.linspace(min(self.x), max(self.x), steps):
            if upper_bound(x, y, float(kl), alpha) > allowance:
                break
            best = float(kl)
        return best


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)
