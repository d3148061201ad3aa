"""KL check cost against its floor: two plain forward passes over the same tokens.

Each measurement runs in its own process so peak memory (max RSS) is its own:

- floor: base and candidate forward passes, micro-batched, logits discarded;
- kl:    forgetguard's teacher-forced KL over the same sequences (both directions);
- naive: full [B, T, V] logits of both models + ``F.kl_div`` per micro-batch (the usual code).

Usage::

    python benchmarks/kl_vs_forward.py --base BASE_DIR --candidate CAND_DIR [--prompts 64] [--tokens 256]

Prints one JSON line per mode and the ratios against the floor.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def sequences(tokenizer, n: int, tokens: int, prompt_len: int = 32):
    """n real-text sequences of ``tokens`` tokens from Python's docs: 32 prompt + the rest response."""
    import pydoc_data.topics

    text = "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    ids = tokenizer(text)["input_ids"]
    out = []
    for i in range(n):
        chunk = ids[i * tokens : (i + 1) * tokens]
        out.append((chunk[:prompt_len], chunk[prompt_len:]))
    return out


def run_mode(mode: str, base: str, cand: str, n: int, tokens: int, batch: int) -> dict:
    import torch

    from pytest_forgetguard.kl import TokenSequence, teacher_forced_kl
    from pytest_forgetguard.models import ModelStore

    torch.manual_seed(0)
    store = ModelStore(device="cpu", dtype="float32")
    b = store.get(base, role="base")
    c = store.get(cand, base=b)
    b.load()
    c.load()
    seqs = sequences(b.tokenizer, n, tokens)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        if mode == "kl":
            ts = [TokenSequence(i, p, r) for i, (p, r) in enumerate(seqs)]
            value = teacher_forced_kl(b, c, ts, batch_size=batch).value
        else:
            value = 0.0
            for s in range(0, n, batch):
                ids = torch.tensor([p + r[:-1] for p, r in seqs[s : s + batch]])
                if mode == "floor":
                    for h in (b, c):
                        with h.active() as m:
                            m(input_ids=ids, use_cache=False).logits  # noqa: B018 (discarded)
                else:  # naive
                    with b.active() as m:
                        lb = m(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
                    with c.active() as m:
                        lc = m(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
                    kl = torch.nn.functional.kl_div(lc, lb, log_target=True, reduction="none").sum(-1)
                    value += float(kl[:, 31:].sum())
            if mode == "naive":
                value /= n * (tokens - 32)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(peak),
        "loaded_rss_mib": round(rss_loaded),
        "value": value,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--modes", default="floor,kl,naive")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args.base, args.candidate, args.prompts, args.tokens, args.batch)))
        return
    results = {}
    for mode in args.modes.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--base",
            args.base,
            "--candidate",
            args.candidate,
            "--prompts",
            str(args.prompts),
            "--tokens",
            str(args.tokens),
            "--batch",
            str(args.batch),
            "--child",
            mode,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(out)
        print(out, flush=True)
    floor = results.get("floor")
    if floor:
        for mode, r in results.items():
            if mode != "floor":
                print(
                    f"{mode}: {r['wall_s'] / floor['wall_s']:.2f}x the floor's time, "
                    f"{r['peak_rss_mib'] / floor['peak_rss_mib']:.2f}x its peak memory"
                )


if __name__ == "__main__":
    main()
