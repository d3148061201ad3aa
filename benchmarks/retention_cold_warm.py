"""Retention cost: forgetguard cold (empty cache) and warm (base cached) vs lm-eval run directly.

    python benchmarks/retention_cold_warm.py --base BASE_DIR --candidate CAND_DIR [--tasks fg_capitals,...]

All three modes run in this process with both models loaded once; the "direct" mode is what a team
would do without forgetguard: ``simple_evaluate`` on the base and on the candidate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--tasks", default="fg_capitals,fg_elements,fg_code_ppl,fg_prose_ppl")
    args = ap.parse_args()
    tasks = args.tasks.split(",")

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from pytest_forgetguard.cache import ResultCache
    from pytest_forgetguard.comparison import Forgetguard
    from pytest_forgetguard.lmeval import PROBES_DIR
    from pytest_forgetguard.models import ModelStore

    store = ModelStore()
    base = store.get(args.base, role="base")
    cand = store.get(args.candidate, base=base)
    base.load()
    cand.load()
    timings = {}

    cwd = os.getcwd()
    os.chdir(PROBES_DIR)  # the probes' data files are relative to their YAMLs
    tm = TaskManager(include_path=str(PROBES_DIR), include_defaults=False)
    start = time.perf_counter()
    for handle in (base, cand):
        lm = HFLM(pretrained=handle.raw_model, tokenizer=handle.tokenizer, batch_size=8, device="cpu")
        simple_evaluate(model=lm, tasks=tasks, task_manager=tm, bootstrap_iters=0)
    timings["lm-eval directly on both models"] = time.perf_counter() - start
    os.chdir(cwd)

    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("forgetguard, cold cache", "forgetguard, warm cache"):
            cache = ResultCache(Path(tmp))  # a new object: nothing carried in memory between modes
            fg = Forgetguard(base, cand, cache=cache, warn=lambda m: None)
            start = time.perf_counter()
            for task in tasks:
                fg.retention(task)
            timings[mode] = time.perf_counter() - start
            print(f"{mode}: cache hits {cache.hits}, misses {cache.misses}", flush=True)

    direct = timings["lm-eval directly on both models"]
    for mode, seconds in timings.items():
        print(f"{mode:34s} {seconds:7.1f} s  {seconds / direct:.2f}x direct")
    print(f"warm / cold: {timings['forgetguard, warm cache'] / timings['forgetguard, cold cache']:.2f}")


if __name__ == "__main__":
    main()
