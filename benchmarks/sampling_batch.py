"""Sampling from the base at decode batch 16 (before) and 64 (now): time and token-for-token equality.

    python benchmarks/sampling_batch.py BASE_DIR [--prompts P] [--max-new-tokens 32] [--rounds 2]

The example suite's 64 arithmetic prompts, seed 1234, temperature 1, both batch sizes alternating in
each round, in one process. The samples must be identical (per-prompt generators); only time changes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("--prompts", default=str(Path(__file__).parents[1] / "example_suites/data/arith_kl_prompts.jsonl"))
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from pytest_forgetguard.generation import sample_responses
    from pytest_forgetguard.models import ModelStore
    from pytest_forgetguard.prompts import encode_prompt, load_prompts

    base = ModelStore().get(args.base, role="base")
    base.load()
    prompts = [encode_prompt(base.tokenizer, r) for r in load_prompts(args.prompts)]
    times: dict[int, list[float]] = {16: [], 64: []}
    samples: dict[int, list[list[int]]] = {}
    for _ in range(args.rounds):
        for batch in (16, 64):
            t = time.perf_counter()
            samples[batch] = sample_responses(base, prompts, args.max_new_tokens, seed=1234, batch_size=batch)
            times[batch].append(time.perf_counter() - t)
    tokens = sum(len(s) for s in samples[16])
    for batch, ts in times.items():
        print(f"batch {batch:3d}: median {statistics.median(ts):6.2f} s (range {min(ts):.2f}-{max(ts):.2f})")
    print(f"64 / 16: {statistics.median(times[64]) / statistics.median(times[16]):.2f}; "
          f"{len(prompts)} prompts, {tokens} sampled tokens")  # fmt: skip
    assert samples[16] == samples[64], "the samples differ between batch sizes"
    print("samples identical token for token")


if __name__ == "__main__":
    main()
