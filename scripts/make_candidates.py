"""Build demo/test candidate models derived from a base causal LM.

Usage:
    python scripts/make_candidates.py --base BASE_DIR --out OUT_DIR [--seed 0] [--force]
    python scripts/make_candidates.py --write-data [--data-dir DIR]

The fine-tuned candidates (LoRA adapters trained by SFT and by RL) come from the RL's Razor experiment
(experiments/rl_razor/, which imports the chat-prompt, SFT-batch and adapter-saving helpers below).

Artifacts written into OUT_DIR:
    drifted/     full copy of the base with Gaussian noise (0.02 * std) on every 2-D weight.
    nudged/      full copy of the base with Gaussian noise (0.002 * std) on every 2-D weight.
Each artifact is built in a temp dir, gets a COMPLETE marker, then is renamed into place.
"""

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

HELDOUT_SEED = 424242  # seed for held-out questions (data file + eval); never used for training
DATA_DIR = Path(__file__).resolve().parent.parent / "example_suites" / "data"


def arith_examples(n, seed):
    """Return n seeded arithmetic chat examples: {"messages": [...], "response": "The answer is N."}.

    Questions are additions or subtractions of two 2-digit numbers (subtractions never go negative).
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            q, ans = f"What is {a} + {b}?", a + b
        else:
            a, b = max(a, b), min(a, b)
            q, ans = f"What is {a} - {b}?", a - b
        out.append({"messages": [{"role": "user", "content": q}], "response": f"The answer is {ans}."})
    return out


def write_data(data_dir):
    """Write the held-out arithmetic prompt file (32 lines) into data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "arith_prompts.jsonl"
    with open(path, "w") as f:
        for ex in arith_examples(32, HELDOUT_SEED):
            f.write(json.dumps(ex) + "\n")
    print(f"wrote {path}")


def prompt_ids(tok, messages):
    """Token ids of a chat prompt with the generation prompt (the assistant turn opened)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def train_batch(tok, examples):
    """Right-padded input_ids/attention_mask/labels with the loss only on response tokens."""
    import torch

    rows = []
    for ex in examples:
        p = prompt_ids(tok, ex["messages"])
        r = tok(ex["response"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((p + r, [-100] * len(p) + r))
    width = max(len(ids) for ids, _ in rows)
    pad = tok.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in rows])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
    return ids, mask, labels


def save_adapter(model, out_dir, base_ref):
    """Save a PEFT model's adapter to out_dir with ``base_model_name_or_path`` set to base_ref.

    base_ref None leaves the base unnamed: forgetguard then takes the run's base (an adapter meant to
    be copied to other machines must not carry this machine's absolute path).
    """
    model.save_pretrained(out_dir, safe_serialization=True)
    cfg_path = Path(out_dir) / "adapter_config.json"
    conf = json.loads(cfg_path.read_text())
    if conf.get("base_model_name_or_path") != base_ref:
        conf["base_model_name_or_path"] = base_ref
        cfg_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    (Path(out_dir) / "README.md").unlink(missing_ok=True)  # peft's auto model card; keep only the adapter


def make_noisy_copy(base_dir, out_dir, scale, seed):
    """Save base plus seeded Gaussian noise (std = scale * the matrix's std) on every 2-D weight."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for _, p in model.named_parameters():  # tied weights appear once
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) * (scale * p.std()))
                n += 1
    print(f"[noise {scale}] perturbed {n} matrices", flush=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)


def build(out_root, name, force, fn):
    """Run fn(tmp_dir), mark tmp_dir COMPLETE, then rename it to out_root/name."""
    final = out_root / name
    if (final / "COMPLETE").exists() and not force:
        print(f"[{name}] exists, skipping (use --force to rebuild)")
        return
    print(f"[{name}] building ...", flush=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_root))
    tmp.chmod(0o755)
    try:
        fn(tmp)
        (tmp / "COMPLETE").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[{name}] done in {time.time() - t0:.1f}s -> {final}", flush=True)


def main():
    """Parse arguments and build the requested artifacts."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="base model directory")
    ap.add_argument("--out", help="output directory for the candidates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild artifacts that already exist")
    ap.add_argument("--write-data", action="store_true", help="only write the prompt data files")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where --write-data writes")
    args = ap.parse_args()
    if args.write_data:
        write_data(args.data_dir)
        return
    if not args.base or not args.out:
        ap.error("--base and --out are required (unless --write-data)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build(out, "drifted", args.force, lambda d: make_noisy_copy(args.base, d, 0.02, args.seed))
    build(out, "nudged", args.force, lambda d: make_noisy_copy(args.base, d, 0.002, args.seed))


if __name__ == "__main__":
    main()
