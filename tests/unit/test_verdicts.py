"""The verdicts' error rates, measured: exact enumeration for paired binary items, seeded simulation for
real-valued ones, and the score statistic against an independent restricted maximum likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import gammaln
from scipy.stats import norm

from pytest_forgetguard.evidence import planning, verdicts
from pytest_forgetguard.evidence.verdicts import (
    CONTINUITY,
    FAIL_CONTINUITY,
    RatioItems,
    paired_binary,
    paired_ratio,
    score_z,
)

ALPHA = 0.05


def restricted_z(lost: int, gained: int, n: int, d0: float) -> float:
    """The score statistic with the restricted MLE found numerically (not the closed form)."""
    conc = n - lost - gained

    def nll(pg: float) -> float:
        pl, pc = pg + d0, 1 - 2 * pg - d0
        out = 0.0
        for count, p in ((lost, pl), (gained, pg), (conc, pc)):
            if count:
                out -= count * math.log(max(p, 1e-300))
        return out

    lo, hi = max(0.0, -d0) + 1e-12, (1 - d0) / 2 - 1e-12
    pg = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
    var = n * (2 * pg + d0 - d0 * d0)
    return (lost - gained - n * d0) / math.sqrt(var)


@pytest.mark.parametrize(
    "lost, gained, n, d0", [(10, 3, 200, 0.02), (0, 5, 100, 0.05), (30, 30, 300, -0.03), (7, 0, 50, 0.1)]
)
def test_score_statistic_matches_a_numerical_restricted_mle(lost, gained, n, d0):
    assert score_z(lost, gained, n, d0) == pytest.approx(restricted_z(lost, gained, n, d0), rel=1e-6)


def trinomial(n: int, p_lost: float, p_gained: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (lost, gained) outcome of n paired items with its exact probability."""
    lost, gained = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = lost + gained <= n
    conc = np.maximum(n - lost - gained, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = (
            gammaln(n + 1) - gammaln(lost + 1) - gammaln(gained + 1) - gammaln(conc + 1)
            + np.where(lost > 0, lost * np.log(p_lost), 0.0)
            + np.where(gained > 0, gained * np.log(p_gained) if p_gained > 0 else -np.inf, 0.0)
            + conc * np.log(1 - p_lost - p_gained)
        )  # fmt: skip
    prob = np.where(ok, np.exp(logp), 0.0)
    return lost[ok], gained[ok], prob[ok]


def vector_z(lost: np.ndarray, gained: np.ndarray, n: int, d0: float) -> np.ndarray:
    b = lost + gained - d0 * (2 * n - lost + gained)
    p = (b + np.sqrt(b * b + 8 * n * gained * d0 * (1 - d0))) / (4 * n)
    var = n * (2 * p + d0 - d0 * d0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, (lost - gained - n * d0) / np.sqrt(var), np.sign(lost - gained - n * d0) * np.inf)


def pass_rule(lost: np.ndarray, gained: np.ndarray, n: int, margin: float) -> np.ndarray:
    return vector_z(lost + CONTINUITY, gained, n, margin) <= -norm.ppf(1 - ALPHA)


GRID = [(n, m, pg) for n in (60, 133, 200, 500) for m in (0.01, 0.02, 0.05, 0.1) for pg in (0.0, 0.005, 0.02, 0.1)]


def test_the_vectorised_pass_rule_is_the_verdicts_rule():
    rng = np.random.default_rng(0)
    for n, m in ((200, 0.02), (60, 0.1), (500, 0.05)):
        for _ in range(60):
            lost = int(rng.integers(0, n // 5))
            gained = int(rng.integers(0, n // 5))
            v = paired_binary(lost, gained, n, n // 2, max_drop=m, alpha=ALPHA)
            assert (v.verdict == "pass") == bool(pass_rule(np.array(lost), np.array(gained), n, m)), (
                lost,
                gained,
                n,
                m,
            )


def test_false_pass_at_the_boundary_is_at_most_alpha_exactly():
    """True drop = allowance: the exact probability of PASS, over a grid of sizes, allowances and
    discordance rates (p_gained), enumerated over every outcome."""
    worst = 0.0
    for n, m, pg in GRID:
        lost, gained, prob = trinomial(n, pg + m, pg)
        worst = max(worst, float(prob[pass_rule(lost, gained, n, m)].sum()))
    assert worst <= ALPHA, worst


def test_false_fail_at_the_boundary_is_at_most_alpha_exactly():
    z = norm.ppf(1 - ALPHA)
    worst = 0.0
    for n, m, pg in GRID:
        lost, gained, prob = trinomial(n, pg + m, pg)
        shift = np.minimum(lost, FAIL_CONTINUITY)
        shifted_lost, shifted_gained = lost - shift, gained + FAIL_CONTINUITY - shift
        fails = vector_z(shifted_lost, shifted_gained, n, m) >= z
        worst = max(worst, float(prob[fails].sum()))
    assert worst <= ALPHA, worst


def test_power_where_the_docs_state_it():
    """docs/retention.md: an unchanged candidate (drop 0) flipping 10% of items passes a 3-point allowance
    with probability >= 0.8 at the items `forgetguard plan` asks for."""
    n = planning.items_for(0.03, flip_rate=0.1)
    assert n == 720
    lost, gained, prob = trinomial(n, 0.05, 0.05)
    power = float(prob[pass_rule(lost, gained, n, 0.03)].sum())
    assert 0.78 <= power <= 0.86, power


def test_the_minimum_items_is_the_first_size_that_can_pass():
    for m in (0.02, 0.05, 0.1):
        k = planning.minimum_items(m)
        assert paired_binary(0, 0, k, k, max_drop=m).verdict == "pass"
        assert paired_binary(0, 0, k - 1, k - 1, max_drop=m).verdict == "inconclusive"
    assert planning.minimum_items(0.0) is None


def test_relative_allowance_keeps_alpha_by_simulation():
    """max_drop_relative: the base score is measured too; at true drop = r * base the pass rate stays <= alpha."""
    rng = np.random.default_rng(1)
    n, base, r, pg = 300, 0.7, 0.05, 0.03
    drop = r * base
    reps = 3000
    passes = 0
    for _ in range(reps):
        # cells: both right, lost, gained, both wrong, with P(base right) = base and drop = p_lost - p_gained.
        p_lost, p_gained = pg + drop, pg
        counts = rng.multinomial(n, [base - p_lost, p_lost, p_gained, 1 - base - p_gained])
        v = paired_binary(int(counts[1]), int(counts[2]), n, int(counts[0] + counts[1]), max_drop_relative=r)
        passes += v.verdict == "pass"
    rate = passes / reps
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps), rate


def bpb_items(rng: np.random.Generator, n: int, drop: float, spread: float) -> RatioItems:
    """Per-item (log-likelihood, bytes) pairs like the code probe's: lengths skewed (lognormal), the
    candidate's per-byte loss shifted by ``drop`` bits with heavy-tailed (t3) per-item noise."""
    bytes_ = np.maximum(rng.lognormal(6.0, 0.7, n).round(), 20)
    base_bpb = rng.normal(0.73, 0.15, n).clip(0.05)
    cand_bpb = base_bpb + drop + spread * rng.standard_t(3, n) / np.sqrt(3)
    ln2 = math.log(2)
    return RatioItems(-base_bpb * bytes_ * ln2, -cand_bpb * bytes_ * ln2, bytes_, "bits", higher_is_better=False)


@pytest.mark.parametrize("n", [40, 164, 600])
def test_ratio_verdict_false_pass_at_the_boundary(n):
    rng = np.random.default_rng(n)
    reps, allowance = 2000, 0.02
    rate = np.mean(
        [paired_ratio(bpb_items(rng, n, allowance, 0.03), max_drop=allowance).verdict == "pass" for _ in range(reps)]
    )
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps), rate


def test_ratio_verdict_relative_allowance_and_power():
    rng = np.random.default_rng(7)
    reps = 1500
    # True relative drop exactly 3% of the base's bits per byte: passes at most alpha.
    boundary = []
    for _ in range(reps):
        items = bpb_items(rng, 164, 0.0, 0.03)
        base = items.base_value
        shifted = RatioItems(items.base, items.cand - 0.03 * base * items.weights * math.log(2), items.weights,
                             "bits", False)  # fmt: skip
        boundary.append(paired_ratio(shifted, max_drop_relative=0.03).verdict == "pass")
    assert np.mean(boundary) <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    # An unchanged candidate with small per-item noise passes nearly always.
    power = np.mean([paired_ratio(bpb_items(rng, 164, 0.0, 0.01), max_drop_relative=0.03).verdict == "pass"
                     for _ in range(300)])  # fmt: skip
    assert power >= 0.95


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="alpha must be"):
        paired_binary(0, 0, 10, 5, max_drop=0.1, alpha=0.7)
    with pytest.raises(ValueError, match="at least one paired item"):
        paired_binary(0, 0, 0, 0, max_drop=0.1)
    with pytest.raises(ValueError, match="impossible counts"):
        paired_binary(8, 5, 10, 5, max_drop=0.1)
    with pytest.raises(ValueError, match="needs max_drop"):
        paired_binary(0, 0, 10, 5)
    bad = RatioItems(np.array([1.0, np.nan]), np.array([1.0, 1.0]), np.ones(2), "identity", True)
    with pytest.raises(ValueError, match="not finite"):
        paired_ratio(bad, max_drop=0.1)


def test_explain_names_the_verdict_bounds_and_items_needed():
    v = paired_binary(9, 2, 60, 40, max_drop=0.05)
    text = v.explain()
    assert text.startswith("INCONCLUSIVE: drop +0.1167") and "251 items would decide it" in text
    assert verdicts.Verdict(**{**v.to_json(), "verdict": "pass"}).passes()


@pytest.mark.parametrize("n", [30, 100, 200])
def test_a_bounded_mean_keeps_alpha_also_when_few_items_change(n):
    """Per-item values of 0.5 or 1 (partial credit): the candidate loses 0.5 on a share 2m of items, so its
    true drop is the allowance m. Most draws change few or no items; a t bound would call that certain."""
    rng = np.random.default_rng(n)
    m, reps = 0.02, 1500
    passes = 0
    for _ in range(reps):
        base = rng.choice([0.5, 1.0], size=n)
        # Half the items are at 1.0 and only those can lose 0.5: each does with probability 4m, so the
        # expected drop is 0.5 x 0.5 x 4m = m.
        hit = (rng.random(n) < 4 * m) & (base == 1.0)
        cand = np.where(hit, 0.5, base)
        items = RatioItems(base, cand, np.ones(n), "identity", True)
        passes += paired_ratio(items, max_drop=m).verdict == "pass"
    assert passes / reps <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)


def test_no_real_valued_pass_without_evidence():
    same = RatioItems(np.array([0.5, 0.5]), np.array([0.5, 0.5]), np.ones(2), "identity", True)
    assert paired_ratio(same, max_drop=0.0).verdict == "inconclusive"  # was a PASS with certainty
    rng = np.random.default_rng(0)
    ll = -rng.uniform(100, 1000, 50)
    identical = RatioItems(ll, ll.copy(), rng.integers(100, 1000, 50).astype(float), "bits", False)
    v = paired_ratio(identical, max_drop=0.01)
    assert v.verdict == "inconclusive" and "only 0 of 50 items differ" in v.explain()
