"""Does the calibration travel? The KL-to-forgetting relation per task, pooled, across seeds and tasks.

    python experiments/rl_razor/transfer.py --history transfer.sqlite [--coverage 0.9] [--alpha 0.05] [--boot 2000]

The history holds every measured candidate of both tasks and all seeds, recorded by
``to_history.py --task all --all-seeds`` under the plugin's check names and series: ``arith-kl`` and
``json-kl`` (each task's forward KL on its own prompts), ``code-perplexity``, ``prose-perplexity`` and
``facts`` (the shared retention probes). Three parts:

1. **The relation** (from ``results/*.json``): R² of forward KL, reverse KL and weight drift as
   predictors of forgetting (code + prose bits per byte, and the four-probe mean), per task and
   pooled, with 95% bias-corrected percentile CIs from a hierarchical bootstrap: training
   configurations (method x learning rate) resampled, then seeds within each, each seed with both its
   checkpoints (pooled: within each task). R² of a resample is biased upward (a sample that repeats
   points fits them better), so the plain percentile interval sits too high; the bias correction
   shifts the percentiles by how often the resampled R² exceeds the observed one. And, per task, RL
   against SFT at equal new-task accuracy.
2. **Out of sample, within a task**, with the plugin's own forecast (``Calibration.fit``, its conformal
   bounds and its skip rule, evidence rules included) on the history's calibration pairs: leave one
   seed out (fit on the other seeds, forecast all of this seed's candidates), and in time order (fit
   on the seeds trained before, forecast the next one). Leaving one *candidate* out is not reported:
   for an exchangeable method its coverage is fixed by the construction, not evidence.
3. **Transfer**: fit on one task's candidates (every seed), forecast each of the other task's from its
   own KL. The plugin itself never does this -- the two KL checks are different series, so each task
   is calibrated apart and a new task starts with no forecast -- this measures whether it could.

For every forecast set: mean and max absolute error, how many one-sided upper bounds at alpha (and
two-sided intervals) held the measured drop, with Clopper-Pearson intervals on those counts, how many
retention runs the skip would have saved, and how many verdicts a skip would have changed (a skipped
check whose measured drop exceeds the allowance). Writes
``transfer.json`` beside this script and ``plots/transfer_code_bpb.png``; prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analyze  # noqa: E402
import common  # noqa: E402

PREDICTORS = analyze.PREDICTORS
TARGETS = {"ppl": "code + prose bpb", "all4": "four-probe mean"}


def seed_of(name: str) -> int:
    m = re.search(r"-seed(\d+)-", name)
    return int(m.group(1)) if m else 0


def load_rows() -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for t in common.TASKS for p in common.measured(task=t, seeds=None)]
    for r in rows:
        r.setdefault("task", "arith")
        r.setdefault("seed", seed_of(r["candidate"]))
        r["config"] = f"{r['task']}/{r['method']}-lr{r['lr']:g}"
    return rows


def hierarchical_boot(rows: list[dict[str, Any]], stat: Any, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """95% bias-corrected percentile CI of ``stat(rows)`` over resampled configs, then seeds within each
    (by task): the percentiles at Phi(2 z0 -+ 1.96), z0 = Phi^-1(share of resamples below the observed)."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    tree: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        tree[r["task"]][r["config"]][r["seed"]].append(r)
    vals = []
    for _ in range(n_boot):
        sample: list[dict[str, Any]] = []
        for configs in tree.values():
            names = list(configs)
            for c in rng.choice(len(names), size=len(names)):
                seeds = list(configs[names[c]].values())
                for s in rng.choice(len(seeds), size=len(seeds)):
                    sample += seeds[s]
        v = stat(sample)
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    observed = stat(rows)
    below = (np.sum(np.asarray(vals) < observed) + 0.5 * np.sum(np.asarray(vals) == observed)) / len(vals)
    z0 = float(norm.ppf(min(max(below, 0.5 / len(vals)), 1 - 0.5 / len(vals))))
    lo, hi = norm.cdf(2 * z0 - 1.959964), norm.cdf(2 * z0 + 1.959964)
    return float(np.percentile(vals, 100 * lo)), float(np.percentile(vals, 100 * hi))


def relation(rows: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups = {t: [r for r in rows if r["task"] == t] for t in common.TASKS}
    groups["pooled"] = rows
    for group, rs in groups.items():
        if len(rs) < 3:
            continue
        for target in TARGETS:
            for pred, (_, fx) in PREDICTORS.items():

                def stat(sample: list[dict[str, Any]], fx: Any = fx, target: str = target) -> float:
                    x = np.array([fx(r) for r in sample])
                    y = np.array([analyze.forgetting(r, target)[0] for r in sample])
                    return analyze.r2(x, y)

                x = np.array([fx(r) for r in rs])
                y = np.array([analyze.forgetting(r, target)[0] for r in rs])
                slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else float("nan")
                out[f"{group}|{target}|{pred}"] = {
                    "group": group,
                    "target": target,
                    "predictor": pred,
                    "n": len(rs),
                    "seeds": sorted({r["seed"] for r in rs}),
                    "r2": stat(rs),
                    "ci": hierarchical_boot(rs, stat, n_boot),
                    "slope": slope,
                }
    return out


def equal_accuracy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and seed: each RL candidate beside the SFT candidate nearest to it in new-task accuracy."""
    out = []
    for task in common.TASKS:
        for seed in sorted({r["seed"] for r in rows if r["task"] == task}):
            rs = [r for r in rows if r["task"] == task and r["seed"] == seed]
            sft = [r for r in rs if r["method"] == "sft"]
            for rl in (r for r in rs if r["method"] == "rl"):
                if not sft:
                    continue
                near = min(sft, key=lambda s: abs(s["new_task"]["accuracy"] - rl["new_task"]["accuracy"]))
                out.append(
                    {
                        "task": task,
                        "seed": seed,
                        "rl": rl["candidate"],
                        "sft": near["candidate"],
                        "acc": [rl["new_task"]["accuracy"], near["new_task"]["accuracy"]],
                        "kl": [rl["kl_forward"]["per_token"], near["kl_forward"]["per_token"]],
                        "bpb_forgetting": [analyze.forgetting(rl, "ppl")[0], analyze.forgetting(near, "ppl")[0]],
                    }
                )
    return out


def score(fit_points: list[tuple[float, float]], targets: list[tuple[float, float, str]], allowance: float | None,
          coverage: float, alpha: float) -> dict[str, Any]:  # fmt: skip
    """The plugin's forecast, fitted on ``fit_points``, for each target (kl, measured drop, name), and
    its skip rule: the upper bound at ``alpha`` within the allowance, on evidence that may decide."""
    from pytest_forgetguard.forecast import Calibration

    cal = Calibration.fit(fit_points)
    may_decide = not cal.evidence_problems(alpha)
    rows = []
    for kl, drop, name in targets:
        f = cal.forecast(kl, coverage, alpha=alpha)
        if f is None:
            continue
        skip = allowance is not None and may_decide and f.within(allowance)
        rows.append({"candidate": name, "kl": kl, "drop": drop, "forecast": f.drop, "low": f.low, "high": f.high,
                     "upper": f.upper, "held": f.low <= drop <= f.high, "upper_held": drop <= f.upper,
                     "extrapolation": f.extrapolation, "skipped": skip,
                     "verdict_changed": skip and drop > allowance})  # fmt: skip
    return rows_summary(rows, len(targets), allowance)


def coverage_ci(held: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval for the observed coverage ``held / n``: a nominal 90% interval that
    held 26 of 30 times is consistent with 90% ([0.69, 0.96]); 4 of 10 is not ([0.12, 0.74])."""
    from scipy.stats import beta

    if n == 0:
        return (math.nan, math.nan)
    a = (1 - level) / 2
    low = 0.0 if held == 0 else float(beta.ppf(a, held, n - held + 1))
    high = 1.0 if held == n else float(beta.ppf(1 - a, held + 1, n - held))
    return (low, high)


def rows_summary(rows: list[dict[str, Any]], n: int, allowance: float | None) -> dict[str, Any]:
    errs = [abs(r["drop"] - r["forecast"]) for r in rows]
    held = sum(r["held"] for r in rows)
    upper_held = sum(r["upper_held"] for r in rows)
    return {
        "n": n,
        "forecasts": len(rows),
        "mean_abs_error": float(np.mean(errs)) if errs else None,
        "max_abs_error": float(np.max(errs)) if errs else None,
        "held": held,
        "coverage_ci": coverage_ci(held, len(rows)),
        "upper_held": upper_held,
        "upper_coverage_ci": coverage_ci(upper_held, len(rows)),
        "mean_width": float(np.mean([r["high"] - r["low"] for r in rows])) if rows else None,
        "extrapolations": sum(r["extrapolation"] for r in rows),
        "skipped": sum(r["skipped"] for r in rows),
        "verdicts_changed": sum(r["verdict_changed"] for r in rows),
        "allowance": allowance,
        "rows": rows,
    }


def merge(parts: list[dict[str, Any]], allowance: float | None) -> dict[str, Any]:
    rows = [r for p in parts for r in p["rows"]]
    return rows_summary(rows, sum(p["n"] for p in parts), allowance)


def forecasts(history: Path, rows: list[dict[str, Any]], coverage: float, alpha: float) -> dict[str, Any]:
    from pytest_forgetguard.calibration import summarize
    from pytest_forgetguard.history import History

    by_kl = {r["kl_forward"]["per_token"]: r for r in rows}
    pairs = summarize(History(history).rows())
    if not pairs:
        raise SystemExit(f"no KL x retention pairs in {history}: run to_history.py --task all --all-seeds first")
    # Each history point back to its candidate (by its KL, a measured float unique to the candidate).
    per: dict[tuple[str, str], list[tuple[float, float, dict[str, Any]]]] = {}
    allowance: dict[str, float | None] = {}
    for pair in pairs:
        # In candidate order, not the history's (run times are the results files' mtimes, which a fresh
        # clone sets in checkout order): transfer.json is a function of the measurements alone.
        pts = sorted(
            ((p.kl, p.drop, by_kl[p.kl]) for p in pair.points if p.kl in by_kl), key=lambda t: t[2]["candidate"]
        )
        if not pts:  # a pair of other runs in the same history (a suite's own runs): not this experiment's
            continue
        task = pts[0][2]["task"]
        per[(task, pair.retention_check)] = pts
        allowance[pair.retention_check] = pair.allowance
    out: dict[str, Any] = {}
    for (task, check), pts in sorted(per.items()):
        a = allowance[check]
        seeds = sorted({r["seed"] for _, _, r in pts})
        if len(seeds) > 1:
            parts = [score([(k, d) for k, d, r in pts if r["seed"] != s],
                           [(k, d, r["candidate"]) for k, d, r in pts if r["seed"] == s], a, coverage, alpha)
                     for s in seeds]  # fmt: skip
            out[f"{task}|{check}|leave one seed out"] = merge(parts, a)
            # Time order: each seed's candidates were trained after the earlier seeds'.
            later = [score([(k, d) for k, d, r in pts if r["seed"] < s],
                           [(k, d, r["candidate"]) for k, d, r in pts if r["seed"] == s], a, coverage, alpha)
                     for s in seeds[1:]]  # fmt: skip
            out[f"{task}|{check}|next seed from earlier ones"] = merge(later, a)
        for other, check2 in per:
            if check2 == check and other != task:
                fit = [(k, d) for k, d, _ in pts]
                target = [(k, d, r["candidate"]) for k, d, r in per[(other, check)]]
                out[f"{task} -> {other}|{check}|transfer"] = score(fit, target, a, coverage, alpha)
    return out


def plot(history: Path, rows: list[dict[str, Any]], coverage: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pytest_forgetguard.forecast import Calibration

    tasks = [t for t in common.TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    marker = {"arith": "o", "json": "s"}
    for ax, fit_task in zip(axes[0], tasks):
        fit_rows = [r for r in rows if r["task"] == fit_task]
        pts = [(r["kl_forward"]["per_token"], r["probes"]["fg_code_ppl"]["drop"]) for r in fit_rows]
        cal = Calibration.fit(pts)
        xs = np.linspace(0, max(r["kl_forward"]["per_token"] for r in rows) * 1.05, 200)
        fc = [cal.forecast(float(x), coverage) for x in xs[::5]]
        ax.plot(
            xs,
            [cal.intercept + cal.slope * x for x in xs],
            color="k",
            lw=1,
            label=f"fit on {fit_task} (R² {cal.r2:.2f})",
        )
        ok = [(x, f) for x, f in zip(xs[::5], fc) if f is not None]
        ax.fill_between([x for x, _ in ok], [f.low for _, f in ok], [f.high for _, f in ok], color="0.85",
                        label=f"{coverage:.0%} conformal interval")  # fmt: skip
        for task in tasks:
            for method, color in analyze.COLORS.items():
                sel = [r for r in rows if r["task"] == task and r["method"] == method]
                ax.scatter([r["kl_forward"]["per_token"] for r in sel], [r["probes"]["fg_code_ppl"]["drop"] for r in sel],
                           c=color, marker=marker.get(task, "^"), alpha=0.8 if task == fit_task else 0.45,
                           label=f"{task} {method}")  # fmt: skip
        ax.set_title(f"code bits-per-byte drop vs forward KL: fit on {fit_task}")
        ax.set_xlabel("forward KL(base‖candidate) on the task's prompts, nats/token")
        ax.set_ylabel("code bits-per-byte drop (positive = worse)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", required=True, type=Path)
    ap.add_argument("--coverage", type=float, default=0.9)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=common.HERE / "transfer.json")
    args = ap.parse_args()
    if not args.history.is_file():  # before the bootstrap's seconds, with this experiment's fix
        raise SystemExit(f"no run history at {args.history}: record the measurements first with "
                         "to_history.py --base GGUF --history FILE --task all --all-seeds")  # fmt: skip
    rows = load_rows()
    counts = {
        t: (sum(r["task"] == t for r in rows), sorted({r["seed"] for r in rows if r["task"] == t}))
        for t in common.TASKS
    }
    rel = relation(rows, args.boot)
    eq = equal_accuracy(rows)
    fc = forecasts(args.history, rows, args.coverage, args.alpha)
    args.out.write_text(json.dumps({"candidates": counts, "relation": rel, "equal_accuracy": eq, "forecasts": fc},
                                   indent=1) + "\n")  # fmt: skip
    plot(args.history, rows, args.coverage, common.HERE / "plots" / "transfer_code_bpb.png")

    def g(x: Any, fmt: str = ".3g") -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    print("candidates measured: " + ", ".join(f"{t} {n} (seeds {s})" for t, (n, s) in counts.items()))
    print("\n| forgetting | group | forward KL R² [95% CI] | reverse KL | weight drift | n |")
    print("|---|---|---|---|---|---|")
    for target, label in TARGETS.items():
        for group in (*common.TASKS, "pooled"):
            cells = []
            for pred in PREDICTORS:
                e = rel.get(f"{group}|{target}|{pred}")
                cells.append("–" if e is None else f"{g(e['r2'], '.2f')} [{g(e['ci'][0], '.2f')}, {g(e['ci'][1], '.2f')}]"
                             + (" (slope<0)" if e["slope"] < 0 else ""))  # fmt: skip
            n = next((e["n"] for k, e in rel.items() if k.startswith(f"{group}|{target}|")), 0)
            print(f"| {label} | {group} | {' | '.join(cells)} | {n} |")
    print(
        "\n| task | seed | RL | SFT nearest in accuracy | accuracy RL / SFT | forward KL RL / SFT | bpb forgetting RL / SFT |"
    )
    print("|---|---|---|---|---|---|---|")
    for e in eq:
        print(f"| {e['task']} | {e['seed']} | {e['rl']} | {e['sft']} | {e['acc'][0]:.2f} / {e['acc'][1]:.2f} | "
              f"{e['kl'][0]:.3f} / {e['kl'][1]:.3f} | {e['bpb_forgetting'][0]:+.2%} / {e['bpb_forgetting'][1]:+.2%} |")  # fmt: skip
    print(f"\n| forecast | check | forecasts of | mean / max abs error | upper bound at alpha {args.alpha:g} held [95% CI] "
          f"| {args.coverage:.0%} interval held | mean width | allowance | skipped | verdicts changed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, s in fc.items():
        group, check, kind = key.split("|")
        print(f"| {group}: {kind} | {check} | {s['forecasts']} of {s['n']} | {g(s['mean_abs_error'])} / {g(s['max_abs_error'])} | "
              f"{s['upper_held']}/{s['forecasts']} [{g(s['upper_coverage_ci'][0], '.2f')}, {g(s['upper_coverage_ci'][1], '.2f')}] | "
              f"{s['held']}/{s['forecasts']} | {g(s['mean_width'])} | {g(s['allowance'])} | {s['skipped']} of {s['n']} | "
              f"{s['verdicts_changed']} |")  # fmt: skip
    print(f"\nwrote {args.out} and plots/transfer_code_bpb.png")


if __name__ == "__main__":
    main()
