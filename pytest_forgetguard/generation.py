"""Seeded, batched sampling of responses, invariant to batch size and order.

Each prompt gets its own random generator, seeded from the run seed and the
prompt's token ids, so a prompt's sample does not depend on which other
prompts share its batch. Batches are left-padded, as generation requires.

Example::

    responses = sample_responses(handle, [[1, 2, 3]], max_new_tokens=16, seed=1234)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .models import ModelHandle


def prompt_seed(seed: int, ids: Sequence[int], sample: int = 0) -> int:
    h = hashlib.sha256(f"{seed}:{sample}:".encode() + ",".join(map(str, ids)).encode())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


class _PerRowSampler:
    """A logits processor that samples each row with its own generator.

    It leaves only the sampled token finite, so greedy decoding in
    ``generate`` picks it: HF's batching, caching and padding are reused, and
    only the randomness is ours.
    """

    def __init__(self, generators: list["torch.Generator"], temperature: float, vocab: int | None) -> None:
        self.generators = generators
        self.temperature = temperature
        self.vocab = vocab

    def __call__(self, input_ids: "torch.Tensor", scores: "torch.Tensor") -> "torch.Tensor":
        import torch

        logits = scores.float()
        if self.vocab is not None:
            logits = logits[:, : self.vocab]
        probs = torch.softmax(logits / self.temperature, dim=-1).cpu()
        if not bool(torch.isfinite(probs).all()):
            from .errors import NonFiniteError

            raise NonFiniteError("NaN/inf in the sampling model's next-token distribution")
        choice = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]).to(
            scores.device
        )
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice, 0.0)
        return out


def sample_responses(
    handle: "ModelHandle",
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 16,
    vocab: int | None = None,
) -> list[list[int]]:
    """Sample one response per prompt from ``handle``; ends at EOS (kept) or the limit."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use sample_from: dataset for fixed responses)")
    tok = handle.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = _eos_ids(handle)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        pad_token_id=pad_id,
        eos_token_id=eos or None,
    )
    with handle.active() as model, torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                p = list(prompts[i])
                ids[r, width - len(p) :] = torch.tensor(p)
                mask[r, width - len(p) :] = 1
            gens = [torch.Generator().manual_seed(prompt_seed(seed, prompts[i])) for i in rows]
            generated = model.generate(
                input_ids=ids.to(handle.device),
                attention_mask=mask.to(handle.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([_PerRowSampler(gens, temperature, vocab)]),
            )
            for r, i in enumerate(rows):
                out[i] = _trim(generated[r, width:].tolist(), eos)
    return out


def _eos_ids(handle: "ModelHandle") -> list[int]:
    ids: set[int] = set()
    cfg = getattr(handle.raw_model, "generation_config", None)
    value = getattr(cfg, "eos_token_id", None)
    if isinstance(value, int):
        ids.add(value)
    elif value:
        ids.update(value)
    if handle.tokenizer.eos_token_id is not None:
        ids.add(handle.tokenizer.eos_token_id)
    return sorted(ids)


def _trim(tokens: list[int], eos: list[int]) -> list[int]:
    """Cut after the first EOS (the EOS itself is a sampled response token)."""
    for pos, t in enumerate(tokens):
        if t in eos:
            return tokens[: pos + 1]
    return tokens
