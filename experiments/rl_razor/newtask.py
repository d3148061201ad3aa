"""The new task: one-step arithmetic with operands 0..12, in chat form, with a verifiable reward.

    python experiments/rl_razor/newtask.py --write-data   # (re)write tasks/rlr_arith.jsonl and data/

Why this task (measured by base_rate.py, README "Choosing the task"): RL needs a base that
succeeds *sometimes* when it samples at temperature 1, or on-policy sampling never meets a reward.
SmolLM2-135M-Instruct answers "What is 39 + 67?" right ~5% of the time; with one-step problems over
0..12 and the instruction "Answer with just the number." it earns the reward on about a fifth of its
samples (greedy: about half), so there is both a signal for RL and room to learn. Arithmetic does
not overlap the retention probes (capitals, chemical symbols, Python code, Python prose).

The 260 problems (169 sums, 91 non-negative differences) are split once, by a fixed seed, into 100
held-out problems (new-task accuracy, KL prompts) and 160 training problems.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TASK = "rlr_arith"  # the lm-eval task
TASKS_DIR = HERE / "tasks"  # lm-eval include_path: rlr_arith.yaml, its data and its reward
TASK_DATA = TASKS_DIR / "rlr_arith.jsonl"  # held-out problems as lm-eval docs
KL_PROMPTS = HERE / "data" / "kl_prompts.jsonl"  # the first 64 held-out problems as chat prompts
TRAIN_DATA = HERE / "data" / "train.jsonl"  # training problems with SFT demonstrations
REWARD_FILE = TASKS_DIR / "rlr_reward.py"
MAX_OPERAND = 12
INSTRUCTION = "Answer with just the number."
SPLIT_SEED = 20260906  # fixed: the split must never change between runs
N_HELDOUT = 100
N_KL_PROMPTS = 64


def all_problems() -> list[dict[str, Any]]:
    """Every problem: a + b and a - b (a >= b) for a, b in 0..MAX_OPERAND, in a fixed order."""
    out = []
    for a in range(MAX_OPERAND + 1):
        for b in range(MAX_OPERAND + 1):
            out.append(problem(a, b, "+"))
            if a >= b:
                out.append(problem(a, b, "-"))
    return out


def problem(a: int, b: int, op: str) -> dict[str, Any]:
    """One problem as a doc: the user prompt, the operands and the answer (what the reward needs)."""
    answer = a + b if op == "+" else a - b
    question = f"What is {a} {op} {b}?"
    return {"id": f"{a}{op}{b}", "prompt": f"{question} {INSTRUCTION}", "a": a, "b": b, "op": op, "answer": answer}


def split() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(held-out, train): a seeded shuffle of all problems, the first N_HELDOUT held out."""
    problems = all_problems()
    random.Random(SPLIT_SEED).shuffle(problems)
    return problems[:N_HELDOUT], problems[N_HELDOUT:]


def messages(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The chat the model sees (the tokenizer's template adds SmolLM2's default system prompt)."""
    return [{"role": "user", "content": doc["prompt"]}]


def demonstration(doc: dict[str, Any]) -> str:
    """The SFT target: a correct answer in a fixed style that is *not* the base's own style.

    The base, when right, mostly writes "7 + 8 = 15"; SFT data written by someone else (as in RL's
    Razor, where SFT learns from a dataset, RL from the model's own samples) has its own phrasing.
    """
    return f"The answer is {doc['answer']}."


def write_data(task: Any = None) -> None:
    """Write a task's lm-eval docs, KL prompts and training set (deterministic); ``task``: its module
    (default this one; jsontask.py writes its files through this too)."""
    t = task or sys.modules[__name__]
    heldout, train = t.split()
    t.KL_PROMPTS.parent.mkdir(parents=True, exist_ok=True)
    with open(t.TASK_DATA, "w") as f:
        for doc in heldout:
            f.write(json.dumps(doc) + "\n")
    with open(t.KL_PROMPTS, "w") as f:
        for doc in heldout[: t.N_KL_PROMPTS]:
            # response: the demonstration, for teacher-forced KL (sample_from: dataset) if wanted
            f.write(json.dumps({"messages": t.messages(doc), "response": t.demonstration(doc)}) + "\n")
    with open(t.TRAIN_DATA, "w") as f:
        for doc in train:
            f.write(json.dumps({**doc, "response": t.demonstration(doc)}) + "\n")
    print(f"wrote {t.TASK_DATA} ({len(heldout)}), {t.KL_PROMPTS} ({t.N_KL_PROMPTS}), {t.TRAIN_DATA} ({len(train)})")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_reward(path: Path = REWARD_FILE) -> Any:
    """A reward file (default tasks/rlr_reward.py), imported by path as lm-eval does: the same code
    scores training and evaluation."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-data", action="store_true", help="(re)write the task's data files")
    args = ap.parse_args()
    if args.write_data:
        write_data()
    else:
        heldout, train = split()
        print(f"{len(heldout)} held-out, {len(train)} train; e.g. {heldout[0]['prompt']!r} -> {heldout[0]['answer']}")


if __name__ == "__main__":
    main()
