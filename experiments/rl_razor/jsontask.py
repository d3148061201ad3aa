"""The second new task: extract the city a sentence mentions, as JSON in a given shape.

    python experiments/rl_razor/jsontask.py --write-data   # (re)write tasks/rlr_json.jsonl and data/json_*

'Text: "After the wedding, Diego settled in Turin." Which city is mentioned? Reply with JSON only,
in the form {"city": "..."}.' -- the answer is earned by a response that is exactly a JSON object
with the one key ``city`` naming the right city (tasks/rlr_json_reward.py).

Why this one (measured by base_rate.py --task json, README "The second task"): it is a formatting
and extraction task, a different skill from the first task's arithmetic, with a verifiable reward
and nothing in common with the retention probes (the cities are not capitals, and nothing is asked
about them: the answer is in the prompt). On SmolLM2-135M-Instruct, greedy decoding earns the reward
on about three prompts in four, and samples at temperature 1 on about one in eleven (they ramble
past the object, add keys, or invent a city) -- a signal for on-policy RL, and room to learn.
Pilots that were rejected: the same with two keys (name and city; greedy 0.00, sampled 0.02: the
base appends prose after the object), reversing a three-word list (0.00 / 0.00).

The 300 prompts (a seeded draw of name x city x sentence template) are split once into 100 held-out
prompts (new-task accuracy; the first 64 are the KL prompts) and 200 training prompts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import newtask  # noqa: E402  (the first task's data writer and reward loader)

HERE = Path(__file__).resolve().parent
TASK = "rlr_json"  # the lm-eval task
TASKS_DIR = HERE / "tasks"
TASK_DATA = TASKS_DIR / "rlr_json.jsonl"
KL_PROMPTS = HERE / "data" / "json_kl_prompts.jsonl"
TRAIN_DATA = HERE / "data" / "json_train.jsonl"
REWARD_FILE = TASKS_DIR / "rlr_json_reward.py"
SPLIT_SEED = 20261201  # fixed: the split must never change between runs
N_PROBLEMS = 300
N_HELDOUT = 100
N_KL_PROMPTS = 64

NAMES = (
    "Anna", "Omar", "Lena", "Diego", "Priya", "Tom", "Yuki", "Marta", "Samir", "Elena", "Jonas", "Aisha",
    "Carlos", "Nina", "Felix", "Rosa", "Hugo", "Ingrid", "Kofi", "Mei", "Pablo", "Sara", "Viktor", "Zoe",
)  # fmt: skip
# Not capitals (the retention probes ask for capitals), one or two tokens' worth of common names.
CITIES = (
    "Lyon", "Osaka", "Chicago", "Porto", "Munich", "Seville", "Kyoto", "Denver", "Hamburg", "Naples",
    "Toronto", "Glasgow", "Bergen", "Malaga", "Leeds", "Turin", "Marseille", "Busan", "Houston", "Krakow",
    "Geneva", "Valencia", "Seattle", "Antwerp",
)  # fmt: skip
TEMPLATES = (
    "{n} moved to {c} last spring.",
    "Last week {n} flew to {c} for a conference.",
    "{n} has lived in {c} for ten years.",
    "After the wedding, {n} settled in {c}.",
    "{n} took the night train to {c}.",
    "The museum in {c} hired {n} as a guide.",
)


def problem(name: str, city: str, template: str) -> dict[str, Any]:
    """One prompt as a doc: the user prompt, the sentence's name and city (what the reward needs)."""
    text = template.format(n=name, c=city)
    prompt = f'Text: "{text}" Which city is mentioned? Reply with JSON only, in the form {{"city": "..."}}.'
    return {"id": f"{name}-{city}-{TEMPLATES.index(template)}", "prompt": prompt, "name": name, "city": city}


def all_problems() -> list[dict[str, Any]]:
    """N_PROBLEMS distinct (name, city, template) prompts, a seeded draw from all 3,456."""
    triples = [(n, c, t) for n in NAMES for c in CITIES for t in TEMPLATES]
    return [problem(*t) for t in random.Random(SPLIT_SEED).sample(triples, N_PROBLEMS)]


def split() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(held-out, train): the first N_HELDOUT of the seeded draw held out."""
    problems = all_problems()
    return problems[:N_HELDOUT], problems[N_HELDOUT:]


def messages(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The chat the model sees (the tokenizer's template adds SmolLM2's default system prompt)."""
    return [{"role": "user", "content": doc["prompt"]}]


def demonstration(doc: dict[str, Any]) -> str:
    """The SFT target: the right object, pretty-printed -- correct, but not the base's compact style.

    As in the first task, SFT learns from data someone else wrote; RL from the model's own samples.
    """
    return json.dumps({"city": doc["city"]}, indent=2)


def write_data() -> None:
    """Write the lm-eval docs, the KL prompts and the training set (deterministic)."""
    newtask.write_data(sys.modules[__name__])


def load_reward() -> Any:
    """tasks/rlr_json_reward.py, imported by path as lm-eval does (one rule for training and eval)."""
    return newtask.load_reward(REWARD_FILE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-data", action="store_true", help="(re)write the task's data files")
    args = ap.parse_args()
    if args.write_data:
        write_data()
    else:
        heldout, train = split()
        print(f"{len(heldout)} held-out, {len(train)} train; e.g. {heldout[0]['prompt']!r} -> {heldout[0]['city']}")


if __name__ == "__main__":
    main()
