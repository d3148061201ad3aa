"""Forecasts: the fit against scipy, the conformal bound against a brute-force computation, its coverage
(also where noise grows with KL) against simulations, and the rules that keep thin evidence from deciding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pytest_forgetguard.evidence.conformal import upper_bound
from pytest_forgetguard.forecast import Calibration, Forecast, points_needed

# Twenty (KL, drop) points shaped like the RL's Razor experiment's (drop grows with KL, noise with it).
POINTS = [(0.005, -0.0002), (0.07, 0.0005), (0.11, 0.0027), (0.27, 0.0047), (0.96, 0.023), (1.09, 0.029),
          (1.17, 0.025), (1.45, 0.039), (1.58, 0.038), (1.79, 0.049), (0.02, 0.0004), (0.05, -0.0003),
          (0.15, 0.0031), (0.33, 0.0072), (0.5, 0.011), (0.62, 0.0149), (0.81, 0.0171), (1.3, 0.0355),
          (1.66, 0.0402), (1.9, 0.0531)]  # fmt: skip


def test_the_fit_is_scipys_least_squares_and_spearman():
    cal = Calibration.fit(POINTS)
    x, y = np.array(POINTS).T
    ref = stats.linregress(x, y)
    assert cal.slope == pytest.approx(ref.slope, rel=1e-12) and cal.intercept == pytest.approx(ref.intercept, rel=1e-12)
    assert cal.r2 == pytest.approx(ref.rvalue**2, rel=1e-12)
    assert cal.spearman == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    lo, hi = cal.slope_interval(0.05)
    assert (hi - lo) / 2 == pytest.approx(stats.t.ppf(0.975, len(x) - 2) * ref.stderr, rel=1e-9)


def brute_force_upper(points, x_new, alpha, grid):
    """Full conformal from its definition, one candidate value at a time with numpy.polyfit: the largest
    y on the grid whose normalized residual is not in the top alpha share of the n + 1."""
    x, y = np.array(points).T
    best = -math.inf
    for cand in grid:
        xs, ys = np.append(x, x_new), np.append(y, cand)
        slope, intercept = np.polyfit(xs, ys, 1)
        r = ys - (intercept + slope * xs)
        score = r / (np.abs(xs) + np.median(np.abs(xs)))
        if np.mean(score >= score[-1] - 1e-12 * abs(score[-1])) > alpha:
            best = max(best, cand)
    return best


@pytest.mark.parametrize("x_new", [0.05, 0.5, 1.7])
def test_the_upper_bound_is_full_conformal_from_its_definition(x_new):
    x, y = np.array(POINTS).T
    u = upper_bound(x, y, x_new, 0.05)
    grid = np.linspace(u - 0.02, u + 0.02, 4001)
    ref = brute_force_upper(POINTS, x_new, 0.05, grid)
    assert u == pytest.approx(ref, abs=2e-5), (u, ref)


@pytest.mark.parametrize("heteroscedastic", [False, True])
def test_coverage_in_simulation(heteroscedastic):
    """Over 500 simulated histories of 25 candidates, the one-sided bound at alpha 0.05 holds the new
    candidate's drop at least 95% of the time (Monte Carlo slack), heavy-tailed noise or noise growing
    with KL, and also among new candidates at large KL (where jackknife+ had fallen to 0.75-0.82)."""
    rng = np.random.default_rng(20261203 + heteroscedastic)
    held, high_held, high_total, trials = 0, 0, 0, 500
    for _ in range(trials):
        x = rng.uniform(0.0, 2.0, size=26)
        scale = 0.001 + 0.006 * x if heteroscedastic else 0.004
        y = 0.025 * x + scale * rng.standard_t(df=3, size=26)
        f = Calibration.fit(list(zip(x[:25], y[:25]))).forecast(float(x[25]), 0.9, alpha=0.05)
        held += y[25] <= f.upper
        if x[25] > 1.5:
            high_total += 1
            high_held += y[25] <= f.upper
    assert held / trials >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / trials)
    assert high_held / high_total >= 0.88, (high_held, high_total)


def test_too_few_points_give_no_forecast_and_say_how_many_more():
    assert [points_needed(c) for c in (0.5, 0.8, 0.9, 0.95)] == [3, 9, 19, 39]
    cal = Calibration.fit(POINTS[:12])
    assert cal.forecast(0.5, 0.9) is None and cal.needed(0.9) == 7
    assert cal.forecast(0.5, 0.8) is not None and cal.needed(0.8) == 0
    assert "12 points, a bound at alpha 0.05 needs 19" in cal.evidence_problems(0.05)


def test_outside_the_range_seen_is_an_extrapolation_that_never_decides():
    cal = Calibration.fit(POINTS)
    inside, below, above = (cal.forecast(k, 0.9) for k in (0.5, 0.001, 3.0))
    assert not inside.extrapolation and below.extrapolation and above.extrapolation
    assert not above.within(1e9) and not below.within(1e9)
    assert inside.within(inside.upper) and not inside.within(inside.upper - 1e-9)
    assert inside.low <= inside.drop <= inside.upper <= inside.high


def test_thin_evidence_never_decides():
    """The issue's faults: KL values all equal, ten imported rows with drop 0, a history at R² = 0."""
    same_kl = Calibration.fit([(0.3, 0.001 * i) for i in range(25)])
    assert any("do not vary" in p for p in same_kl.evidence_problems())
    imported = Calibration.fit([(0.1 * (i % 10), 0.0) for i in range(20)])
    problems = imported.evidence_problems()
    assert any("duplicated points" in p for p in problems) and any("includes 0" in p for p in problems)
    rng = np.random.default_rng(0)
    flat = Calibration.fit([(float(k), float(d)) for k, d in zip(rng.uniform(0, 2, 30), rng.normal(0, 0.01, 30))])
    assert any("includes 0" in p for p in flat.evidence_problems())
    assert Calibration.fit(POINTS).evidence_problems() == []
    assert flat.budget_for(1.0) is None and imported.budget_for(1.0) is None


def test_the_budget_is_where_the_upper_bound_reaches_the_allowance():
    cal = Calibration.fit(POINTS)
    allowance = 0.0219  # 3% of the base's 0.73 bits per byte, the demo's code-perplexity allowance
    budget = cal.budget_for(allowance, 0.05)
    assert budget is not None and min(cal.x) <= budget <= max(cal.x)
    assert cal.forecast(budget, 0.9, alpha=0.05).upper <= allowance
    assert cal.forecast(budget + 0.05, 0.9, alpha=0.05).upper > allowance
    assert cal.budget_for(-1.0, 0.05) is None  # not even the smallest KL seen is forecast within it


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="not finite"):
        Calibration.fit([(0.1, float("nan")), (0.2, 0.1)])
    with pytest.raises(ValueError, match="not finite"):
        Calibration.fit(POINTS).forecast(float("inf"))
    with pytest.raises(ValueError, match="coverage"):
        points_needed(1.0)
    with pytest.raises(ValueError, match="alpha"):
        Calibration.fit(POINTS).forecast(0.5, alpha=0.7)
    assert Forecast(0.0, -1.0, 1.0, 9, 0.5, 0.1, 0.9, False, "k").to_json()["from"] == "k"
