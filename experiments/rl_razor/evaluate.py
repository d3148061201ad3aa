"""Measure every trained candidate against the base with forgetguard only (the ``Forgetguard`` API).

    python experiments/rl_razor/evaluate.py --base BASE_DIR [--quick] [--seed 1] [--task json] [--force]

Per candidate, one JSON in results/<candidate>.json (written atomically; an existing one is kept,
so a rerun measures only what is missing):
- new-task accuracy: lm-eval's generate_until task tasks/rlr_arith.yaml (100 held-out problems,
  greedy, scored by the task's reward), run by ``forgetguard.retention(...)``: base and candidate
  scores, paired CI, McNemar test;
- forward KL(base || candidate) per response token on the 64 KL prompts, with responses sampled from
  the base (temperature 1, 32 tokens; the RL's Razor quantity), and per sequence (sum over tokens);
- reverse KL(candidate || base), on responses sampled from the candidate;
- weight drift (relative L2 of W + BA vs W over all weights, share of weights changed);
- retention on the four shipped probes, and forgetting = mean *relative* drop over them:
  drop / base value, with the drop signed so that positive is worse (accuracy down, bits per byte
  up). The probes mix units (accuracy, bits per byte), so a plain mean of drops would weigh them
  arbitrarily; relative drops put them on one scale.
The base's samples and lm-eval results come from forgetguard's cache after the first candidate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PROBES = (
    ("fg_capitals", "acc"),
    ("fg_elements", "acc"),
    ("fg_code_ppl", "bits_per_byte"),
    ("fg_prose_ppl", "bits_per_byte"),
)
Z95 = 1.959964


def _kl(result: Any) -> dict[str, Any]:
    """A KLResult as plain numbers: per-token means, per-sequence means, CI, agreement."""
    direction = result.direction
    per_seq = [float(p.values(direction).sum()) for p in result.prompts]
    return {
        "per_token": result.value,
        "ci": [result.ci_low, result.ci_high],
        "per_sequence": sum(per_seq) / len(per_seq),
        "forward_per_token": result.forward_mean,
        "reverse_per_token": result.reverse_mean,
        "top1_agreement": result.top1_agreement,
        "n_prompts": result.n_prompts,
        "n_tokens": result.n_tokens,
        "mean_response_tokens": result.n_tokens / result.n_prompts,
    }


def _retention(result: Any) -> dict[str, Any]:
    base = result.base_value
    lo, hi = result.drop_ci
    return {
        "metric": result.metric,
        "base": base,
        "candidate": result.candidate_value,
        "drop": result.drop,  # positive = worse
        "drop_ci": [lo, hi],
        "relative_drop": result.drop / abs(base),
        "relative_drop_ci": [lo / abs(base), hi / abs(base)],
        "n": result.n,
        "p_value": result.p_value,
        "lost": result.lost,
        "gained": result.gained,
    }


def measure(fg: Any, task: Any) -> dict[str, Any]:
    """Everything measured on one candidate; ``task`` is the new task's module (newtask, jsontask)."""
    timings: dict[str, float] = {}

    def timed(label: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[label] = round(time.perf_counter() - t0, 1)
        return out

    new = timed(
        "new_task",
        lambda: fg.retention(task.TASK, metric="acc", include_path=str(task.TASKS_DIR), apply_chat_template=True),
    )
    kl_opts = {"max_new_tokens": common.MAX_NEW_TOKENS, "batch_size": 8}
    fwd = timed("kl_forward", lambda: fg.kl(str(task.KL_PROMPTS), direction="forward", **kl_opts))
    rev = timed("kl_reverse", lambda: fg.kl(str(task.KL_PROMPTS), direction="reverse", **kl_opts))
    drift = timed("drift", lambda: fg.drift())
    probes = {}
    for task, metric in PROBES:
        probes[task] = _retention(timed(task, lambda t=task, m=metric: fg.retention(t, metric=m)))
    rel = [p["relative_drop"] for p in probes.values()]
    # The probes are independent item sets: the variance of their mean is the sum of their variances
    # / 16, each read off its paired-bootstrap 95% CI (normal approximation).
    ses = [(p["relative_drop_ci"][1] - p["relative_drop_ci"][0]) / (2 * Z95) for p in probes.values()]
    se = math.sqrt(sum(s * s for s in ses)) / len(ses)
    forgetting = sum(rel) / len(rel)
    return {
        "new_task": _retention(new) | {"accuracy": new.candidate_value, "base_accuracy": new.base_value},
        "kl_forward": _kl(fwd),
        "kl_reverse": _kl(rev),
        "drift": {
            "relative_l2": drift.relative_l2,
            "changed_fraction": drift.changed_fraction,
            "n_params": drift.n_params,
        },
        "probes": probes,
        "forgetting": {
            "mean_relative_drop": forgetting,
            "se": se,
            "ci": [forgetting - Z95 * se, forgetting + Z95 * se],
        },
        "seconds": timings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the base model directory (the one the candidates were trained on)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--force", action="store_true", help="measure again candidates that have results")
    ap.add_argument("--only", action="append", help="measure only these runs (by name, e.g. rl-lr0.0005)")
    ap.add_argument("--reverse", action="store_true", help="last candidate first (a second process can share the work)")
    ap.add_argument("--seed", type=int, action="append", help="training seeds to measure (repeatable; default 0)")
    ap.add_argument("--task", default="arith", choices=sorted(common.TASKS), help="the new task (default arith)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    common.set_threads()
    from pytest_forgetguard.cache import ResultCache
    from pytest_forgetguard.comparison import Forgetguard
    from pytest_forgetguard.models import ModelStore

    cands, results = common.candidates_dir(args.quick), common.results_dir(args.quick)
    results.mkdir(parents=True, exist_ok=True)
    store = ModelStore(device="cpu", dtype="float32", cache_dir=common.FG_CACHE / "models")
    base = store.get(str(Path(args.base).resolve()), role="base")
    cache = ResultCache(common.FG_CACHE, warn=lambda m: print(f"warning: {m}", flush=True))
    todo = [
        (run, step)
        for seed in args.seed or [0]
        for run in common.sweep(args.quick, seed, args.task)
        for step in run.save_at
        if common.selected(run, args.only)
    ]
    for run, step in reversed(todo) if args.reverse else todo:
        name = run.candidate(step)
        out = results / f"{name}.json"
        if out.exists() and not args.force:
            print(f"[{name}] measured, skipping", flush=True)
            continue
        if not (cands / name / "COMPLETE").exists():
            print(f"[{name}] not trained yet, skipping", flush=True)
            continue
        t0 = time.perf_counter()
        cand = store.get(str(cands / name), base=base)
        fg = Forgetguard(base, cand, seed=1234, cache=cache, warn=lambda m: print(f"warning: {m}", flush=True))
        row = {"candidate": name, "task": run.task, "method": run.method, "lr": run.lr, "step": step, "seed": run.seed}
        row |= measure(fg, common.task_module(run.task))
        row["seconds"]["total"] = round(time.perf_counter() - t0, 1)
        meta = json.loads((cands / name / "train_meta.json").read_text())
        row["train_log_tail"] = meta["log"][-5:]
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=1) + "\n")
        tmp.replace(out)
        print(
            f"[{name}] acc {row['new_task']['accuracy']:.2f} (base {row['new_task']['base_accuracy']:.2f}) "
            f"fwdKL {row['kl_forward']['per_token']:.4f} revKL {row['kl_reverse']['per_token']:.4f} "
            f"drift {row['drift']['relative_l2']:.4f} forgetting {row['forgetting']['mean_relative_drop']:+.4f} "
            f"({row['seconds']['total']:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
