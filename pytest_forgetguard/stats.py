"""Small statistics used by the checks: percentiles and clustered bootstrap CIs.

Example::

    >>> import numpy as np
    >>> lo, hi = cluster_bootstrap_ratio(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]), seed=0)
    >>> 1.0 <= lo <= 2.0 <= hi <= 3.0
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np


def cluster_bootstrap_ratio(
    sums: np.ndarray,
    counts: np.ndarray,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``sum(sums) / sum(counts)``, resampling clusters.

    Tokens of one prompt are correlated, so prompts (clusters) are resampled
    whole: the interval reflects prompt-to-prompt variation, not token count.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if sums.size == 0:
        return float("nan"), float("nan")
    if sums.size == 1:
        value = float(sums[0] / counts[0])
        return value, value
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    stats = np.empty(n_boot)
    # Chunked so memory stays small for many prompts.
    step = max(1, 2_000_000 // sums.size)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, sums.size, size=(stop - start, sums.size))
        stats[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    if values.size == 0:
        return tuple(float("nan") for _ in qs)
    return tuple(float(v) for v in np.quantile(values, qs))


class ItemValues:
    """Per-item metric values and the aggregation that turns any subset into a score.

    lm-eval aggregations are honoured: ``mean`` for 0/1 and real-valued
    metrics, ``weighted_perplexity`` / ``bits_per_byte`` / ``perplexity`` for
    (log-likelihood, count) pairs. Other aggregations fall back to calling
    lm-eval's own function on each resample.

    >>> ItemValues([1.0, 0.0, 1.0, 1.0], "mean").value()
    0.75
    """

    def __init__(self, values: list[Any], aggregation: str, fn: object = None) -> None:
        self.aggregation = aggregation
        self.fn = fn
        self.raw = list(values)
        self.pairs = bool(self.raw) and isinstance(self.raw[0], (tuple, list))
        if self.pairs:
            arr = np.asarray(self.raw, dtype=np.float64)
            self.a, self.b = arr[:, 0], arr[:, 1]
        else:
            self.a = np.asarray(self.raw, dtype=np.float64)
            self.b = np.ones_like(self.a)  # unused: plain values have no counts

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def binary(self) -> bool:
        return not self.pairs and bool(np.isin(self.a, (0.0, 1.0)).all())

    def resampled(self, idx: np.ndarray) -> np.ndarray:
        """The aggregate for each row of an index matrix [n_boot, n]."""
        agg = self.aggregation
        if agg == "mean" and not self.pairs:
            return np.asarray(self.a[idx].mean(axis=1))
        if self.pairs and agg in ("weighted_perplexity", "bits_per_byte"):
            ratio = self.a[idx].sum(axis=1) / self.b[idx].sum(axis=1)
            return np.asarray(np.exp(-ratio) if agg == "weighted_perplexity" else -ratio / np.log(2))
        if agg == "perplexity" and not self.pairs:
            return np.asarray(np.exp(-self.a[idx].mean(axis=1)))
        if not callable(self.fn):
            raise ValueError(f"no way to aggregate metric values with {agg!r}")
        return np.array([float(self.fn([self.raw[i] for i in row])) for row in idx])

    def value(self) -> float:
        return float(self.resampled(np.arange(len(self.raw))[None, :])[0])


def paired_bootstrap(
    base: ItemValues,
    cand: ItemValues,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of ``agg(candidate) - agg(base)``, resampling items jointly.

    Both models are scored on the same items, so each resample draws the
    same item indices for both: item difficulty cancels and the interval is
    much narrower than for two independent samples.
    """
    n = len(base)
    if n != len(cand) or n == 0:
        raise ValueError("paired bootstrap needs the same, non-empty set of items for both models")
    rng = np.random.default_rng(seed)
    # Fewer resamples for aggregations computed item by item in Python.
    fast = base.aggregation in ("mean", "weighted_perplexity", "bits_per_byte", "perplexity")
    n_boot = n_boot if fast else min(n_boot, 500)
    deltas = np.empty(n_boot)
    step = max(1, 2_000_000 // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        deltas[start:stop] = cand.resampled(idx) - base.resampled(idx)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(deltas, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def mcnemar_exact(base: np.ndarray, cand: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on paired 0/1 outcomes.

    Returns (lost, gained, two-sided p): ``lost`` items the base got right and
    the candidate wrong, ``gained`` the reverse; under "no difference" each
    discordant item is a fair coin flip.
    """
    from scipy.stats import binomtest

    base = np.asarray(base, dtype=bool)
    cand = np.asarray(cand, dtype=bool)
    lost = int((base & ~cand).sum())
    gained = int((~base & cand).sum())
    if lost + gained == 0:
        return lost, gained, 1.0
    return lost, gained, float(binomtest(lost, lost + gained, 0.5).pvalue)
