"""Small statistics used by the checks: percentiles and clustered bootstrap CIs.

Example::

    >>> import numpy as np
    >>> lo, hi = cluster_bootstrap_ratio(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 1]), seed=0)
    >>> 1.0 <= lo <= 2.0 <= hi <= 3.0
    True
"""

from __future__ import annotations

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
