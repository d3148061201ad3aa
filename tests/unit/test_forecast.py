"""Forecasts: the fit against scipy, the jackknife+ interval against an independent computation, and its
coverage against a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pytest_forgetguard.forecast import Calibration, Forecast, points_needed

# Ten (KL, drop) points shaped like the RL's Razor experiment's (drop grows with KL, with noise).
POINTS = [(0.005, -0.0002), (0.07, 0.0005), (0.11, 0.0027), (0.27, 0.0047), (0.96, 0.023), (1.09, 0.029),
          (1.17, 0.025), (1.45, 0.039), (1.58, 0.038), (1.79, 0.049)]  # fmt: skip


def test_the_fit_is_scipys_least_squares_and_spearman():
    cal = Calibration.fit(POINTS)
    x, y = np.array(POINTS).T
    ref = stats.linregress(x, y)
    assert cal.slope == pytest.approx(ref.slope, rel=1e-12) and cal.intercept == pytest.approx(ref.intercept, rel=1e-12)
    assert cal.r2 == pytest.approx(ref.rvalue**2, rel=1e-12)
    assert cal.spearman == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)


def jackknife_plus_reference(points, x_new, alpha):
    """Barber et al. (2021), eq. (6), computed directly: refit without each point with numpy.polyfit."""
    x, y = np.array(points).T
    n = len(x)
    lo_vals, hi_vals = [], []
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        r_i = abs(y[i] - (intercept + slope * x[i]))
        mu = intercept + slope * x_new
        lo_vals.append(mu - r_i)
        hi_vals.append(mu + r_i)
    # q+ : the ceil((1-alpha)(n+1))-th smallest; q- : the floor(alpha(n+1))-th smallest.
    k_hi, k_lo = math.ceil((1 - alpha) * (n + 1) - 1e-9), math.floor(alpha * (n + 1) + 1e-9)
    return sorted(lo_vals)[k_lo - 1], sorted(hi_vals)[k_hi - 1]


@pytest.mark.parametrize("x_new", [0.05, 0.5, 1.0, 1.7])
@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_the_interval_is_the_jackknife_plus(x_new, coverage):
    f = Calibration.fit(POINTS).forecast(x_new, coverage)
    lo, hi = jackknife_plus_reference(POINTS, x_new, 1 - coverage)
    assert (f.low, f.high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert f.low <= f.drop <= f.high and f.n == 10 and not f.extrapolation


def test_a_hand_worked_jackknife_plus():
    """Four points, at 80% (n = 4 is the fewest for which that interval is finite), forecast at x = 1.5.

    Leaving out each point in turn (least squares by hand):
      without (0,0): y = 1.5x - 2/3,  misses (0,0) by 2/3, predicts 1.5833 at 1.5
      without (1,1): y = 9/7 x - 1/7, misses (1,1) by 1/7, predicts 1.7857
      without (2,2): y = 19/14 x - 1/7, misses (2,2) by 4/7, predicts 1.8929
      without (3,4): y = x,           misses (3,4) by 1,   predicts 1.5
    With alpha = 0.2 and n = 4 the bounds are the smallest of (prediction - miss), 0.5, and the largest
    of (prediction + miss), 2.5.
    """
    f = Calibration.fit([(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 4.0)]).forecast(1.5, 0.8)
    assert (f.low, f.high) == (pytest.approx(0.5), pytest.approx(2.5))


def test_coverage_in_simulation():
    """Over 400 simulated histories of 20 candidates (heavy-tailed noise), the 90% interval holds the new
    candidate's drop about 90% of the time, and never below the 1 - 2 alpha = 80% the theory guarantees."""
    rng = np.random.default_rng(20261201)
    held = 0
    trials = 400
    for _ in range(trials):
        x = rng.uniform(0.0, 2.0, size=21)
        y = 0.025 * x + 0.004 * rng.standard_t(df=3, size=21)
        cal = Calibration.fit(list(zip(x[:20], y[:20])))
        f = cal.forecast(float(x[20]), 0.9)
        held += f.low <= y[20] <= f.high
    assert 0.86 <= held / trials <= 0.96


def test_too_few_points_give_no_forecast_and_say_how_many_more():
    assert [points_needed(c) for c in (0.5, 0.8, 0.9, 0.95)] == [1, 4, 9, 19]
    cal = Calibration.fit(POINTS[:6])
    assert cal.forecast(0.5, 0.9) is None and cal.needed(0.9) == 3
    assert cal.forecast(0.5, 0.8) is not None and cal.needed(0.8) == 0


def test_outside_the_range_seen_is_an_extrapolation_that_never_decides():
    cal = Calibration.fit(POINTS)
    inside, below, above = (cal.forecast(k, 0.9) for k in (0.5, 0.001, 3.0))
    assert not inside.extrapolation and below.extrapolation and above.extrapolation
    assert not above.within(1e9) and not below.within(1e9)
    assert inside.within(inside.high) and not inside.within(inside.high - 1e-9)


def test_the_budget_is_where_the_upper_bound_reaches_the_allowance():
    cal = Calibration.fit(POINTS)
    allowance = 0.0219  # 3% of the base's 0.73 bits per byte, the demo's code-perplexity allowance
    budget = cal.budget_for(allowance, 0.9)
    assert budget is not None and min(cal.x) <= budget <= max(cal.x)
    assert cal.forecast(budget, 0.9).high <= allowance
    assert cal.forecast(budget + 0.01, 0.9).high > allowance
    assert cal.budget_for(-1.0, 0.9) is None  # not even the smallest KL seen is forecast within it


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="not finite"):
        Calibration.fit([(0.1, float("nan")), (0.2, 0.1)])
    with pytest.raises(ValueError, match="not finite"):
        Calibration.fit(POINTS).forecast(float("inf"))
    with pytest.raises(ValueError, match="coverage"):
        points_needed(1.0)
    assert Forecast(0.0, -1.0, 1.0, 9, 0.5, 0.1, 0.9, False, "k").to_json()["from"] == "k"
