"""Shared pieces of the RL's Razor experiment: paths, the sweep, the LoRA setup, sampling, log-probs.

Training helpers that already exist for the demo candidates (chat prompt ids, the SFT batch with the
loss on response tokens only, atomic build-with-COMPLETE-marker, adapter saving) are imported from
scripts/make_candidates.py rather than copied.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import make_candidates  # noqa: E402  (scripts/ is not a package)

from pytest_forgetguard.generation import forward_names  # noqa: E402  (KV-cache argument names)

if TYPE_CHECKING:
    import torch

WORK = Path(os.environ.get("RLR_WORK") or HERE / "work")  # candidates, caches, logs (not committed)
FG_CACHE = WORK / "fg-cache"  # forgetguard's cache (base samples, base lm-eval results); shared by --quick


def candidates_dir(quick: bool) -> Path:
    return WORK / ("quick/candidates" if quick else "candidates")


def results_dir(quick: bool) -> Path:
    """Per-candidate evaluation JSON: committed for the full sweep, scratch for --quick."""
    return WORK / "quick/results" if quick else HERE / "results"


# The adapters are small on purpose (two are committed): rank 8 on the query and value projections
# of all 30 layers, 461k parameters, a 1.8 MB file in float32 -- the original LoRA paper's choice of modules.
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
MAX_NEW_TOKENS = 32  # rollouts, KL samples and lm-eval generations alike


@dataclass(frozen=True)
class Run:
    """One training run; it saves a candidate at every step count in ``save_at``."""

    method: str  # "sft" or "rl"
    lr: float
    save_at: tuple[int, ...]
    seed: int = 0
    batch: int = 8  # SFT: examples per step; RL: prompts per step
    group: int = 8  # RL: samples per prompt (GRPO group)
    task: str = "arith"  # a key of TASKS

    @property
    def config(self) -> str:
        """Task, method and learning rate: what ``--only`` selects, the same for every seed.

        The first task's names carry no task prefix (they predate the second task)."""
        return ("" if self.task == "arith" else f"{self.task}-") + f"{self.method}-lr{self.lr:g}"

    @property
    def name(self) -> str:
        """The run: its config, and its seed when not 0 (seed 0's names predate seeds)."""
        return self.config + (f"-seed{self.seed}" if self.seed else "")

    def candidate(self, step: int) -> str:
        return f"{self.name}-s{step}"


# The sweep: 10 candidates, 1-1.5 hours of one CPU core to train and measure. SFT: three learning
# rates, two checkpoints each. RL: GRPO-style policy gradient without a KL penalty (as in RL's Razor),
# two learning rates, two checkpoints each (an RL step samples 64 responses: ~20 s against ~2.5 s for
# an SFT step). Chosen so that the two methods overlap in new-task accuracy: the paper compares them
# at equal accuracy.
SWEEP = (
    Run("sft", 1e-4, (12, 40)),
    Run("sft", 5e-4, (12, 40)),
    Run("sft", 2e-3, (12, 40)),
    Run("rl", 5e-4, (10, 30)),
    Run("rl", 2e-3, (10, 30)),
)
# The demo pair committed under adapters/: an SFT and an RL candidate at equal new-task accuracy (0.77
# on the 100 held-out problems; base 0.58), the paper's comparison point -- the only pair of the sweep
# at exactly equal accuracy. analyze.py --copy-adapters copies these two and checks their accuracies
# are within 0.05.
DEMO = {"sft": "sft-lr0.002-s12", "rl": "rl-lr0.0005-s10"}
# --quick: one tiny run of each method, to check the whole pipeline in a few minutes.
QUICK_SWEEP = (Run("sft", 5e-4, (3,)), Run("rl", 5e-4, (2,), batch=2, group=4))


def sweep(quick: bool, seed: int = 0, task: str = "arith") -> tuple[Run, ...]:
    """The sweep's runs on ``task`` with training seed ``seed`` (LoRA init, batch order, RL samples)."""
    return tuple(replace(r, seed=seed, task=task) for r in (QUICK_SWEEP if quick else SWEEP))


# The new tasks, by key: the module that defines each (problems, split, prompts, demonstrations,
# reward, data files, lm-eval task name). Both sweeps use the same schedule (SWEEP).
TASKS = {"arith": "newtask", "json": "jsontask"}


def read_result(path: Path) -> dict[str, Any]:
    """One results/*.json, refused with its name when it is not what evaluate.py writes: unreadable
    (an interrupted copy, an empty file) or holding a non-finite measurement (a NaN would drop out of a
    fit silently)."""
    try:
        row = json.loads(Path(path).read_text(encoding="utf-8"))
        numbers = {
            "kl_forward": row["kl_forward"]["per_token"],
            "kl_reverse": row["kl_reverse"]["per_token"],
            "drift": row["drift"]["relative_l2"],
            **{f"{probe} drop": p["drop"] for probe, p in row["probes"].items()},
        }
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a measurement evaluate.py wrote ({type(e).__name__}: {e}); "
                         "delete it and run evaluate.py again") from None  # fmt: skip
    bad = [k for k, v in numbers.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
    if bad:
        raise SystemExit(f"{path}: non-finite measurement ({', '.join(bad)}); delete it and run evaluate.py again")
    return row


def measured(quick: bool = False, task: str = "arith", seeds: tuple[int, ...] | None = (0,)) -> list[Path]:
    """The result files of ``task``'s candidates trained with ``seeds`` (None: every seed), by name.

    Rows measured before the second task and the seeds carry neither field: the first task, seed 0.
    """
    out = []
    for path in sorted(results_dir(quick).glob("*-s*.json")):
        row = read_result(path)
        if row.get("task", "arith") == task and (seeds is None or row.get("seed", 0) in seeds):
            out.append(path)
    return out


def task_module(task: str) -> Any:
    """The module of ``task`` (newtask.py or jsontask.py)."""
    import importlib

    if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[task])


def selected(run: Run, only: list[str] | None) -> bool:
    """``--only`` names a config (every seed) or one seeded run."""
    return not only or run.config in only or run.name in only


def set_threads() -> None:
    """One intra-op thread: on a shared 2-core machine two threads fight each other and other jobs
    (measured: a 64 x 48-token forward pass took 5.5 s on one thread, 13 s on two under load)."""
    import torch

    torch.set_num_threads(int(os.environ.get("RLR_THREADS", "1")))


def load_policy(base_dir: str | Path, seed: int) -> tuple[Any, Any]:
    """(tokenizer, PEFT model with a fresh LoRA adapter), seeded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return tok, get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))


def save_candidate(model: Any, run: Run, step: int, log: list[dict[str, Any]], out: Path) -> None:
    """Save the adapter as candidate ``run.candidate(step)`` (atomic; COMPLETE marker), with its meta."""

    def write(d: Path) -> None:
        # No base path in the adapter: forgetguard then takes the run's base, on any machine.
        make_candidates.save_adapter(model, d, None)
        (d / "train_meta.json").write_text(
            json.dumps({"run": asdict(run), "step": step, "lora": LORA, "log": log}, indent=1) + "\n"
        )

    out.mkdir(parents=True, exist_ok=True)
    make_candidates.build(out, run.candidate(step), True, write)


def run_done(run: Run, out: Path) -> bool:
    return all((out / run.candidate(s) / "COMPLETE").exists() for s in run.save_at)


def run_measured(run: Run, results: Path) -> bool:
    """Every candidate of ``run`` has its measurements in ``results`` (evaluate.py's output)."""
    return all((results / f"{run.candidate(s)}.json").exists() for s in run.save_at)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@dataclass
class Rollout:
    response: list[int]  # sampled ids, EOS excluded
    ended: bool  # the model emitted EOS within the token limit


def _prefill(model: Any, tok: Any, prompts: list[list[int]], group: int) -> tuple[Any, Any, Any, Any]:
    """Run each distinct prompt once and copy its KV cache to its ``group`` samples.

    Every sample of a GRPO group shares its prompt (~40 tokens with SmolLM2's system prompt, longer
    than most answers), so this saves most of the prompt compute, in sampling and in training alike.
    Gradients flow through the copies (repeat_interleave is differentiable). Returns the logits that
    predict each sample's first token [N, V], the cache, the attention mask [N, W] and the position of
    the last prompt token [N, 1].
    """
    cache_name, keep = forward_names(model)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    o = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep)
    cache = getattr(o, cache_name)
    cache.batch_repeat_interleave(group)
    return (
        o.logits[:, -1].repeat_interleave(group, dim=0),
        cache,
        mask.repeat_interleave(group, dim=0),
        pos[:, -1:].repeat_interleave(group, dim=0),
    )


def sample(
    model: Any, tok: Any, prompts: list[list[int]], group: int, max_new_tokens: int, generator: "torch.Generator"
) -> list[Rollout]:
    """``group`` ancestral samples per prompt at temperature 1 from the model's full distribution.

    Our own loop over ``forward`` rather than ``generate``: generate fills unset options from the
    checkpoint's generation config (top-k 50 by default in transformers), and the policy gradient
    needs samples from exactly the distribution whose log-probs it differentiates. Samples are in
    prompt-major order: prompt i's samples are rows i*group .. i*group+group-1.
    """
    import torch

    cache_name, keep = forward_names(model)
    eos = tok.eos_token_id
    n = len(prompts) * group
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    with torch.no_grad():
        logits, cache, mask, pos = _prefill(model, tok, prompts, group)
        for _ in range(max_new_tokens):
            nxt = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)[:, 0]
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    if t == eos:
                        done[i] = True
                    else:
                        out[i].append(t)
            if all(done):
                break
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype)], dim=1)
            pos = pos + 1
            o = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{cache_name: cache},
                **keep,
            )
            logits = o.logits[:, -1]
    return [Rollout(r, d) for r, d in zip(out, done)]


def response_logprobs(
    model: Any, tok: Any, prompts: list[list[int]], group: int, responses: list[list[int]]
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """log pi(y_t | x, y_<t) of every response token, [N, T], and its 0/1 mask, with gradients.

    ``responses`` are in prompt-major order, ``group`` per prompt (as :func:`sample` returns them);
    they are right-padded after the shared, left-padded prompt cache.
    """
    import torch

    cache_name, _ = forward_names(model)
    first, cache, pmask, last = _prefill(model, tok, prompts, group)
    width = max(map(len, responses))
    rid = torch.tensor([list(r) + [tok.pad_token_id] * (width - len(r)) for r in responses])
    rmask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])
    logits = first[:, None]
    if width > 1:
        o = model(
            input_ids=rid[:, :-1],
            attention_mask=torch.cat([pmask, rmask[:, :-1]], dim=1),
            position_ids=last + 1 + torch.arange(width - 1)[None],
            use_cache=True,
            **{cache_name: cache},
        )
        logits = torch.cat([logits, o.logits], dim=1)  # position j predicts response token j
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, rid[..., None])[..., 0] * rmask, rmask
