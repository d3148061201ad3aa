"""An independent float64 KL reference, written from first principles.

Loads its own float64 copies of the models, runs every sequence alone (no
batching, no padding), and computes the divergence with numpy. Shares no code
with the engine under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def load_float64(path: Path):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
    return model.eval()


def log_probs(model, ids: Sequence[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(ids)])).logits[0].double().numpy()
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def reference_kl(
    base_path: Path,
    cand_path: Path,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    vocab: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-token forward and reverse KL for each (prompt_ids, response_ids) pair."""
    mb, mc = load_float64(base_path), load_float64(cand_path)
    fwd_all, rev_all = [], []
    for prompt, response in pairs:
        ids = list(prompt) + list(response)
        rows = slice(len(prompt) - 1, len(ids) - 1)  # the positions that predict response tokens
        lp, lq = log_probs(mb, ids)[rows], log_probs(mc, ids)[rows]
        if vocab is not None:
            lp, lq = lp[:, :vocab], lq[:, :vocab]
            lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
            lq = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
        p, q = np.exp(lp), np.exp(lq)
        fwd_all.append((p * (lp - lq)).sum(-1))
        rev_all.append((q * (lq - lp)).sum(-1))
    return fwd_all, rev_all
