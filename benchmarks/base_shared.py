"""The base's KL pass computed once: N candidates with and without shared base states, and a warm rerun.

    python benchmarks/base_shared.py --base BASE_DIR --candidate C1 --candidate C2 ... [--prompts P] [--rounds 2]

All arms run in this process on the same models (loaded once) and the same teacher-forced sequences
(the prompts file's reference responses), alternating arm by arm in each round, with one intra-op
thread (TORCH_THREADS to change) so that a busy second core disturbs the ratios less:

- unshared: every candidate's KL check runs the base too (2N model passes);
- shared: one in-memory BaseStates for the N checks (N + 1 passes);
- warm rerun: one candidate, the base's states read from a disk cache written by an earlier run
  (1 pass), against the same candidate cold (2 passes).

Prints seconds per arm and the ratios; the values of every arm are compared (they must agree to 1e-6).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--candidate", action="append", required=True)
    ap.add_argument("--prompts", default=str(Path(__file__).parents[1] / "example_suites/data/arith_kl_prompts.jsonl"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    from pytest_forgetguard.base_states import BaseStates
    from pytest_forgetguard.cache import ResultCache
    from pytest_forgetguard.kl import TokenSequence, teacher_forced_kl
    from pytest_forgetguard.models import ModelStore
    from pytest_forgetguard.prompts import encode_prompt, encode_response, load_prompts

    store = ModelStore()
    base = store.get(args.base, role="base")
    cands = [store.get(c, base=base) for c in args.candidate]
    for h in (base, *cands):
        h.load()
    tok = base.tokenizer
    recs = load_prompts(args.prompts)
    seqs = [TokenSequence(i, encode_prompt(tok, r), encode_response(tok, r)) for i, r in enumerate(recs)]

    def kl_values(results):
        return np.concatenate([np.concatenate([p.forward for p in r.prompts]) for r in results])

    times: dict[str, list[float]] = {"unshared": [], "shared": [], "cold one": [], "warm one": []}
    values: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        disk = ResultCache(Path(tmp))
        teacher_forced_kl(base, cands[0], seqs, base_states=BaseStates(disk))  # the earlier run that wrote it
        for _ in range(args.rounds):
            t = time.perf_counter()
            res = [teacher_forced_kl(base, c, seqs) for c in cands]
            times["unshared"].append(time.perf_counter() - t)
            values["unshared"] = kl_values(res)
            t = time.perf_counter()
            states = BaseStates(ResultCache(None))
            res = [teacher_forced_kl(base, c, seqs, base_states=states) for c in cands]
            times["shared"].append(time.perf_counter() - t)
            values["shared"] = kl_values(res)
            t = time.perf_counter()
            res = [teacher_forced_kl(base, cands[0], seqs)]
            times["cold one"].append(time.perf_counter() - t)
            values["cold one"] = kl_values(res)
            t = time.perf_counter()
            res = [teacher_forced_kl(base, cands[0], seqs, base_states=BaseStates(ResultCache(Path(tmp))))]
            times["warm one"].append(time.perf_counter() - t)
            values["warm one"] = kl_values(res)
    n = len(cands)
    tokens = sum(len(s.response_ids) for s in seqs)
    print(f"{len(seqs)} sequences, {tokens} response tokens, {n} candidates, {args.rounds} rounds, "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    for arm, ts in times.items():
        print(f"{arm:10s} median {statistics.median(ts):7.2f} s  (range {min(ts):.2f}-{max(ts):.2f})")
    shared, unshared = statistics.median(times["shared"]), statistics.median(times["unshared"])
    warm, cold = statistics.median(times["warm one"]), statistics.median(times["cold one"])
    print(f"shared / unshared: {shared / unshared:.3f}  (model passes {n + 1} / {2 * n} = {(n + 1) / (2 * n):.3f})")
    print(f"warm / cold (one candidate): {warm / cold:.3f}  (model passes 1 / 2 = 0.500)")
    np.testing.assert_allclose(values["shared"], values["unshared"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(values["warm one"], values["cold one"], rtol=1e-6, atol=1e-9)
    print("values: every arm agrees to 1e-6")


if __name__ == "__main__":
    main()
