"""A checkpoint sweep as whole pytest processes: N candidates against the (N + 1)-pass floor.

    python benchmarks/base_sweep.py --base BASE_DIR [--n 1 3 8] [--prompts 32] [--tokens 256] [--rounds 1]

The issue's floors, each a fresh process with one intra-op thread (OMP_NUM_THREADS=1 for every arm):

- gate N: ``pytest --forgetguard --fg-base BASE --fg-candidate C1 ... CN`` on a suite with one
  teacher-forced KL check (``sample_from: dataset``) over ``--prompts`` windows of Python's docs
  (``--tokens`` tokens each, the first half the prompt), no cache, no history: the base's pass is
  computed once and shared by the N checks;
- floor N + 1: the same models loaded with transformers and one plain forward pass of each over the
  same token ids (micro-batch 8 as the check, logits computed and discarded), loading included;
- floor 2N: the same, with the base's pass repeated for every candidate (what the gate did before);
- warm rerun (N = 1): the gate twice with a cache directory; the second run reads the base's final
  hidden states from disk and runs the candidate alone, against the 2-pass floor;
- sampled (``--arms sampled``): one candidate, a cold forward-KL check on responses sampled from the
  base (the example suite's 64 arithmetic chat prompts, ``--max-new-tokens``, no cache), against the
  2-pass floor over the very sequences it samples (computed beforehand, untimed, with forgetguard's
  sampler and the check's seed).

Candidates are full-model copies of the base with seeded noise (relative 1e-3 per tensor), built once
under ``--work``. Prints seconds per arm and the ratios; each gate run's KL values are compared with
the others' (the same candidates give the same numbers in every arm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SUITE = """checks:
  - name: sweep-kl
    kl:
      prompts: sweep.jsonl
      sample_from: dataset
      budget: 1000000
"""


def build(work: Path, base: str, n: int, prompts: int, tokens: int) -> list[Path]:
    """The candidates and the prompt file (kept between runs)."""
    import pydoc_data.topics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    topics = pydoc_data.topics.topics
    ids = tok("\n\n".join(topics[k] for k in sorted(topics)))["input_ids"]
    stride = (len(ids) - tokens) // max(prompts - 1, 1)
    rows = []
    for i in range(prompts):
        w = ids[i * stride : i * stride + tokens]
        rows.append({"prompt": tok.decode(w[: tokens // 2]), "response": tok.decode(w[tokens // 2 :])})
    (work / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "forgetguard_sweep.yaml").write_text(SUITE)
    (work / "pytest.ini").write_text("[pytest]\n")
    out = []
    for k in range(n):
        d = work / f"cand{k}"
        if not (d / "COMPLETE").exists():
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            g = torch.Generator().manual_seed(k)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 1e-3 * p.std())
            model.save_pretrained(d, safe_serialization=True)
            tok.save_pretrained(d)
            (d / "COMPLETE").write_text("")
        out.append(d)
    return out


SAMPLED_SUITE = """checks:
  - name: sampled-kl
    kl:
      prompts: prompts.jsonl
      sample_from: base
      max_new_tokens: {max_new}
      budget: 1000000
"""

# The sequences the sampled check scores, computed the way the check computes them (untimed).
SAMPLE = r"""
import sys, json
from pytest_forgetguard.generation import decode_batch_size, sample_responses
from pytest_forgetguard.models import ModelStore
from pytest_forgetguard.prompts import encode_prompt, load_prompts
from pytest_forgetguard.settings import DEFAULT_SEED
base, jsonl, new, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
h = ModelStore().get(base, role="base")
prompts = [encode_prompt(h.tokenizer, r) for r in load_prompts(jsonl)]
resp = sample_responses(h, prompts, new, seed=DEFAULT_SEED, batch_size=decode_batch_size(h, prompts, new, at_least=8))
json.dump([p + r[:-1] for p, r in zip(prompts, resp)], open(out, "w"))
"""

FLOOR = r"""
import sys, json, torch
from transformers import AutoModelForCausalLM
from pytest_forgetguard.models import ModelStore
from pytest_forgetguard.prompts import encode_prompt, encode_response, load_prompts
base, cands, repeat_base, jsonl = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "1", sys.argv[4]
if jsonl.endswith(".ids.json"):
    seqs = json.load(open(jsonl))
else:
    tok = ModelStore().get(base, role="base").tokenizer
    seqs = []
    for r in load_prompts(jsonl):
        p = encode_prompt(tok, r)
        seqs.append(p + encode_response(tok, r)[:-1])
seqs.sort(key=len)
models = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval() for m in [base] + cands]
def passes(model):
    with torch.no_grad():
        for s in range(0, len(seqs), 8):
            part = seqs[s : s + 8]
            w = max(map(len, part))
            ids = torch.zeros((len(part), w), dtype=torch.long); mask = torch.zeros_like(ids)
            for i, x in enumerate(part):
                ids[i, : len(x)] = torch.tensor(x); mask[i, : len(x)] = 1
            model(input_ids=ids, attention_mask=mask, use_cache=False).logits
for c in models[1:]:
    passes(c)
    if repeat_base:
        passes(models[0])
if not repeat_base:
    passes(models[0])
"""


PEAK: dict[str, list[float]] = {}  # arm -> peak RSS of its process, MiB (GNU time's %M)


def timed(cmd: list[str], cwd: Path, arm: str = "") -> tuple[float, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    rss = cwd / ".peak_rss"
    if arm and shutil.which("time") and Path("/usr/bin/time").exists():
        cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss), *cmd]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if arm and rss.exists():
        PEAK.setdefault(arm, []).append(int(rss.read_text().split()[-1]) / 1024)
        rss.unlink()
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return wall, proc.stdout


def gate(
    work: Path, base: str, cands: list[Path], extra: list[str], report: str, arm: str = ""
) -> tuple[float, list[float]]:
    # The suite file by name: pytest would also collect the sampled arm's suite in its subfolder.
    suite = next(work.glob("forgetguard_*.yaml")).name
    cmd = [sys.executable, "-m", "pytest", suite, "-q", "-p", "no:cacheprovider", "--forgetguard", "--fg-base", base,
           "--fg-device", "cpu", "--fg-no-history", "--fg-report-json", report, *extra]  # fmt: skip
    for c in cands:
        cmd += ["--fg-candidate", str(c)]
    wall, _ = timed(cmd, work, arm)
    checks = json.loads((work / report).read_text())["checks"]
    return wall, [c["value"] for c in checks]


def floor(
    work: Path, base: str, cands: list[Path], repeat_base: bool, seqs: str = "sweep.jsonl", arm: str = ""
) -> float:
    code = [sys.executable, "-c", FLOOR, base, ",".join(map(str, cands)), "1" if repeat_base else "0", seqs]
    return timed(code, work, arm)[0]


def sampled(work: Path, base: str, cand: Path, max_new: int, rounds: int) -> dict[str, list[float]]:
    """A cold forward-KL check on base samples against two plain passes over the sampled sequences."""
    d = work / "sampled"
    d.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).parents[1] / "example_suites/data/arith_kl_prompts.jsonl", d / "prompts.jsonl")
    (d / "forgetguard_sampled.yaml").write_text(SAMPLED_SUITE.format(max_new=max_new))
    (d / "pytest.ini").write_text("[pytest]\n")
    timed([sys.executable, "-c", SAMPLE, base, "prompts.jsonl", str(max_new), "seqs.ids.json"], d)
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        times.setdefault("sampled check, cold", []).append(gate(d, base, [cand], ["--fg-no-cache"], "s.json")[0])
        times.setdefault("floor 2 passes, sampled tokens", []).append(floor(d, base, [cand], False, "seqs.ids.json"))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 3, 8])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", default="/tmp/fg-base-sweep")
    ap.add_argument("--arms", nargs="+", default=["sweep", "sampled"], choices=["sweep", "sampled"])
    ap.add_argument("--max-new-tokens", type=int, default=128, help="the sampled arm's response length")
    ap.add_argument("--no-2n", action="store_true", help="skip the 2N-pass floors (the before)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cands = build(work, args.base, max(args.n), args.prompts, args.tokens)
    if "sampled" in args.arms:
        times = sampled(work, args.base, cands[0], args.max_new_tokens, args.rounds)
        for k, v in times.items():
            print(f"  {k:32s} {statistics.median(v):7.1f} s (range {min(v):.1f}-{max(v):.1f})")
        ratio = statistics.median(times["sampled check, cold"]) / statistics.median(
            times["floor 2 passes, sampled tokens"]
        )
        print(f"  sampled check (64 prompts, {args.max_new_tokens} new tokens) / 2-pass floor: {ratio:.2f}")
    if "sweep" not in args.arms:
        return
    rows: dict[str, list[float]] = {}
    values: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for n in args.n:
            wall, vals = gate(work, args.base, cands[:n], ["--fg-no-cache"], f"gate{n}.json", f"gate {n}")
            rows.setdefault(f"gate {n}", []).append(wall)
            values[f"gate {n}"] = vals
            rows.setdefault(f"floor {n + 1} passes", []).append(
                floor(work, args.base, cands[:n], False, arm=f"floor {n + 1} passes")
            )
            if n > 1 and not args.no_2n:
                rows.setdefault(f"floor {2 * n} passes", []).append(floor(work, args.base, cands[:n], True))
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        cold, v1 = gate(work, args.base, cands[:1], ["--fg-cache-dir", str(cache)], "cold.json")
        warm, v2 = gate(work, args.base, cands[:1], ["--fg-cache-dir", str(cache)], "warm.json")
        rows.setdefault("gate 1, cache cold", []).append(cold)
        rows.setdefault("gate 1, cache warm", []).append(warm)
        values["cold"], values["warm"] = v1, v2
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{args.prompts} sequences x {args.tokens} tokens, rounds {args.rounds}, one thread per process")
    for k, v in rows.items():
        peak = f", peak RSS {statistics.median(PEAK[k]):.0f} MiB" if k in PEAK else ""
        print(f"  {k:24s} {med[k]:7.1f} s (range {min(v):.1f}-{max(v):.1f}){peak}")
    for n in args.n:
        line = f"  N = {n}: gate / (N+1)-pass floor {med[f'gate {n}'] / med[f'floor {n + 1} passes']:.2f}"
        if f"floor {2 * n} passes" in med:
            line += f"; gate / 2N-pass floor {med[f'gate {n}'] / med[f'floor {2 * n} passes']:.2f}"
        print(line)
    print(f"  warm rerun / 2-pass floor {med['gate 1, cache warm'] / med['floor 2 passes']:.2f}; "
          f"warm / cold {med['gate 1, cache warm'] / med['gate 1, cache cold']:.2f}")  # fmt: skip
    ref = values["gate 1"][0]
    for k, v in values.items():
        assert abs(v[0] - ref) <= 1e-6 * abs(ref), (k, v[0], ref)  # candidate 0 measured alike in every arm
    big = max(args.n)
    for n in args.n:
        assert all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip(values[f"gate {n}"], values[f"gate {big}"])), n
    print("KL values agree across arms to 1e-6")


if __name__ == "__main__":
    main()
