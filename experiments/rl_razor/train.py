"""Train the candidates of the sweep (common.SWEEP): SFT on demonstrations and on-policy RL, as LoRA adapters.

    python experiments/rl_razor/train.py --base BASE_DIR [--quick] [--only sft-lr0.0005] [--seed 1] [--task json] [--force]

Each run saves a candidate at each of its ``save_at`` step counts under work/candidates/<run>-s<step>/ (--quick: work/quick/candidates/)
(adapter_config.json, adapter_model.safetensors, train_meta.json with the training log, COMPLETE).
A run whose candidates are all COMPLETE is skipped (with --unmeasured-only, also one whose candidates
all have results/*.json: a fresh clone reruns the analysis without retraining what was measured); an
interrupted run starts again from step 0 and, being seeded, reproduces the same candidates. Everything
runs on one CPU thread (common.set_threads).

SFT: AdamW at a constant learning rate, batches of 8 (prompt, demonstration) pairs from the 160
training problems, cross-entropy on the response tokens only ("The answer is 15." + EOS).

RL: on-policy policy gradient in the GRPO style, *without* a KL penalty or reference model (RL's
Razor trains without one, to show that RL's low KL is not bought by a penalty). Each step: 8 training
problems, 8 samples each from the current policy at temperature 1 (at most 32 tokens); reward 1 when
the sample ends within the limit and tasks/rlr_reward.py accepts it; advantage = reward minus the
mean reward of its group (Dr. GRPO: no division by the group's std, which inflates near-uniform
groups); one gradient step on -sum(A * log pi(response)) / (samples x 32 tokens), so the data are
always from the policy being updated (no importance ratio or clipping needed). Groups whose samples
all got the same reward carry no signal and are not even forwarded.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


class Watch(Protocol):
    """Something that looks at the model while it trains (watch_training.py: forgetguard's callback)."""

    def start(self, model: Any, tok: Any) -> None: ...

    def step(self, step: int) -> None: ...


def _optimizer(model: Any, lr: float) -> Any:
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def _step(model: Any, opt: Any, loss: Any) -> float:
    import torch

    loss.backward()
    # Clipping guards both methods against a rare huge gradient early on; same setting for both.
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad()
    return float(norm)


def _batches(train: list[dict[str, Any]], size: int, seed: int):
    """Endless seeded batches: every epoch a new shuffle of the training problems."""
    rng = random.Random(seed)
    pool: list[dict[str, Any]] = []
    while True:
        if len(pool) < size:
            extra = list(train)
            rng.shuffle(extra)
            pool += extra
        yield pool[:size]
        pool = pool[size:]


def train_sft(run: common.Run, base_dir: str, out: Path | None, watch: Watch | None = None) -> None:
    """Train one SFT run; saves its candidates under ``out`` (None: saves nothing)."""
    task = common.task_module(run.task)
    tok, model = common.load_policy(base_dir, run.seed)
    if watch is not None:
        watch.start(model, tok)
    _, train = task.split()
    batches = _batches(train, run.batch, run.seed)
    opt = _optimizer(model, run.lr)
    model.train()
    log: list[dict[str, Any]] = []
    t0 = time.time()
    for step in range(1, max(run.save_at) + 1):
        docs = next(batches)
        examples = [{"messages": task.messages(d), "response": task.demonstration(d)} for d in docs]
        ids, mask, labels = common.make_candidates.train_batch(tok, examples)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        norm = _step(model, opt, loss)
        log.append(
            {"step": step, "loss": round(loss.item(), 5), "grad_norm": round(norm, 4), "s": round(time.time() - t0, 1)}
        )
        print(f"[{run.name}] step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
        if watch is not None:
            watch.step(step)
        if step in run.save_at and out is not None:
            common.save_candidate(model, run, step, log, out)


def train_rl(run: common.Run, base_dir: str, out: Path | None, watch: Watch | None = None) -> None:
    """Train one RL run; saves its candidates under ``out`` (None: saves nothing)."""
    import torch

    task = common.task_module(run.task)
    reward_fn = task.load_reward().reward
    tok, model = common.load_policy(base_dir, run.seed)
    if watch is not None:
        watch.start(model, tok)
    _, train = task.split()
    batches = _batches(train, run.batch, run.seed)
    gen = torch.Generator().manual_seed(run.seed)
    opt = _optimizer(model, run.lr)
    model.train()  # no dropout in the adapter: train and eval behave the same
    log: list[dict[str, Any]] = []
    t0 = time.time()
    for step in range(1, max(run.save_at) + 1):
        docs = next(batches)
        prompts = [common.make_candidates.prompt_ids(tok, task.messages(d)) for d in docs]
        rolls = common.sample(model, tok, prompts, run.group, common.MAX_NEW_TOKENS, gen)
        rewards = torch.tensor(
            [reward_fn(tok.decode(r.response), docs[i // run.group]) if r.ended else 0.0 for i, r in enumerate(rolls)]
        ).view(len(docs), run.group)
        adv = rewards - rewards.mean(dim=1, keepdim=True)
        # In a group with mixed rewards every sample has a nonzero advantage; the others carry no signal.
        groups = [g for g in range(len(docs)) if rewards[g].min() != rewards[g].max()]
        keep = [g * run.group + j for g in groups for j in range(run.group)]
        norm = 0.0
        if groups:
            # The EOS that ended a sample is part of the action: the policy learns when to stop.
            resp = [rolls[i].response + ([tok.eos_token_id] if rolls[i].ended else []) for i in keep]
            logp, _ = common.response_logprobs(model, tok, [prompts[g] for g in groups], run.group, resp)
            loss = -(adv[groups].flatten()[:, None] * logp).sum() / (len(rolls) * common.MAX_NEW_TOKENS)
            norm = _step(model, opt, loss)
        entry = {
            "step": step,
            "reward": round(rewards.mean().item(), 4),
            "ended": round(sum(r.ended for r in rolls) / len(rolls), 4),
            "mean_len": round(sum(len(r.response) for r in rolls) / len(rolls), 2),
            "trained_samples": len(keep),
            "grad_norm": round(norm, 4),
            "s": round(time.time() - t0, 1),
        }
        log.append(entry)
        print(
            f"[{run.name}] step {step} reward {entry['reward']:.3f} ended {entry['ended']:.2f} "
            f"len {entry['mean_len']:.1f} trained {len(keep)} ({entry['s']:.0f}s)",
            flush=True,
        )
        if watch is not None:
            watch.step(step)
        if step in run.save_at and out is not None:
            common.save_candidate(model, run, step, log, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the base model directory (safetensors)")
    ap.add_argument("--quick", action="store_true", help="the smoke sweep (common.QUICK_SWEEP)")
    ap.add_argument("--only", action="append", help="run only these runs (by name, e.g. rl-lr0.0005)")
    ap.add_argument("--force", action="store_true", help="retrain runs whose candidates exist")
    ap.add_argument("--unmeasured-only", action="store_true",
                    help="skip runs whose candidates are all measured (results/*.json), even if not on disk")  # fmt: skip
    ap.add_argument("--seed", type=int, action="append", help="training seeds (repeatable; default 0)")
    ap.add_argument("--task", default="arith", choices=sorted(common.TASKS), help="the new task (default arith)")
    args = ap.parse_args()
    common.set_threads()
    out = common.candidates_dir(args.quick)
    for run in (r for seed in args.seed or [0] for r in common.sweep(args.quick, seed, args.task)):
        if not common.selected(run, args.only):
            continue
        if common.run_done(run, out) and not args.force:
            print(f"[{run.name}] candidates exist, skipping")
            continue
        if args.unmeasured_only and not args.force and common.run_measured(run, common.results_dir(args.quick)):
            print(f"[{run.name}] candidates measured (results/), skipping")
            continue
        t0 = time.time()
        (train_sft if run.method == "sft" else train_rl)(run, args.base, out)
        print(f"[{run.name}] trained in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
