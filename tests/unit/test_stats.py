"""Clustered bootstrap against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_forgetguard.stats import cluster_bootstrap_ratio, percentiles


def test_bootstrap_matches_a_direct_resampling():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 50, size=40).astype(float)
    sums = counts * rng.gamma(2.0, 0.05, size=40)
    lo, hi = cluster_bootstrap_ratio(sums, counts, n_boot=4000, seed=3)
    # Independent reference: plain loop, different generator.
    ref_rng = np.random.default_rng(99)
    ratios = []
    for _ in range(4000):
        idx = ref_rng.integers(0, 40, 40)
        ratios.append(sums[idx].sum() / counts[idx].sum())
    ref_lo, ref_hi = np.quantile(ratios, [0.025, 0.975])
    point = sums.sum() / counts.sum()
    assert lo < point < hi
    assert lo == pytest.approx(ref_lo, rel=0.05) and hi == pytest.approx(ref_hi, rel=0.05)


def test_bootstrap_is_seeded_and_degenerate_cases():
    s, c = np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 2.0])
    assert cluster_bootstrap_ratio(s, c, seed=5) == cluster_bootstrap_ratio(s, c, seed=5)
    assert cluster_bootstrap_ratio(np.array([3.0]), np.array([2.0])) == (1.5, 1.5)
    lo, hi = cluster_bootstrap_ratio(np.array([]), np.array([]))
    assert np.isnan(lo) and np.isnan(hi)


def test_percentiles():
    assert percentiles(np.arange(101.0), (0.5, 0.9)) == (50.0, 90.0)
    assert all(np.isnan(percentiles(np.array([]), (0.5,))))


def test_paired_bootstrap_against_a_plain_loop():
    from pytest_forgetguard.stats import ItemValues, paired_bootstrap

    rng = np.random.default_rng(2)
    base = (rng.random(120) < 0.7).astype(float)
    cand = np.where(rng.random(120) < 0.15, 1 - base, base)
    lo, hi = paired_bootstrap(ItemValues(list(base), "mean"), ItemValues(list(cand), "mean"), n_boot=4000, seed=1)
    ref_rng = np.random.default_rng(7)
    deltas = []
    for _ in range(4000):
        idx = ref_rng.integers(0, 120, 120)
        deltas.append(cand[idx].mean() - base[idx].mean())
    ref_lo, ref_hi = np.quantile(deltas, [0.025, 0.975])
    assert lo == pytest.approx(ref_lo, abs=0.01) and hi == pytest.approx(ref_hi, abs=0.01)
    # Pairing matters: the paired CI is narrower than an unpaired one.
    unpaired = []
    for _ in range(2000):
        unpaired.append(cand[ref_rng.integers(0, 120, 120)].mean() - base[ref_rng.integers(0, 120, 120)].mean())
    u_lo, u_hi = np.quantile(unpaired, [0.025, 0.975])
    assert hi - lo < u_hi - u_lo


def test_perplexity_aggregation_matches_lm_eval():
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

    from pytest_forgetguard.stats import ItemValues

    items = [(-69.4, 12), (-120.0, 30), (-8.5, 3)]
    assert ItemValues(items, "weighted_perplexity").value() == pytest.approx(weighted_perplexity(items))
    assert ItemValues(items, "bits_per_byte").value() == pytest.approx(bits_per_byte(items))
    generic = ItemValues(items, "custom", fn=weighted_perplexity)
    assert generic.value() == pytest.approx(weighted_perplexity(items))


def test_mcnemar_hand_worked_example():
    from scipy.stats import binomtest

    from pytest_forgetguard.stats import mcnemar_exact

    # 10 items: base right on 8; candidate loses 4 of them and gains 1.
    base = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    cand = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    lost, gained, p = mcnemar_exact(base, cand)
    assert (lost, gained) == (4, 1)
    # Exact two-sided p: P(X <= 1 or X >= 4), X ~ Binomial(5, 1/2) = (1 + 5 + 5 + 1) / 32.
    assert p == pytest.approx(12 / 32)
    assert p == pytest.approx(binomtest(4, 5, 0.5).pvalue)
    assert mcnemar_exact(base, base) == (0, 0, 1.0)
