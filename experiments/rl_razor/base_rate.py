"""How often does the base earn the reward? The measurement behind the choice of task.

    python experiments/rl_razor/base_rate.py --base BASE_DIR [--task json] [--prompts 48] [--samples 4]

For each prompt variant, on the first --prompts held-out problems: the greedy success rate and the
success rate of --samples samples per prompt at temperature 1 (what on-policy RL sees), with the
task's reward (tasks/rlr_reward.py; a sample must also end within 32 tokens), and how often samples
end at all. Variants, arith: the chosen task; the same without the instruction; two-digit operands
(the demo's arithmetic). json: the chosen task; the same object with two keys (name and city).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import jsontask  # noqa: E402
import newtask  # noqa: E402


def json_variants(n: int) -> dict[str, list[dict]]:
    chosen, _ = jsontask.split()
    chosen = chosen[:n]
    two = [
        {
            **d,
            "prompt": d["prompt"]
            .replace("Which city is mentioned? ", "")
            .replace('{"city": "..."}', '{"name": "...", "city": "..."}'),
            "two_keys": True,
        }
        for d in chosen
    ]
    return {"chosen: {'city': ...}": chosen, "two keys: {'name': ..., 'city': ...}": two}


def json_reward(text: str, doc: dict) -> float:
    """The chosen task's reward; for the two-key variant the same rule with both keys."""
    if not doc.get("two_keys"):
        return jsontask.load_reward().reward(text, doc)
    import json
    import re

    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        obj = json.loads(body) if 0 < len(body) <= 100 else None
    except ValueError:
        obj = None
    want = {"name": doc["name"], "city": doc["city"]}
    return float(
        isinstance(obj, dict)
        and list(obj) == list(want)
        and all(isinstance(obj[k], str) and obj[k].strip().lower() == v.lower() for k, v in want.items())
    )


def variants(n: int) -> dict[str, list[dict]]:
    heldout, _ = newtask.split()
    chosen = heldout[:n]
    plain = [{**d, "prompt": d["prompt"].replace(" " + newtask.INSTRUCTION, "")} for d in chosen]
    rng = random.Random(7)
    two = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-")
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
        two.append(newtask.problem(a, b, op))
    return {
        "chosen: 0..12, 'Answer with just the number.'": chosen,
        "0..12, no instruction": plain,
        "10..99, 'Answer with just the number.'": two,
    }


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--task", default="arith", choices=sorted(common.TASKS))
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    common.set_threads()
    reward = newtask.load_reward().reward if args.task == "arith" else json_reward
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    for name, docs in (variants if args.task == "arith" else json_variants)(args.prompts).items():
        t0 = time.time()
        prompts = [common.make_candidates.prompt_ids(tok, common.task_module(args.task).messages(d)) for d in docs]
        ids, mask = common.left_pad(prompts, tok.pad_token_id)
        with torch.no_grad():
            greedy = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=common.MAX_NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        texts = tok.batch_decode(greedy[:, ids.shape[1] :], skip_special_tokens=True)
        g = sum(reward(t, d) for t, d in zip(texts, docs)) / len(docs)
        rolls = common.sample(model, tok, prompts, args.samples, common.MAX_NEW_TOKENS, gen)
        s = [reward(tok.decode(r.response), docs[i // args.samples]) if r.ended else 0.0 for i, r in enumerate(rolls)]
        ended = sum(r.ended for r in rolls) / len(rolls)
        print(
            f"{name}: greedy {g:.2f}, sampled (T=1) {sum(s) / len(s):.2f} of {len(s)}, samples ending within "
            f"{common.MAX_NEW_TOKENS} tokens {ended:.2f} ({time.time() - t0:.0f}s)",
            flush=True,
        )
        for i in range(3):
            print(
                f"    {docs[i]['prompt']!r} greedy: {texts[i]!r}; sampled: {tok.decode(rolls[i * args.samples].response)!r}"
            )


if __name__ == "__main__":
    main()
