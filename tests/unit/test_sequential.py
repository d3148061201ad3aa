"""Anytime-valid verdicts (evidence/sequential.py) against simulations of their error rates.

Each decision rule is simulated at the boundary (the true drop equal to the allowance), where a false
pass is likeliest, over looks placed as the gate places them, including the last look's fixed-sample
verdict at the alpha the looks left: the whole procedure's false pass must stay within alpha (with the
Monte Carlo error of the number of repetitions: 3 standard errors).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_forgetguard.evidence.sequential import (
    BET_CAP,
    SEQUENTIAL_SHARE,
    Sequential,
    asymptotic_radius,
    crossings,
    schedule,
)
from pytest_forgetguard.evidence.verdicts import paired_binary

ALPHA = 0.05


def slack(p: float, reps: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / reps)


def binary_drops(rng, reps, n, lost, gained):
    u = rng.random((reps, n))
    return np.where(u < lost, 1.0, np.where(u < lost + gained, -1.0, 0.0))


def procedure(d: np.ndarray, allowance: float, looks: list[int]) -> np.ndarray:
    """The gate's procedure on binary drops (rows: repetitions): 'pass' / 'fail' / 'inconclusive' each."""
    a_seq = ALPHA * SEQUENTIAL_SHARE
    passing = crossings(allowance - d, BET_CAP / (1 - allowance), a_seq)
    failing = crossings(d - allowance, BET_CAP / (1 + allowance), a_seq)
    out = []
    for p, f, row in zip(passing, failing, d):
        # A crossing is acted on at the first look at or after it; the earlier test decides.
        p_look = next((n for n in looks if p and n >= p), None)
        f_look = next((n for n in looks if f and n >= f), None)
        if p_look is not None and (f_look is None or p <= f):
            out.append("pass")
        elif f_look is not None:
            out.append("fail")
        else:
            lost, gained = int((row == 1).sum()), int((row == -1).sum())
            v = paired_binary(lost, gained, len(row), len(row), max_drop=allowance, alpha=ALPHA - a_seq)
            out.append(v.verdict)
    return np.array(out)


@pytest.mark.parametrize("discordance", [0.03, 0.1, 0.3])
def test_the_whole_procedure_passes_at_the_boundary_at_most_alpha_of_the_time(discordance):
    rng = np.random.default_rng(7)
    allowance, n, reps = 0.03, 600, 1500
    d = binary_drops(rng, reps, n, (discordance + allowance) / 2, (discordance - allowance) / 2)
    verdicts = procedure(d, allowance, schedule(n, 50))
    false_pass = float(np.mean(verdicts == "pass"))
    assert false_pass <= ALPHA + slack(ALPHA, reps), false_pass


def test_the_whole_procedure_fails_at_the_boundary_at_most_alpha_of_the_time():
    rng = np.random.default_rng(8)
    allowance, n, reps = 0.03, 600, 1500
    d = binary_drops(rng, reps, n, (0.1 + allowance) / 2, (0.1 - allowance) / 2)
    false_fail = float(np.mean(procedure(d, allowance, schedule(n, 50)) == "fail"))
    assert false_fail <= ALPHA + slack(ALPHA, reps), false_fail


@pytest.mark.parametrize("allowance", [0.0, 0.01, 0.05, 0.2])
def test_the_betting_tests_keep_their_share_of_alpha_over_every_item(allowance):
    """Ville's inequality: wealth reaching 1/alpha at any of 2,000 items, at the boundary, at most alpha."""
    rng = np.random.default_rng(9)
    reps, n, a_seq = 3000, 2000, 0.01
    d = binary_drops(rng, reps, n, (0.2 + allowance) / 2, (0.2 - allowance) / 2)
    false_pass = np.mean(crossings(allowance - d, BET_CAP / (1 - allowance), a_seq) > 0)
    false_fail = np.mean(crossings(d - allowance, BET_CAP / (1 + allowance), a_seq) > 0)
    assert false_pass <= a_seq + slack(a_seq, reps) and false_fail <= a_seq + slack(a_seq, reps)


def test_bounded_real_valued_drops_keep_alpha_too():
    """Partial credit (values in [0, 1]), skewed: the same tests, the same guarantee."""
    rng = np.random.default_rng(10)
    reps, n, a_seq, allowance = 2000, 1000, 0.01, 0.05
    base = rng.beta(0.5, 0.5, (reps, n))
    cand = np.clip(base - allowance + rng.normal(0, 0.2, (reps, n)), 0, 1)
    d = base - cand
    d = d - d.mean(axis=1, keepdims=True) + allowance  # exactly at the boundary in every repetition's sample
    d = np.clip(d, -1, 1)
    false_pass = np.mean(crossings(allowance - d, BET_CAP / (1 - allowance), a_seq) > 0)
    assert false_pass <= a_seq + slack(a_seq, reps)


def test_a_near_identical_candidate_stops_early_and_a_damaged_one_sooner():
    test = Sequential(pass_at=0.05, fail_at=0.05, alpha=ALPHA * SEQUENTIAL_SHARE, bounded=True)
    rng = np.random.default_rng(11)
    same = binary_drops(rng, 1, 1200, 0.01, 0.01)[0]
    damaged = binary_drops(rng, 1, 1200, 0.35, 0.08)[0]
    first_pass = next(n for n in schedule(1200, 50) if test.decide(same[:n]) is not None)
    first_fail = next(n for n in schedule(1200, 50) if test.decide(damaged[:n]) is not None)
    assert test.decide(same[:first_pass]) == "pass" and first_pass <= 0.25 * 1200
    assert test.decide(damaged[:first_fail]) == "fail" and first_fail <= 0.1 * 1200


def test_the_sequence_bounds_bracket_the_drop_and_agree_with_the_decisions():
    test = Sequential(pass_at=0.05, fail_at=0.05, alpha=0.01, bounded=True)
    d = np.concatenate([np.zeros(380), np.ones(10), -np.ones(10)])
    np.random.default_rng(0).shuffle(d)
    low, high = test.bounds(d)
    assert low < d.mean() < high
    assert test.decide(d) == "pass" and high <= 0.05
    assert Sequential(high + 1e-6, high + 1e-6, 0.01, True).decide(d) == "pass"
    assert Sequential(high - 1e-3, high - 1e-3, 0.01, True).decide(d) is None


def test_the_asymptotic_sequence_keeps_alpha_at_the_boundary_for_a_skewed_ratio():
    """Bits per byte: per-item log-loss sums over documents of very different lengths (lognormal bytes)."""
    rng = np.random.default_rng(12)
    reps, n, a_seq, allowance = 1000, 800, 0.01, 0.02
    looks = schedule(n, 50)
    false_pass = 0
    for _ in range(reps):
        w = np.exp(rng.normal(6, 1, n))  # bytes per document
        base = w * rng.gamma(4, 0.25, n)  # bits
        cand = base + w * (allowance + rng.normal(0, 0.1, n))  # worse by `allowance` bits per byte on average
        test = Sequential(allowance, allowance, a_seq, bounded=False)
        for m in looks:
            wb, cb, ww = base[:m], cand[:m], w[:m]
            drop = cb.sum() / ww.sum() - wb.sum() / ww.sum()
            inf = ((cb - wb) - drop * ww) / ww.mean()
            verdict = test.decide_ratio(drop, float(inf.std(ddof=1)), m, m)
            if verdict is not None:
                false_pass += verdict == "pass"
                break
    assert false_pass / reps <= a_seq + slack(a_seq, reps)


def test_the_asymptotic_radius_shrinks_like_the_iterated_logarithm():
    r = [asymptotic_radius(1.0, n, 0.01) for n in (100, 1000, 10000)]
    assert r[0] > r[1] > r[2] and r[1] * math.sqrt(1000) < r[2] * math.sqrt(10000)  # a little wider than 1/sqrt(n)


def test_the_schedule_and_its_refusals():
    assert schedule(1, 1) == [1] and schedule(301, 50)[-1] == 301 and schedule(302, 302) == [302]
    with pytest.raises(ValueError):
        schedule(0, 10)
    with pytest.raises(ValueError, match="finite numbers in"):
        Sequential(0.05, 0.05, 0.01, True).decide(np.array([0.0, 2.0]))
