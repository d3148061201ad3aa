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
