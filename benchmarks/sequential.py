"""Retention that stops when the answer is known: items and wall time against a full evaluation.

    python benchmarks/sequential.py --base BASE_DIR [--out DIR] [--noise 0.002,0.03,0.08]

On the real model (SmolLM2-135M-Instruct, float32), for candidates made from it by Gaussian noise on every
2-D weight (scale x each weight's std: near-identical, moderate, clearly damaged), and for three checks:

- ``facts``: the shipped probes fg_capitals + fg_elements pooled (302 four-way questions, acc,
  max_drop 0.10 — the example suite's check);
- ``code``: the shipped fg_code_ppl probe (100 documents, bits per byte, max_drop_relative 0.03);
- ``arith``: a 1,200-item four-way arithmetic task written by this script (acc, max_drop 0.05);
- ``copy``: a 1,200-item four-way task the model does well (name the k-th of three words just seen),
  written by this script (acc, max_drop 0.05): where damage shows on a large task,

each candidate is checked twice in this process, both models loaded once and the base's results cached
(as in CI): with early stopping (the default) and with every item (``stop_early=False``, the full
evaluation). Prints per check and candidate: the items compared, the looks, wall time, both verdicts,
and the ratios; then the median ratio over the candidates and checks. Finally a simulation of the
stopping rule at the boundary (true drop = allowance): the whole procedure's false pass rate.

Resumable: each (check, candidate, mode) result is kept in OUT/sequential.jsonl and skipped when rerun.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

CHECKS = {
    "facts": {"task": ["fg_capitals", "fg_elements"], "metric": "acc", "max_drop": 0.10},
    "code": {"task": "fg_code_ppl", "metric": "bits_per_byte", "max_drop_relative": 0.03},
    "arith": {"task": "fg_arith1200", "metric": "acc", "max_drop": 0.05, "include_path": "{tasks}"},
    "copy": {"task": "fg_copy1200", "metric": "acc", "max_drop": 0.05, "include_path": "{tasks}"},
}
WORDS = ("apple river stone cloud table garden window pencil silver forest candle bridge mirror rocket "
         "lemon castle violin harbor meadow basket tiger falcon copper marble anchor").split()  # fmt: skip


def write_arith_task(folder: Path, n: int = 1200, seed: int = 7) -> Path:
    """A four-way multiple-choice arithmetic task of ``n`` items (two-digit sums and differences)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(folder / "arith1200.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(n):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            op = rng.choice("+-")
            right = a + b if op == "+" else a - b
            wrong = {right + d for d in (-10, -1, 1, 10, 2, -2)} - {right}
            choices = [right, *rng.sample(sorted(wrong), 3)]
            rng.shuffle(choices)
            fh.write(json.dumps({"question": f"{a} {op} {b} =", "choices": [str(c) for c in choices],
                                 "label": choices.index(right)}) + "\n")  # fmt: skip
    (folder / "arith1200.yaml").write_text(
        "task: fg_arith1200\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: arith1200.jsonl\n"
        'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "Question: {{question}}\\nAnswer:"\n'
        "doc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\nmetadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return folder


def write_copy_task(folder: Path, n: int = 1200, seed: int = 8) -> None:
    """A four-way task of ``n`` items a small model does well (repeat a word seen in the prompt), so that
    damage shows: "Words: w1 w2 w3. The second word was:" with the three words and one other as choices."""
    rng = random.Random(seed)
    ordinal = ("first", "second", "third")
    with open(folder / "copy1200.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(n):
            words = rng.sample(WORDS, 4)
            k = rng.randrange(3)
            choices = words[:]
            rng.shuffle(choices)
            fh.write(json.dumps({"question": f"Words: {' '.join(words[:3])}. The {ordinal[k]} word was",
                                 "choices": choices, "label": choices.index(words[k])}) + "\n")  # fmt: skip
    text = (folder / "arith1200.yaml").read_text(encoding="utf-8")
    (folder / "copy1200.yaml").write_text(
        text.replace("fg_arith1200", "fg_copy1200").replace("arith1200.jsonl", "copy1200.jsonl")
        .replace('"Question: {{question}}\\nAnswer:"', '"{{question}}"'),
        encoding="utf-8",
    )  # fmt: skip


def noisy_copy(base: Path, out: Path, scale: float, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def simulate(alpha: float = 0.05, reps: int = 4000) -> list[str]:
    """False pass of the whole procedure at the boundary (binary items, looks as the gate places them)."""
    import numpy as np

    from pytest_forgetguard.early_stop import DEFAULT_MIN_ITEMS, GROWTH
    from pytest_forgetguard.evidence.sequential import BET_CAP, SEQUENTIAL_SHARE, crossings, schedule
    from pytest_forgetguard.evidence.verdicts import paired_binary

    rng = np.random.default_rng(0)
    lines = ["| items | allowance | discordance | false pass (whole procedure) | alpha |", "|---|---|---|---|---|"]
    a_seq = alpha * SEQUENTIAL_SHARE
    for n, allowance, disc in ((302, 0.10, 0.3), (1200, 0.05, 0.1), (1200, 0.05, 0.3), (1200, 0.02, 0.05)):
        u = rng.random((reps, n))
        lost, gained = (disc + allowance) / 2, (disc - allowance) / 2
        d = np.where(u < lost, 1.0, np.where(u < lost + gained, -1.0, 0.0))
        looks = schedule(n, DEFAULT_MIN_ITEMS, GROWTH)[:-1]
        p = crossings(allowance - d, BET_CAP / (1 - allowance), a_seq)
        f = crossings(d - allowance, BET_CAP / (1 + allowance), a_seq)
        passes = 0
        for pi, fi, row in zip(p, f, d):
            p_look = next((m for m in looks if pi and m >= pi), None)
            f_look = next((m for m in looks if fi and m >= fi), None)
            if p_look is not None and (f_look is None or p_look <= f_look):
                passes += 1
            elif f_look is None:
                lo, ga = int((row == 1).sum()), int((row == -1).sum())
                passes += paired_binary(lo, ga, n, n, max_drop=allowance, alpha=alpha - a_seq).verdict == "pass"
        lines.append(f"| {n} | {allowance} | {disc} | {passes / reps:.4f} ({reps} runs) | {alpha} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path(".fg-bench-sequential"))
    ap.add_argument("--noise", default="0.002,0.03,0.08")
    ap.add_argument("--checks", default=",".join(CHECKS))
    ap.add_argument("--md", type=Path, default=Path(__file__).with_suffix(".md"), help="where the table goes")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = write_arith_task(args.out / "tasks")
    write_copy_task(tasks)
    log = args.out / "sequential.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[(row["check"], row["candidate"], row["mode"])] = row

    from pytest_forgetguard.cache import ResultCache
    from pytest_forgetguard.comparison import Forgetguard
    from pytest_forgetguard.errors import CapabilityForgotten
    from pytest_forgetguard.lmeval import evaluate
    from pytest_forgetguard.models import ModelStore

    store = ModelStore()
    base = store.get(str(args.base), role="base")
    cache = ResultCache(args.out / "cache")
    for scale in [float(x) for x in args.noise.split(",")]:
        path = noisy_copy(args.base, args.out / f"noise-{scale}", scale)
        cand = store.get(str(path), base=base)
        for check in args.checks.split(","):
            options = {k: (str(tasks) if v == "{tasks}" else v) for k, v in CHECKS[check].items()}
            for mode in ("full", "early"):
                key = (check, f"noise-{scale}", mode)
                if key in done:
                    continue
                names = [options["task"]] if isinstance(options["task"], str) else options["task"]
                # The base's results, cached as the check caches them: the timing is the candidate's alone.
                evaluate(base, names, include_path=options.get("include_path"), cache=cache,
                         settings={"dtype": base.dtype, "device": base.device_class})  # fmt: skip
                fg = Forgetguard(base, cand, cache=cache, warn=lambda m: None, early_stop=mode == "early")
                start = time.perf_counter()
                try:
                    result = fg.assert_retained(name=check, **options)
                except CapabilityForgotten as exc:
                    result = exc.result
                seconds = time.perf_counter() - start
                row = {"check": check, "candidate": f"noise-{scale}", "mode": mode, "seconds": seconds,
                       "n": result.n, "items_total": result.items_total, "looks": result.looks,
                       "verdict": result.verdict_word, "drop": result.drop}  # fmt: skip
                done[key] = row
                with open(log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)

    lines = ["| check | candidate (drop on every item) | every item: items, s, verdict | early stop: items (looks), s, "
             "verdict | items | time |", "|---|---|---|---|---|---|"]  # fmt: skip
    ratios = []
    for (check, cand, mode), row in sorted(done.items()):
        if mode != "full" or (check, cand, "early") not in done:
            continue
        e = done[(check, cand, "early")]
        ri, rt = e["n"] / row["n"], e["seconds"] / row["seconds"]
        ratios.append(rt)
        lines.append(f"| {check} | {cand} ({row['drop']:+.3f}) | {row['n']}, {row['seconds']:.1f}, {row['verdict']} | "
                     f"{e['n']} ({e['looks']}), {e['seconds']:.1f}, {e['verdict']} | {ri:.2f}x | {rt:.2f}x |")  # fmt: skip
    if ratios:
        lines += ["", f"Median time ratio over {len(ratios)} candidate-checks: {statistics.median(ratios):.2f}x.", ""]
    lines += simulate()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md is not None:
        args.md.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
