"""The retention gate's error rates per policy, before and after the verdicts of issue #23 (seeded).

Simulated paired 0/1 items (n items, base accuracy 0.7, a share `flip` of items on which the two models
disagree) for a candidate whose true drop is 0, the allowance, or twice the allowance. "before" are the
rules of the previous release (a 95% paired bootstrap CI: `observed` = point estimate, `significant` =
fail only when the CI's low end is over the allowance, `strict` = pass only when its high end is within);
"after" are today's verdicts at alpha = 0.05 (`strict` is the default: pass on evidence, inconclusive
fails; `significant` passes an inconclusive verdict; `observed` is the point estimate).

    python benchmarks/verdict_error_rates.py [--reps 1000] [--out table.md]

Prints a Markdown table: the share of candidates that PASS, per policy and true drop. At drop =
allowance that share is the false-pass rate (the gate's promise: at most alpha).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from pytest_forgetguard.evidence.verdicts import observed, paired_binary
from pytest_forgetguard.stats import ItemValues, paired_bootstrap


def draw(rng: np.random.Generator, n: int, base: float, flip: float, drop: float) -> tuple[np.ndarray, np.ndarray]:
    p_lost, p_gained = flip / 2 + drop / 2, flip / 2 - drop / 2
    cells = rng.choice(4, size=n, p=[base - p_lost, p_lost, p_gained, 1 - base - p_gained])
    return np.isin(cells, (0, 1)).astype(float), np.isin(cells, (0, 2)).astype(float)


def before(policy: str, b: np.ndarray, c: np.ndarray, allowance: float, seed: int) -> bool:
    """The previous release's gate_passes on its 95% paired bootstrap CI."""
    bv, cv = ItemValues(list(b), "mean"), ItemValues(list(c), "mean")
    drop = bv.value() - cv.value()
    if policy == "observed":
        return drop <= allowance
    lo, hi = paired_bootstrap(bv, cv, n_boot=1000, seed=seed)
    drop_lo, drop_hi = -hi, -lo
    return drop_lo <= allowance if policy == "significant" else drop_hi <= allowance


def after(policy: str, b: np.ndarray, c: np.ndarray, allowance: float) -> bool:
    lost = int(((b == 1) & (c == 0)).sum())
    gained = int(((b == 0) & (c == 1)).sum())
    v = paired_binary(lost, gained, len(b), int(b.sum()), max_drop=allowance, alpha=0.05)
    if policy == "observed":
        return observed(v.drop, allowance) == "pass"
    return v.passes("pass" if policy == "significant" else "fail")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    start = time.time()
    rows = []
    for allowance, flip in ((0.02, 0.06), (0.05, 0.2)):
        for policy in ("observed", "significant", "strict"):
            cells = []
            for fn in (before, after):
                rates = []
                for k, drop in enumerate((0.0, allowance, 2 * allowance)):
                    rng = np.random.default_rng([round(allowance * 1000), round(flip * 1000), k])
                    passes = 0
                    for rep in range(args.reps):
                        b, c = draw(rng, args.n, 0.7, flip, drop)
                        ok = fn(policy, b, c, allowance, rep) if fn is before else fn(policy, b, c, allowance)
                        passes += bool(ok)
                    rates.append(passes / args.reps)
                cells.append(rates)
            rows.append((allowance, flip, policy, cells))
    lines = [
        f"n = {args.n} paired items, base accuracy 0.7, {args.reps} candidates per cell, alpha = 0.05 (after).",
        "Share of candidates that PASS at true drop 0 / at the allowance (false pass) / at twice the allowance:",
        "",
        "| allowance | flip rate | policy | before: drop 0 | before: = allowance | before: 2× | after: drop 0 "
        "| after: = allowance | after: 2× |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for allowance, flip, policy, (b, a) in rows:
        name = policy + {"observed": " (default before)", "strict": " (default after)"}.get(policy, "")
        lines.append(
            f"| {allowance} | {flip} | {name} | "
            + " | ".join(f"{x:.3f}" for x in b)
            + " | "
            + " | ".join(f"{x:.3f}" for x in a)
            + " |"
        )
    lines.append(f"\n({time.time() - start:.0f} s)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
