"""The training callback's cost per evaluation, against a training step, with and without the kept base pass.

    python benchmarks/callback_cost.py BASE_DIR

SmolLM2 + a fresh LoRA adapter (the RL's Razor experiment's SFT setup: lr 2e-3, batch 8), one intra-op
thread. Two callbacks watch the same model on the example suite's arith-kl check (64 prompts, base
samples, 32 tokens): one as shipped (the base's pass kept after the first evaluation), one with the
base rerun at every evaluation (the path before). Every 2 of 6 training steps both measure; their
values must agree to 1e-6.
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "rl_razor"))
import common  # noqa: E402
import newtask  # noqa: E402
import torch  # noqa: E402
import train  # noqa: E402

from pytest_forgetguard.integrations.transformers import ForgetguardCallback  # noqa: E402

torch.set_num_threads(1)
base_dir = sys.argv[1]
run = common.Run("sft", 2e-3, (6,))
tok, model = common.load_policy(base_dir, run.seed)
kept = ForgetguardCallback(
    common.REPO / "example_suites/forgetguard_newtask.yaml", checks=["arith-kl"], trajectory=False
)
kept.setup(model, tok)
plain = ForgetguardCallback(
    common.REPO / "example_suites/forgetguard_newtask.yaml", checks=["arith-kl"], trajectory=False
)
plain.setup(model, tok)
plain._fg.base_states = None  # the path before: the base runs at every evaluation
t = time.perf_counter()
kept.measure(0)
first = time.perf_counter() - t
plain._fg.cache = kept._fg.cache  # the same samples, so only the base pass differs
_, data = newtask.split()
batches = train._batches(data, run.batch, run.seed)
opt = train._optimizer(model, run.lr)
model.train()
steps, k, p = [], [], []
for step in range(1, 7):
    t = time.perf_counter()
    docs = next(batches)
    ex = [{"messages": newtask.messages(d), "response": newtask.demonstration(d)} for d in docs]
    ids, mask, labels = common.make_candidates.train_batch(tok, ex)
    train._step(model, opt, model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    steps.append(time.perf_counter() - t)
    if step % 2 == 0:
        t = time.perf_counter()
        a = kept.measure(step)
        k.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = plain.measure(step)
        p.append(time.perf_counter() - t)
        assert abs(a["forgetguard/arith-kl"] - b["forgetguard/arith-kl"]) <= 1e-6 * abs(b["forgetguard/arith-kl"]), (
            a,
            b,
        )
print(f"first evaluation (samples the base): {first:.1f} s")
print(
    f"train step median {statistics.median(steps):.2f} s; evaluation with the base kept {statistics.median(k):.2f} s "
    f"({min(k):.2f}-{max(k):.2f}), base rerun {statistics.median(p):.2f} s ({min(p):.2f}-{max(p):.2f}); "
    f"ratio {statistics.median(k) / statistics.median(p):.2f}; eval/step {statistics.median(k) / statistics.median(steps):.2f}"
)
