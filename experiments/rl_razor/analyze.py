"""Table, fits and plots from results/*.json; picks the two demo adapters.

    python experiments/rl_razor/analyze.py [--quick] [--copy-adapters]

Writes results/table.md (the README's table), results/summary.json (fits, R^2 with bootstrap CIs)
and plots/*.png. With --copy-adapters, copies the demo pair (common.DEMO: one SFT, one RL candidate at
equal new-task accuracy) to adapters/sft/ and adapters/rl/ (adapter_config.json + adapter_model.safetensors).

Forgetting is the mean relative drop over probes (drop / base value, positive = worse), for two sets:
- ``all4``: the four shipped probes, as evaluate.py stores it (the issue's definition);
- ``ppl``: the two perplexity probes only (code, prose). They score every byte of 220 documents, so
  their paired CIs are ~100x narrower than the accuracy probes', where one flipped item out of 102 is
  a 1.6% relative change: the low-noise view of the same question.
The standard error of a mean over independent probes is sqrt(sum se_i^2) / k, each se_i read off the
probe's paired-bootstrap 95% CI (normal approximation).

Fits are ordinary least squares of forgetting on one predictor, with an intercept, over all
candidates. Two uncertainties are reported:
- R^2's 95% CI from a bootstrap over candidates (which fine-tunes happened to be in the sweep);
- the reliability ceiling 1 - mean(se^2) / var(forgetting): the share of the spread in measured
  forgetting that is not probe noise. No predictor can reach an R^2 above it (in expectation), so it
  says how much of a low R^2 is the probes' fault rather than the predictor's.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# The forward KL per sequence is not a separate predictor here: every candidate is scored on the same
# base samples (same prompts, same 1410 tokens), so it is the per-token value times 22.03: same R^2.
PREDICTORS = {
    "kl_forward": ("forward KL(base||cand), nats/token", lambda r: r["kl_forward"]["per_token"]),
    "kl_reverse": ("reverse KL(cand||base), nats/token", lambda r: r["kl_reverse"]["per_token"]),
    "drift": ("weight drift, relative L2", lambda r: r["drift"]["relative_l2"]),
}
TARGETS = {
    "all4": ("forgetting, 4 probes (%)", ("fg_capitals", "fg_elements", "fg_code_ppl", "fg_prose_ppl")),
    "ppl": ("forgetting, code + prose bpb (%)", ("fg_code_ppl", "fg_prose_ppl")),
}
COLORS = {"sft": "tab:blue", "rl": "tab:red"}
Z95 = 1.959964


def load(quick: bool = False) -> list[dict[str, Any]]:
    """The first task's sweep at seed 0, in sweep order (the seeds and the second task are analysed apart)."""
    rows = [json.loads(p.read_text()) for p in common.measured(quick)]
    order: dict[str, int] = {}
    for i, run in enumerate(common.SWEEP + common.QUICK_SWEEP):
        order.setdefault(run.config, i)  # sweep order; a quick run of the same name keeps the sweep's place
    return sorted(rows, key=lambda r: (order.get(f"{r['method']}-lr{r['lr']:g}", 99), r["step"]))


def forgetting(r: dict[str, Any], target: str) -> tuple[float, float]:
    """(mean relative drop, its standard error) over the target's probes."""
    probes = [r["probes"][t] for t in TARGETS[target][1]]
    ses = [(p["relative_drop_ci"][1] - p["relative_drop_ci"][0]) / (2 * Z95) for p in probes]
    return sum(p["relative_drop"] for p in probes) / len(probes), math.sqrt(sum(s * s for s in ses)) / len(probes)


def r2(xs: np.ndarray, ys: np.ndarray) -> float:
    """R^2 of the OLS line with an intercept (= the squared correlation); NaN where no line is defined."""
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return float("nan")
    return float(np.corrcoef(xs, ys)[0, 1] ** 2)  # = 1 - SS_res/SS_tot for OLS with an intercept


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0, n_boot: int = 5000) -> dict[str, Any]:
    """OLS y = a + b x: slope, intercept, R^2, its bootstrap 95% CI over points, Spearman's rho."""
    from scipy.stats import spearmanr

    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SystemExit(f"non-finite values in a fit (x = {x.tolist()}, y = {y.tolist()}): check results/*.json")
    b, a = np.polyfit(x, y, 1)
    rng = np.random.default_rng(seed)
    boots = [v for v in (r2(x[i], y[i]) for i in rng.integers(0, len(x), (n_boot, len(x)))) if np.isfinite(v)]
    return {
        "slope": float(b),
        "intercept": float(a),
        "r2": r2(x, y),
        "r2_ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
        "spearman": float(spearmanr(x, y).statistic),
        "n": len(x),
    }


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["new_task"]["base_accuracy"]
    out = [
        f"| candidate | new-task acc (base {base:.2f}) | fwd KL nats/token [95% CI] | fwd KL /seq | rev KL nats/token | "
        "drift rel. L2 | capitals | elements | code bpb | prose bpb | forgetting, 4 probes [95% CI] | "
        "forgetting, bpb only [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, kf = r["probes"], r["kl_forward"]
        cells = [
            f"`{r['candidate']}`",
            f"{r['new_task']['accuracy']:.2f}",
            f"{kf['per_token']:.4f} [{kf['ci'][0]:.4f}, {kf['ci'][1]:.4f}]",
            f"{kf['per_sequence']:.3f}",
            f"{r['kl_reverse']['per_token']:.4f}",
            f"{r['drift']['relative_l2']:.4f}",
            *(f"{100 * p[t]['relative_drop']:+.2f}%" for t in TARGETS["all4"][1]),
        ]
        for target in TARGETS:
            f, se = forgetting(r, target)
            cells.append(f"{100 * f:+.2f}% [{100 * (f - Z95 * se):+.2f}, {100 * (f + Z95 * se):+.2f}]")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plots(rows: list[dict[str, Any]], fits: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(TARGETS), len(PREDICTORS), figsize=(4.6 * len(PREDICTORS), 3.9 * len(TARGETS)))
    for row_axes, (target, (ylabel, _)) in zip(axes, TARGETS.items()):
        ys = [forgetting(r, target) for r in rows]
        y = np.array([100 * f for f, _ in ys])
        yerr = np.array([100 * Z95 * se for _, se in ys])
        for ax, (key, (label, get)) in zip(row_axes, PREDICTORS.items()):
            x = np.array([get(r) for r in rows])
            for method in ("sft", "rl"):
                sel = np.array([r["method"] == method for r in rows])
                ax.errorbar(
                    x[sel], y[sel], yerr=yerr[sel], fmt="o", color=COLORS[method], label=method.upper(), capsize=2
                )
            f = fits[target][key]
            xs = np.linspace(0, x.max() * 1.05, 50)
            ax.plot(xs, 100 * (f["intercept"] + f["slope"] * xs), "k--", lw=1)
            ax.set_title(f"R² = {f['r2']:.2f} (95% CI {f['r2_ci'][0]:.2f}–{f['r2_ci'][1]:.2f})", fontsize=10)
            ax.set_xlabel(label)
            ax.axhline(0, color="grey", lw=0.5)
            ax.grid(alpha=0.3)
        row_axes[0].set_ylabel(ylabel)
    axes[0][0].legend()
    fig.suptitle("SmolLM2-135M-Instruct LoRA candidates: forgetting vs predictor (error bars: 95% CI; dashed: OLS)")
    fig.tight_layout()
    fig.savefig(out / "forgetting_vs_predictors.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    base_acc = rows[0]["new_task"]["base_accuracy"]
    for method in ("sft", "rl"):
        sel = [r for r in rows if r["method"] == method]
        acc = [r["new_task"]["accuracy"] for r in sel]
        for ax, target in zip(axes[:2], TARGETS):
            ys = [forgetting(r, target) for r in sel]
            ax.errorbar(
                acc,
                [100 * f for f, _ in ys],
                yerr=[100 * Z95 * se for _, se in ys],
                fmt="o",
                color=COLORS[method],
                label=method.upper(),
                capsize=2,
            )
        axes[2].scatter(acc, [r["kl_forward"]["per_token"] for r in sel], color=COLORS[method], label=method.upper())
        for r, a in zip(sel, acc):
            for ax, yv in ((axes[1], 100 * forgetting(r, "ppl")[0]), (axes[2], r["kl_forward"]["per_token"])):
                ax.annotate(f"{r['lr']:g}/{r['step']}", (a, yv), fontsize=7, alpha=0.7)
    for ax, (ylabel, title) in zip(
        axes,
        (
            (TARGETS["all4"][0], "new-task accuracy vs forgetting (4 probes)"),
            (TARGETS["ppl"][0], "... vs forgetting (bpb probes; labels lr/steps)"),
            ("forward KL(base||cand), nats/token", "new-task accuracy vs forward KL"),
        ),
    ):
        ax.scatter([base_acc], [0], marker="*", s=140, color="black", label="base", zorder=3)
        ax.set_xlabel("new-task accuracy (greedy, 100 held-out problems)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_forgetting_and_kl.png", dpi=100)
    plt.close(fig)


def demo_pair(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The committed demo pair (common.DEMO), checked to be at similar new-task accuracy (within 0.05)."""
    by_name = {r["candidate"]: r for r in rows}
    missing = [n for n in common.DEMO.values() if n not in by_name]
    if missing:
        raise SystemExit(f"demo candidates not measured yet: {missing}")
    sft, rl = by_name[common.DEMO["sft"]], by_name[common.DEMO["rl"]]
    gap = abs(sft["new_task"]["accuracy"] - rl["new_task"]["accuracy"])
    if not gap <= 0.05:  # NaN fails too
        raise SystemExit(f"demo pair differs by {gap:.2f} in new-task accuracy; pick another pair in common.DEMO")
    return sft, rl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--copy-adapters", action="store_true", help="copy the demo pair to adapters/{sft,rl}/")
    args = ap.parse_args()
    results = common.results_dir(args.quick)
    rows = load(args.quick)
    if not rows:
        raise SystemExit(f"no measured candidates in {results}: run evaluate.py first")
    (results / "table.md").write_text(table(rows))
    print(table(rows))
    if len(rows) < 3:  # the --quick sweep: the pipeline ran; a fit needs more points
        print(f"{len(rows)} candidates: too few for fits (need 3); table written to {results / 'table.md'}")
        return
    fits: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "n_candidates": len(rows),
        "fits": fits,
        "fits_per_method": {},
        "reliability_ceiling": {},
    }
    for target in TARGETS:
        ys = [forgetting(r, target) for r in rows]
        y = np.array([f for f, _ in ys])
        fits[target] = {k: fit(np.array([get(r) for r in rows]), y) for k, (_, get) in PREDICTORS.items()}
        summary["reliability_ceiling"][target] = float(1 - np.mean([se**2 for _, se in ys]) / y.var(ddof=1))
        summary["fits_per_method"][target] = {
            m: {
                k: fit(np.array([get(r) for r in rows if r["method"] == m]), y[[r["method"] == m for r in rows]])
                for k, (_, get) in PREDICTORS.items()
            }
            for m in ("sft", "rl")
            if sum(r["method"] == m for r in rows) >= 3
        }
    if not args.quick:
        sft, rl = demo_pair(rows)
        summary["demo"] = {"sft": sft["candidate"], "rl": rl["candidate"]}
        if args.copy_adapters:
            for kind, row in (("sft", sft), ("rl", rl)):
                dst = common.HERE / "adapters" / kind
                dst.mkdir(parents=True, exist_ok=True)
                for name in ("adapter_config.json", "adapter_model.safetensors"):
                    shutil.copy2(common.candidates_dir(False) / row["candidate"] / name, dst / name)
                print(f"adapters/{kind} <- {row['candidate']} (new-task acc {row['new_task']['accuracy']:.2f})")
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plots(rows, fits, (common.HERE / "plots") if not args.quick else common.WORK / "quick/plots")
    for target in TARGETS:
        print(f"{target}: reliability ceiling {summary['reliability_ceiling'][target]:.2f}")
        for k, f in fits[target].items():
            print(
                f"  {k:15s} R^2 {f['r2']:.3f} [{f['r2_ci'][0]:.2f}, {f['r2_ci'][1]:.2f}] slope {f['slope']:.4g} rho {f['spearman']:.2f}"
            )


if __name__ == "__main__":
    main()
