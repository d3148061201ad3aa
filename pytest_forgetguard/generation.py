"""Seeded, batched sampling of responses, invariant to batch size and order, and cached.

Each prompt gets its own random generator, seeded from the run seed and the
prompt's token ids, so a prompt's sample does not depend on which other
prompts share its batch. Batches are left-padded with position ids counted
from each row's first real token, so a padded row sees exactly what it would
see alone.

Decoding is our own loop over the model's plain ``forward`` (with its KV
cache), not ``model.generate``: ``generate`` fills every setting we leave
unset from the checkpoint's ``generation_config.json``, so a shipped
``repetition_penalty`` or ``no_repeat_ngram_size`` would silently change the
distribution sampled from. The KL engine scores the model's own next-token
distribution; the samples must come from that same distribution.

:func:`cached_sample_responses` serves repeated runs from a
:class:`~.cache.ResultCache`, keyed by everything that determines the samples
(see :func:`samples_cache_key`), so a CI rerun with an unchanged base model
generates nothing.

Example::

    responses = sample_responses(handle, [[1, 2, 3]], max_new_tokens=16, seed=1234)
    responses = cached_sample_responses(handle, [[1, 2, 3]], 16, seed=1234, cache=ResultCache(cache_dir))
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

    from .cache import ResultCache
    from .models import ModelLike

SAMPLES_NAMESPACE = "samples"
# Bump when the sampling algorithm changes what a given key produces
# (seeding, EOS handling, decoding), so old entries are never served.
SAMPLES_FORMAT = 1


DECODE_BATCH = 64  # rows decoded together: per-step overhead amortised (64 vs 16: 0.66x the time, SmolLM2)
DECODE_MEMORY = 2**30  # bytes of KV cache a decode batch may hold


def decode_batch_size(handle: "ModelLike", prompts: Sequence[Sequence[int]], max_new_tokens: int, at_least: int) -> int:
    """How many prompts to decode together: up to :data:`DECODE_BATCH`, as long as their KV cache stays
    within :data:`DECODE_MEMORY` (estimated from the model's config), and never fewer than ``at_least``.

    Samples do not depend on it (per-prompt generators; tested token for token), only the time does.
    """
    config: Any = getattr(handle.raw_model, "config", None)
    try:
        layers = int(config.num_hidden_layers)
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return at_least  # an unusual config: keep the caller's batch
    longest = max((len(p) for p in prompts), default=1) + max_new_tokens
    element = 2 if handle.dtype in ("bfloat16", "float16") else 4
    per_row = longest * layers * 2 * heads * head_dim * element
    return max(at_least, min(DECODE_BATCH, DECODE_MEMORY // max(per_row, 1)))


def prompt_seed(seed: int, ids: Sequence[int], sample: int = 0) -> int:
    """The seed of one prompt's generator: a hash of the run seed, the sample number and the ids.

    >>> prompt_seed(1234, [1, 2, 3]) == prompt_seed(1234, [1, 2, 3]) != prompt_seed(1235, [1, 2, 3])
    True
    """
    h = hashlib.sha256(f"{seed}:{sample}:".encode() + ",".join(map(str, ids)).encode())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


class _RowSampler:
    """Draws one token per row, each row from its own generator.

    Probabilities are moved to the CPU before drawing so that a seed gives
    the same tokens on every device (CUDA generators draw other numbers).
    """

    def __init__(
        self, handle: "ModelLike", generators: list["torch.Generator"], temperature: float, vocab: int | None
    ) -> None:
        self.handle = handle
        self.generators = generators
        self.temperature = temperature
        self.vocab = vocab

    def __call__(self, logits: "torch.Tensor") -> "torch.Tensor":
        import torch

        logits = logits.float()
        if self.vocab is not None:
            logits = logits[:, : self.vocab]
        probs = torch.softmax(logits / self.temperature, dim=-1).cpu()
        if not bool(torch.isfinite(probs).all()):
            from .errors import NonFiniteError

            raise self.handle.fail(
                NonFiniteError(
                    f"{self.handle.role} {self.handle.label!r} gave a NaN/inf next-token distribution while "
                    "sampling: its outputs are not finite, so nothing can be sampled from it"
                )
            )
        return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])

    def select(self, rows: list[int]) -> None:
        """Keep the generators of these rows only (the batch dropped the others)."""
        self.generators = [self.generators[i] for i in rows]


def forward_names(model: Any) -> tuple[str, dict[str, int]]:
    """The KV-cache argument's name, and the "last position's logits only" option, of ``model.forward``.

    Both were renamed across transformers versions (``past_key_values`` ->
    ``cache`` in 5.2x, ``num_logits_to_keep`` -> ``logits_to_keep`` in 4.50);
    remote-code models keep whichever their author wrote.
    """
    raw = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = set(inspect.signature(raw.forward).parameters)
    except (TypeError, ValueError):
        params = set()
    cache_name = "cache" if "cache" in params else "past_key_values"
    # Only the last position's logits are needed: the full [B, T, V] prefill logits
    # would dominate memory for large vocabularies.
    keep: dict[str, int] = {}
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            keep[name] = 1
            break
    return cache_name, keep


def sample_responses(
    handle: "ModelLike",
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 16,
    vocab: int | None = None,
) -> list[list[int]]:
    """Sample one response per prompt from ``handle``; each ends at EOS (kept) or after ``max_new_tokens``.

    Ancestral sampling at ``temperature`` from the model's own next-token
    distribution (restricted to the first ``vocab`` ids when given). The
    result does not depend on ``batch_size`` or on the order of ``prompts``
    beyond floating-point rounding of the model's forward pass.

    Example::

        ids = [handle.tokenizer("2 + 2 =")["input_ids"]]
        [response] = sample_responses(handle, ids, max_new_tokens=8, seed=7)
        handle.tokenizer.decode(response)
    """
    import torch

    from . import progress

    _check_sampling(prompts, max_new_tokens, temperature, batch_size)
    tok = handle.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad_id is None:
        pad_id = 0  # only ever at masked positions, so its value cannot matter
    eos = set(_eos_ids(handle))
    # Similar lengths share a batch: less padding, less wasted compute.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    handle.load()  # its own progress line
    dev = handle.device
    label = f"sampling from {handle.role} {handle.short_label}"
    with handle.active() as model, torch.no_grad(), progress.task(label, len(prompts), "prompts") as task:
        names = forward_names(model)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            tokens = _Tokens.left_padded([prompts[i] for i in rows], pad_id, dev)
            generators = [torch.Generator().manual_seed(prompt_seed(seed, prompts[i])) for i in rows]
            sampler = _RowSampler(handle, generators, temperature, vocab)
            responses = _decode(model, names, tokens, sampler, max_new_tokens, eos)
            for r, i in enumerate(rows):
                out[i] = responses[r]
            task.advance(len(rows))
    return out


def _check_sampling(prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float, batch_size: int) -> None:
    """Refuse, before the model loads, arguments no sampling can honour."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use sample_from: dataset for fixed responses)")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token to condition on")


class _Tokens(NamedTuple):
    """A decode batch's token ids, attention mask and position ids, one row per prompt still decoding."""

    ids: "torch.Tensor"
    mask: "torch.Tensor"
    positions: "torch.Tensor"

    @classmethod
    def left_padded(cls, prompts: Sequence[Sequence[int]], pad_id: int, device: "torch.device") -> "_Tokens":
        """Left padding, so every row's next token goes in the same column.

        Left padding shifts the real tokens right; positions must still start at 0
        for each row's first real token (pads get 0, and are masked anyway).
        """
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(list(p))
            mask[r, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return cls(ids.to(device), mask.to(device), positions.to(device))

    def grown(self, choice: "torch.Tensor", device: "torch.device") -> "_Tokens":
        """With each row's sampled token appended: one more position, attended to."""
        import torch

        ids = torch.cat([self.ids, choice.view(-1, 1).to(device)], dim=1)
        positions = torch.cat([self.positions, self.positions[:, -1:] + 1], dim=1)
        mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        return _Tokens(ids, mask, positions)

    def kept(self, index: "torch.Tensor") -> "_Tokens":
        """Only the rows at ``index``."""
        return _Tokens(self.ids[index], self.mask[index], self.positions[index])

    def fed(self, cached: bool) -> tuple["torch.Tensor", "torch.Tensor"]:
        """The ids and positions a forward pass reads: only the newest when a KV cache holds the rest.

        A model that keeps no KV cache sees the whole sequence again: slow, still exact.
        """
        if not cached:
            return self.ids, self.positions
        return self.ids[:, -1:], self.positions[:, -1:]


def _decode(
    model: Any,
    names: tuple[str, dict[str, int]],
    tokens: _Tokens,
    sampler: _RowSampler,
    max_new_tokens: int,
    eos: set[int],
) -> list[list[int]]:
    """One batch's responses: a forward pass per token over the model's KV cache, rows leaving as they finish.

    ``names`` are :func:`forward_names`' (the KV-cache argument, the last-logits-only option).
    """
    import torch

    cache_name, keep = names
    dev = tokens.ids.device
    responses: list[list[int]] = [[] for _ in range(tokens.ids.shape[0])]
    done = [False] * len(responses)
    live = list(range(len(responses)))  # the batch's rows, as indexes into ``responses``
    past = None
    for _ in range(max_new_tokens):
        step_ids, step_positions = tokens.fed(cached=past is not None)
        result = model(
            input_ids=step_ids,
            attention_mask=tokens.mask,
            position_ids=step_positions,
            use_cache=True,
            **{cache_name: past},
            **keep,
        )
        # The output field carries the same name as the argument.
        past = getattr(result, cache_name)
        choice = sampler(result.logits[:, -1, :])
        for r, t in zip(live, choice.tolist()):
            if not done[r]:  # a row kept decoding after its EOS (see below): its tokens are discarded
                responses[r].append(t)
                done[r] = t in eos
        going = [k for k, r in enumerate(live) if not done[r]]
        if not going:
            break
        tokens = tokens.grown(choice, dev)
        if len(going) < len(live) and (past is None or hasattr(past, "batch_select_indices")):
            # Finished rows leave the batch (their KV cache too): with long limits most decode
            # steps were spent on them. Rows never influence each other, and each keeps its
            # own generator, so the others draw the same tokens.
            index = torch.tensor(going, device=dev)
            if past is not None:
                past.batch_select_indices(index)
            tokens = tokens.kept(index)
            sampler.select(going)
            live = [live[k] for k in going]
        # (A cache that cannot drop rows keeps them decoding; their tokens are discarded.)
    return responses


def _eos_ids(handle: "ModelLike") -> list[int]:
    """Every id that ends a response: the generation config's EOS ids and the tokenizer's."""
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


# -- the cache -----------------------------------------------------------------------


def _library_versions(handle: "ModelLike") -> dict[str, str]:
    """Versions of the code that runs the model: a new kernel can round differently and flip a draw."""
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if handle.is_adapter:
        import peft

        versions["peft"] = peft.__version__
    return versions


def samples_cache_key(
    handle: "ModelLike",
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seed: int,
    temperature: float,
    vocab: int | None,
) -> str:
    """Everything that determines :func:`sample_responses`' output, hashed.

    The model's content fingerprint (weights, config, tokenizer files), the
    exact prompt token ids, the sampling arguments, the EOS ids, dtype and
    device class, library versions and :data:`SAMPLES_FORMAT`. The batch
    size is left out on purpose: samples do not depend on it.

    Example::

        key = samples_cache_key(base, prompt_ids, max_new_tokens=64, seed=1234, temperature=1.0, vocab=None)
    """
    from .cache import cache_key

    blob = json.dumps([list(map(int, p)) for p in prompts], separators=(",", ":"))
    return cache_key(
        format=SAMPLES_FORMAT,
        model=handle.fingerprint,
        prompts=hashlib.sha256(blob.encode()).hexdigest(),
        n_prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        seed=seed,
        # repr: the exact float, so 1.0 and 1.0000001 never share an entry.
        temperature=repr(float(temperature)),
        vocab=vocab,
        eos=_eos_ids(handle),
        dtype=handle.dtype,
        device=handle.device_class,
        versions=_library_versions(handle),
    )


def _invalid_payload(payload: Any, n_prompts: int, max_new_tokens: int, vocab: int | None, eos: set[int]) -> str | None:
    """Why a cached payload cannot be the samples asked for (None when it can)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("responses"), list):
        return "no 'responses' list"
    responses = payload["responses"]
    if len(responses) != n_prompts:
        return f"{len(responses)} responses for {n_prompts} prompts"
    for i, resp in enumerate(responses):
        if not isinstance(resp, list) or not 1 <= len(resp) <= max_new_tokens:
            return f"response {i} is not a list of 1..{max_new_tokens} token ids"
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in resp):
            return f"response {i} holds something other than token ids"
        if vocab is not None and max(resp) >= vocab:
            return f"response {i} has a token id outside the vocabulary of {vocab}"
        if any(t in eos for t in resp[:-1]) or (len(resp) < max_new_tokens and resp[-1] not in eos):
            return f"response {i} does not end where sampling stops (at EOS or the token limit)"
    return None


def cached_sample_responses(
    handle: "ModelLike",
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 16,
    vocab: int | None = None,
    cache: "ResultCache | None" = None,
) -> list[list[int]]:
    """:func:`sample_responses`, served from ``cache`` when nothing that determines the samples changed.

    ``cache=None`` samples every time. An entry that is unreadable or does
    not fit the request (wrong count, ids out of range, a response that does
    not end at EOS or the limit) is reported through ``cache.warn`` and
    sampled again, never trusted. Entries are small: the response token ids.

    Example::

        cache = ResultCache(Path(".forgetguard-cache"))
        first = cached_sample_responses(base, prompt_ids, 64, seed=1234, cache=cache)
        again = cached_sample_responses(base, prompt_ids, 64, seed=1234, cache=cache)  # no generation
    """

    def sample() -> list[list[int]]:
        return sample_responses(
            handle, prompts, max_new_tokens, seed=seed, temperature=temperature, batch_size=batch_size, vocab=vocab
        )

    if cache is None:
        return sample()
    key = samples_cache_key(handle, prompts, max_new_tokens, seed, temperature, vocab)
    eos = set(_eos_ids(handle))
    hit = cache.load(
        SAMPLES_NAMESPACE,
        key,
        validate=lambda payload: _invalid_payload(payload, len(prompts), max_new_tokens, vocab, eos),
    )
    if hit is not None:
        return [list(r) for r in hit["responses"]]
    responses = sample()
    meta = {"model": handle.label, "n_prompts": len(prompts), "seed": seed, "max_new_tokens": max_new_tokens}
    cache.store(SAMPLES_NAMESPACE, key, {"responses": responses}, meta=meta)
    return responses
