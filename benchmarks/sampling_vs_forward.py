"""Sampling from the base against one plain forward pass over the same final sequences, with a profile.

    python benchmarks/sampling_vs_forward.py BASE_DIR [--max-new-tokens 32 128] [--rounds 2]

For each response length: forgetguard's ``sample_responses`` (seed 1234, temperature 1, the decode
batch ``decode_batch_size`` picks, as a KL check samples) on the example suite's 64 arithmetic
prompts, then one forward pass of the same model over the sequences it produced (prompt + response,
micro-batch 16, right-padded, full logits computed and discarded: the floor the KL benchmarks use),
alternating in each round, in one process. The ratio sampling / forward is the issue's target
(<= 1.5x). The profile splits the sampling time into the prefill calls, the decode-step calls, the
per-row draws (softmax, multinomial) and the rest, and counts the decode row-steps spent on rows
that had already finished (their tokens are discarded).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def forward_pass(handle: Any, seqs: list[list[int]], batch: int = 16) -> None:
    import torch

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with handle.active() as model, torch.no_grad():
        for start in range(0, len(order), batch):
            rows = [seqs[i] for i in order[start : start + batch]]
            width = max(map(len, rows))
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, s in enumerate(rows):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            model(input_ids=ids, attention_mask=mask).logits.sum()  # logits computed, then discarded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("--prompts", default=str(Path(__file__).parents[1] / "example_suites/data/arith_kl_prompts.jsonl"))
    ap.add_argument("--max-new-tokens", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from pytest_forgetguard import generation
    from pytest_forgetguard.models import ModelStore
    from pytest_forgetguard.prompts import encode_prompt, load_prompts

    base = ModelStore().get(args.base, role="base")
    base.load()
    prompts = [encode_prompt(base.tokenizer, r) for r in load_prompts(args.prompts)]

    # The profile: model calls timed by hooks on the whole model, draws by wrapping the sampler.
    prof: dict[str, float] = defaultdict(float)
    state: dict[str, Any] = {}
    model = base.raw_model

    def pre(module: Any, a: Any, kw: Any) -> None:
        state["t"], state["prefill"] = time.perf_counter(), kw["input_ids"].shape[1] > 1

    def post(module: Any, a: Any, kw: Any, out: Any) -> None:
        prof["prefill calls" if state["prefill"] else "decode-step calls"] += time.perf_counter() - state["t"]
        if not state["prefill"]:
            prof["_decode rows"] += kw["input_ids"].shape[0]

    draw = generation._RowSampler.__call__

    def timed_draw(self: Any, logits: Any) -> Any:
        t = time.perf_counter()
        out = draw(self, logits)
        prof["per-row draws"] += time.perf_counter() - t
        return out

    generation._RowSampler.__call__ = timed_draw  # type: ignore[method-assign]
    h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.register_forward_hook(post, with_kwargs=True)

    for new in args.max_new_tokens:
        batch = generation.decode_batch_size(base, prompts, new, at_least=16)
        times: dict[str, list[float]] = {"sampling": [], "forward": []}
        for _ in range(args.rounds):
            prof.clear()
            h1.remove(), h2.remove()
            h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
            h2 = model.register_forward_hook(post, with_kwargs=True)
            t = time.perf_counter()
            responses = generation.sample_responses(base, prompts, new, seed=1234, batch_size=batch)
            times["sampling"].append(time.perf_counter() - t)
            profile = dict(prof)
            h1.remove(), h2.remove()
            seqs = [list(p) + r for p, r in zip(prompts, responses)]
            t = time.perf_counter()
            forward_pass(base, seqs)
            times["forward"].append(time.perf_counter() - t)
        total = statistics.median(times["sampling"])
        fwd = statistics.median(times["forward"])
        tokens = sum(map(len, responses))
        longest = max(map(len, responses))
        # Row-steps a decode batch ran (rows x steps) against the tokens kept: the rest were finished rows.
        useful = tokens - len(prompts)  # the first token of each response comes from the prefill call
        rows = profile.pop("_decode rows", 0)
        print(f"\n{len(prompts)} prompts, max {new} new tokens, decode batch {batch}: {tokens} tokens sampled "
              f"(longest {longest}); rounds {args.rounds}")  # fmt: skip
        print(f"  sampling {total:6.2f} s (range {min(times['sampling']):.2f}-{max(times['sampling']):.2f})")
        print(f"  forward  {fwd:6.2f} s (range {min(times['forward']):.2f}-{max(times['forward']):.2f})")
        print(f"  sampling / forward: {total / fwd:.2f}")
        last = times["sampling"][-1]
        accounted = sum(profile.values())
        for k, v in sorted(profile.items(), key=lambda kv: -kv[1]):
            print(f"  profile (last round): {k:18s} {v:6.2f} s ({v / last:.0%})")
        print(f"  profile (last round): {'other':18s} {last - accounted:6.2f} s ({(last - accounted) / last:.0%})")
        print(
            f"  decode row-steps {rows}, of which for finished rows {rows - useful} ({(rows - useful) / max(rows, 1):.0%})"
        )


if __name__ == "__main__":
    main()
