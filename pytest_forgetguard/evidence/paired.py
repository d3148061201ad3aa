"""Paired per-item values (as lm-eval gives them) to a verdict: the method chosen by the values' kind.

- 0/1 values aggregated by their mean: the paired score test (:func:`.verdicts.paired_binary`);
- a ratio of sums (means of real values, bits per byte, word/byte perplexity, perplexity):
  :func:`.verdicts.paired_ratio`;
- any other aggregation: percentile bootstrap bounds (:func:`.verdicts.bootstrap_verdict`), approximate.

Used by the retention gate and by ``forgetguard compare`` alike.

Example::

    >>> from pytest_forgetguard.stats import ItemValues
    >>> base = ItemValues([1.0] * 150 + [0.0] * 50, "mean")
    >>> cand = ItemValues([1.0] * 149 + [0.0] * 51, "mean")
    >>> decide_items(base, cand, higher_is_better=True, max_drop=0.05).verdict
    'pass'
"""

from __future__ import annotations

from ..stats import ItemValues, paired_bootstrap
from .verdicts import DEFAULT_ALPHA, RatioItems, Verdict, bootstrap_verdict, paired_binary, paired_ratio

# lm-eval aggregations whose per-item values are a ratio of sums: (transform, values are (value, weight) pairs)
RATIO_AGGREGATIONS: dict[str, tuple[str, bool]] = {
    "mean": ("identity", False),
    "bits_per_byte": ("bits", True),
    "weighted_perplexity": ("exp_neg", True),
    "perplexity": ("exp_neg", False),
}


def ratio_items(base: ItemValues, cand: ItemValues, higher_is_better: bool) -> RatioItems | None:
    """The paired values as a ratio of sums, or None when the aggregation is not one.

    The weights (bytes or words of each document) are the document's, so both models must have the same.
    """
    spec = RATIO_AGGREGATIONS.get(base.aggregation)
    if spec is None or spec[1] != base.pairs or base.pairs != cand.pairs:
        return None
    transform, pairs = spec
    weights = base.b if pairs else base.a * 0.0 + 1.0
    if pairs and not (base.b == cand.b).all():
        raise ValueError(
            "the two models' per-item weights (bytes or words of each document) differ: the items are not the same"
        )
    return RatioItems(base.a, cand.a, weights, transform, higher_is_better)


def decide_items(
    base: ItemValues,
    cand: ItemValues,
    higher_is_better: bool,
    max_drop: float | None = None,
    max_drop_relative: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> Verdict:
    """The verdict on the candidate's drop from the base over the same items, in the same order."""
    if len(base) != len(cand) or len(base) == 0:
        raise ValueError("a verdict needs the same, non-empty list of items for both models")
    if base.binary and cand.binary and base.aggregation == "mean":
        good = 1.0 if higher_is_better else 0.0
        lost = int(((base.a == good) & (cand.a != good)).sum())
        gained = int(((base.a != good) & (cand.a == good)).sum())
        return paired_binary(lost, gained, len(base), int((base.a == 1.0).sum()), max_drop, max_drop_relative, alpha)
    items = ratio_items(base, cand, higher_is_better)
    if items is not None:
        return paired_ratio(items, max_drop, max_drop_relative, alpha)
    lo, hi = paired_bootstrap(base, cand, confidence=1.0 - 2.0 * alpha, seed=seed)
    drop_lo, drop_hi = (-hi, -lo) if higher_is_better else (lo, hi)
    base_value, cand_value = base.value(), cand.value()
    drop = base_value - cand_value if higher_is_better else cand_value - base_value
    return bootstrap_verdict(drop, drop_lo, drop_hi, base_value, len(base), max_drop, max_drop_relative, alpha)
