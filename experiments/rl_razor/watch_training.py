"""Forward KL along training, for SFT and RL, with forgetguard's training callback.

    python experiments/rl_razor/watch_training.py --base BASE_DIR [--every 2] [--only rl-lr0.0005] [--plot-only]

Retrains the sweep's runs (train.py, same seeds, nothing saved) with
``ForgetguardCallback`` watching the example suite's ``arith-kl`` check (forward KL on this
experiment's KL prompts, base samples, 32 tokens: the check the demo gates) every ``--every``
steps. Each run's trajectory goes to ``results/trajectories/<run>.jsonl`` (a run with a complete
trajectory is skipped: resumable); then:

- the KL the callback measured at each saved step is compared with the KL measured on the saved
  candidate afterwards (``results/<candidate>.json``, forgetguard's API): the same number, or the
  callback does not measure what the gate measures;
- ``plots/kl_vs_step.png``: KL against step for every run, the suite's budget, and where
  ``stop_on_budget`` would have stopped each run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import train  # noqa: E402

SUITE = common.REPO / "example_suites" / "forgetguard_newtask.yaml"
CHECK = "arith-kl"
TRAJECTORIES = common.HERE / "results" / "trajectories"


class CallbackWatch:
    """train.Watch through forgetguard's callback: measure at step 0 and every ``every`` steps."""

    def __init__(self, path: Path, every: int) -> None:
        from pytest_forgetguard.integrations.transformers import ForgetguardCallback

        self.every = every
        self.callback = ForgetguardCallback(SUITE, checks=[CHECK], trajectory=path)
        self.train_seconds = 0.0
        self._t = 0.0

    def start(self, model: Any, tok: Any) -> None:
        self.callback.setup(model, tok)
        self.callback.measure(0)
        self._t = time.perf_counter()

    def step(self, step: int) -> None:
        self.train_seconds += time.perf_counter() - self._t
        if step % self.every == 0:
            self.callback.measure(step)
        self._t = time.perf_counter()


def watch_run(run: common.Run, base_dir: str, every: int) -> None:
    path = TRAJECTORIES / f"{run.name}.jsonl"
    done = path.with_suffix(".done.json")
    if done.exists():
        print(f"[{run.name}] trajectory complete, skipping")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    watch = CallbackWatch(path, every)
    (train.train_sft if run.method == "sft" else train.train_rl)(run, base_dir, None, watch)
    evals = watch.callback.history
    steady = [e["seconds"] for e in evals[2:]] or [e["seconds"] for e in evals]
    meta = {
        "run": run.name,
        "every": every,
        "train_seconds": round(watch.train_seconds, 2),
        "train_steps": max(run.save_at),
        "first_eval_seconds": evals[0]["seconds"],  # includes sampling the base's responses once
        "eval_seconds_median": sorted(steady)[len(steady) // 2],
    }
    done.write_text(json.dumps(meta, indent=1) + "\n")  # last: the marker of a complete trajectory


def load(run: common.Run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = TRAJECTORIES / f"{run.name}.jsonl"
    lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    return lines, json.loads(path.with_suffix(".done.json").read_text())


def compare(runs: list[common.Run]) -> list[dict[str, Any]]:
    """The callback's KL at each saved step against the saved candidate's measured KL."""
    rows = []
    for run in runs:
        lines, _ = load(run)
        by_step = {e["step"]: e["checks"][CHECK]["value"] for e in lines}
        for step in run.save_at:
            result = common.results_dir(False) / f"{run.candidate(step)}.json"
            if step not in by_step or not result.exists():
                continue
            measured = json.loads(result.read_text())["kl_forward"]["per_token"]
            rows.append({"candidate": run.candidate(step), "callback": by_step[step], "gate": measured,
                         "rel_diff": abs(by_step[step] - measured) / max(abs(measured), 1e-12)})  # fmt: skip
    return rows


def budget() -> float:
    from pytest_forgetguard.suite import load_suite

    check = next(c for c in load_suite(SUITE).checks if c.name == CHECK)
    return float(check.options["budget"])


def plot(runs: list[common.Run], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = budget()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for run in runs:
        lines, _ = load(run)
        steps = [e["step"] for e in lines]
        values = [e["checks"][CHECK]["value"] for e in lines]
        style = "-" if run.method == "sft" else "--"
        (line,) = ax.plot(steps, values, style, marker="o", markersize=3, label=f"{run.method.upper()} lr {run.lr:g}")
        over = next((e for e in lines if not e["within_budget"]), None)
        if over is not None:
            ax.plot([over["step"]], [over["checks"][CHECK]["value"]], "x", color=line.get_color(), markersize=11,
                    markeredgewidth=2.5)  # fmt: skip
    ax.axhline(limit, color="black", linewidth=1, linestyle=":")
    ax.text(0.99, limit, f"budget {limit:g}: stop_on_budget stops at ×", va="top", ha="right", fontsize=8,
            transform=ax.get_yaxis_transform())  # fmt: skip
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"forward KL on the new task (nats/token), '{CHECK}'")
    ax.set_title("KL from the base along training, measured by ForgetguardCallback")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="the base model directory (safetensors); needed unless --plot-only")
    ap.add_argument("--every", type=int, default=2, help="measure every N steps (default 2)")
    ap.add_argument("--only", action="append", help="only these runs (by name, e.g. rl-lr0.0005)")
    ap.add_argument("--plot-only", action="store_true", help="compare and plot the trajectories present")
    args = ap.parse_args()
    runs = [r for r in common.sweep(False) if common.selected(r, args.only)]
    if not args.plot_only:
        if not args.base:
            ap.error("--base is required unless --plot-only")
        common.set_threads()
        for run in runs:
            t0 = time.time()
            watch_run(run, args.base, args.every)
            print(f"[{run.name}] watched in {time.time() - t0:.0f}s", flush=True)
    runs = [r for r in runs if (TRAJECTORIES / f"{r.name}.done.json").exists()]
    print(
        "| candidate | KL by the callback during training | KL measured on the saved candidate | relative difference |"
    )
    print("|---|---|---|---|")
    for row in compare(runs):
        print(f"| {row['candidate']} | {row['callback']:.6g} | {row['gate']:.6g} | {row['rel_diff']:.1e} |")
    print()
    print("| run | train s | evaluations | first eval s | eval s (median) | train step s | eval / step |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        lines, meta = load(run)
        per_step = meta["train_seconds"] / meta["train_steps"]
        print(f"| {run.name} | {meta['train_seconds']:.0f} | {len(lines)} | {meta['first_eval_seconds']:.1f} | "
              f"{meta['eval_seconds_median']:.1f} | {per_step:.1f} | {meta['eval_seconds_median'] / per_step:.2f} |")  # fmt: skip
    if runs:
        plot(runs, common.HERE / "plots" / "kl_vs_step.png")
        print("wrote plots/kl_vs_step.png")


if __name__ == "__main__":
    main()
