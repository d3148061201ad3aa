"""Sampling: the model's own distribution, batch-size invariance, and the sample cache.

The reference sampler below decodes one prompt at a time with a full forward
pass per token (no KV cache, no padding, no batching) on a separately loaded
copy of the model; only the per-prompt seed derivation is shared.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from pytest_forgetguard.cache import ResultCache
from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.errors import ForgetguardWarning
from pytest_forgetguard.generation import (
    DECODE_BATCH,
    DECODE_MEMORY,
    SAMPLES_NAMESPACE,
    cached_sample_responses,
    decode_batch_size,
    prompt_seed,
    sample_responses,
    samples_cache_key,
)
from pytest_forgetguard.models import ModelHandle, ModelStore
from pytest_forgetguard.prompts import encode_prompt, parse_prompts

# Raw text and chat prompts of many lengths, so every batch is left-padded.
PROMPTS = [
    "The for statement",
    "Comparisons can be chained arbitrarily, e.g., x < y <= z is equivalent to",
    "with",
    {"messages": [{"role": "user", "content": "What does pass do?"}]},
    "The import statement is used to bring names into scope; the basic import statement (no from clause) is",
    "Identifiers",
    {"messages": [{"role": "user", "content": "Explain the while loop."}]},
    "Exceptions are raised",
]


def encoded(handle: ModelHandle, items=PROMPTS) -> list[list[int]]:
    return [encode_prompt(handle.tokenizer, r) for r in parse_prompts(items)]


def reference_samples(model_dir: Path, prompts, max_new_tokens: int, seed: int, eos: set[int]) -> list[list[int]]:
    """One prompt at a time, the whole sequence re-run for every token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        gen = torch.Generator().manual_seed(prompt_seed(seed, prompt))
        ids = list(prompt)
        response: list[int] = []
        with torch.no_grad():
            while len(response) < max_new_tokens:
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                token = int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen))
                response.append(token)
                ids.append(token)
                if token in eos:
                    break
        out.append(response)
    return out


def eos_ids(handle: ModelHandle) -> set[int]:
    return {handle.tokenizer.eos_token_id}


def count_decoding_steps(handle: ModelHandle) -> list[int]:
    """Instrumentation: count the model's forward calls that extend a KV cache (decoding steps).

    The KL engine's teacher-forced scoring runs with ``use_cache=False`` and is not counted.
    """
    calls = [0]

    def hook(module, args, kwargs):
        if kwargs.get("use_cache"):
            calls[0] += 1

    handle.raw_model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def warning_cache(root: Path | None) -> ResultCache:
    """A cache that reports like the plugin's session does: as a ForgetguardWarning."""
    return ResultCache(root, warn=lambda message: warnings.warn(message, ForgetguardWarning, stacklevel=2))


# -- the samples -----------------------------------------------------------------------


def test_samples_equal_an_unbatched_uncached_reference(tiny, store):
    base = store.get(str(tiny["base"]), role="base")
    prompts = encoded(base)
    got = sample_responses(base, prompts, max_new_tokens=12, seed=7, batch_size=3)
    assert got == reference_samples(tiny["base"], prompts, 12, 7, eos_ids(base))
    assert len({len(p) for p in prompts}) > 4, "prompts of many lengths: left padding is exercised"


@pytest.mark.parametrize("batch_size", [1, 2, 5, 16, 64])
def test_batch_size_and_order_do_not_change_samples(tiny, store, batch_size):
    base = store.get(str(tiny["base"]), role="base")
    prompts = encoded(base)
    alone = [sample_responses(base, [p], max_new_tokens=12, seed=3)[0] for p in prompts]
    assert sample_responses(base, prompts, max_new_tokens=12, seed=3, batch_size=batch_size) == alone
    reversed_ = sample_responses(base, prompts[::-1], max_new_tokens=12, seed=3, batch_size=batch_size)
    assert reversed_ == alone[::-1]


def test_responses_end_at_any_eos_or_the_limit(tiny):
    base = ModelStore(device="cpu", dtype="float32").get(str(tiny["base"]), role="base")
    prompts = encoded(base)
    free = sample_responses(base, prompts, max_new_tokens=12, seed=11)
    assert all(len(r) == 12 for r in free)
    # A checkpoint may declare several EOS ids (generation_config.json): each ends a response.
    stop = free[0][3]
    base.raw_model.generation_config.eos_token_id = [base.tokenizer.eos_token_id, stop]
    stopped = sample_responses(base, prompts, max_new_tokens=12, seed=11)
    for full, cut in zip(free, stopped):
        end = full.index(stop) + 1 if stop in full else len(full)
        assert cut == full[:end], "the same draws, cut after the first EOS (kept)"
    assert len(stopped[0]) <= 4


def test_finished_rows_leave_the_batch_and_the_others_draw_the_same_tokens(tiny):
    """Rows ending at different steps are dropped from the batch (KV cache included); what is left is
    still token for token the unbatched, uncached reference's draws."""
    base = ModelStore(device="cpu", dtype="float32").get(str(tiny["base"]), role="base")
    prompts = encoded(base)
    free = sample_responses(base, prompts, max_new_tokens=12, seed=5)
    # Three frequent tokens end a response too: rows finish anywhere between step 1 and 12.
    counts: dict[int, int] = {}
    for r in free:
        for t in r[:6]:
            counts[t] = counts.get(t, 0) + 1
    stops = sorted(counts, key=counts.get, reverse=True)[:3]
    base.raw_model.generation_config.eos_token_id = [base.tokenizer.eos_token_id, *stops]
    rows = []
    hook = base.raw_model.register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = sample_responses(base, prompts, max_new_tokens=12, seed=5, batch_size=len(prompts))
    finally:
        hook.remove()
    lengths = sorted({len(r) for r in got})
    assert len(lengths) >= 3, f"rows should end at several steps, got lengths {lengths}"
    assert got == reference_samples(tiny["base"], prompts, 12, 5, {base.tokenizer.eos_token_id, *stops})
    # One call per step; each call runs only the rows still going (the first: all of them).
    assert rows == [sum(len(r) > step for r in got) for step in range(len(rows))]


def test_checkpoint_generation_settings_do_not_change_the_distribution(tiny):
    """generate() would apply a shipped repetition penalty; the KL estimate needs the model's own distribution."""
    plain = ModelStore(device="cpu", dtype="float32").get(str(tiny["base"]), role="base")
    penalized = ModelStore(device="cpu", dtype="float32").get(str(tiny["base"]), role="base")
    cfg = penalized.raw_model.generation_config
    cfg.repetition_penalty, cfg.no_repeat_ngram_size, cfg.do_sample, cfg.top_k = 3.0, 1, True, 2
    prompts = encoded(plain)
    assert sample_responses(penalized, prompts, 16, seed=5) == sample_responses(plain, prompts, 16, seed=5)


def test_a_model_that_returns_no_kv_cache_is_sampled_exactly(tiny):
    with_cache = ModelStore(device="cpu", dtype="float32").get(str(tiny["base"]), role="base")
    without = ModelStore(device="cpu", dtype="float32").get(str(tiny["base"]), role="base")

    def drop_cache(module, args, kwargs, output):
        # Like a model (e.g. remote code) that ignores use_cache: no cache comes back.
        for name in ("cache", "past_key_values"):
            if name in output:
                output[name] = None
        return output

    without.raw_model.register_forward_hook(drop_cache, with_kwargs=True)
    prompts = encoded(with_cache)
    assert sample_responses(without, prompts, 10, seed=4, batch_size=3) == sample_responses(
        with_cache, prompts, 10, seed=4, batch_size=3
    )


def test_adapter_candidate_samples_from_the_adapted_model(tiny):
    store = ModelStore(device="cpu", dtype="float32")
    base = store.get(str(tiny["base"]), role="base")
    prompts = encoded(base)
    before = sample_responses(base, prompts, 12, seed=2)
    lora = store.get(str(tiny["lora"]), base=base)
    adapted = sample_responses(lora, prompts, 12, seed=2)
    assert lora.model is base._peft, "the adapter shares the base's weights"
    assert sample_responses(base, prompts, 12, seed=2) == before, "the base still samples with adapters disabled"
    assert adapted != before, "the adapter changes the distribution sampled from"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_sampling_arguments(tiny, store, kwargs, message):
    base = store.get(str(tiny["base"]), role="base")
    args = {"max_new_tokens": 4, "seed": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample_responses(base, [[1, 2]], **args)


def test_an_empty_prompt_is_an_error(tiny, store):
    base = store.get(str(tiny["base"]), role="base")
    with pytest.raises(ValueError, match="at least one token"):
        sample_responses(base, [[1, 2], []], max_new_tokens=4, seed=1)


# -- the sample cache ----------------------------------------------------------------------


def guard(store: ModelStore, base: Path, cand: Path, cache: ResultCache | None, seed: int = 1234) -> Forgetguard:
    b = store.get(str(base), role="base")
    return Forgetguard(b, store.get(str(cand), base=b), seed=seed, cache=cache)


def test_rerun_with_an_unchanged_base_does_no_generation(tiny, tmp_path):
    cold_store = ModelStore(device="cpu", dtype="float32")
    cold = guard(cold_store, tiny["base"], tiny["candidate"], ResultCache(tmp_path))
    cold_steps = count_decoding_steps(cold.base)
    first = cold.kl(PROMPTS, max_new_tokens=10, batch_size=3)
    assert cold_steps[0] > 0 and cold.cache is not None and cold.cache.misses == 1
    entries = list((tmp_path / SAMPLES_NAMESPACE).rglob("*.json"))
    assert len(entries) == 1 and entries[0].stat().st_size < 4096, "entries are token ids, nothing more"

    # A new session: fresh store, fresh cache object on the same directory.
    warm_store = ModelStore(device="cpu", dtype="float32")
    warm = guard(warm_store, tiny["base"], tiny["candidate"], ResultCache(tmp_path))
    warm_steps = count_decoding_steps(warm.base)
    second = warm.kl(PROMPTS, max_new_tokens=10, batch_size=3)
    assert warm_steps[0] == 0, "a warm cache runs no decoding step"
    assert warm.cache is not None and warm.cache.hits == 1
    assert second.value == first.value and second.reverse_mean == first.reverse_mean
    served = [[int(t) for t in p.response_ids] for p in second.prompts]
    assert served == [[int(t) for t in p.response_ids] for p in first.prompts]
    expected = sample_responses(warm.base, encoded(warm.base), 10, seed=1234)
    assert served == expected, "the cache serves what sampling gives"


def test_reverse_kl_caches_candidate_samples(tiny, tmp_path):
    store = ModelStore(device="cpu", dtype="float32")
    first = guard(store, tiny["base"], tiny["candidate"], ResultCache(tmp_path)).kl(
        PROMPTS, direction="reverse", max_new_tokens=8
    )
    fg = guard(ModelStore(device="cpu", dtype="float32"), tiny["base"], tiny["candidate"], ResultCache(tmp_path))
    steps = count_decoding_steps(fg.candidate)
    assert fg.kl(PROMPTS, direction="reverse", max_new_tokens=8).value == first.value
    assert steps[0] == 0


def changed_weights(src: Path, out: Path) -> Path:
    """A copy of ``src`` with one weight changed: same tokenizer and config, other fingerprint."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    weights = load_file(out / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 0.5
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    assert not torch.equal(weights[name], load_file(src / "model.safetensors")[name])
    return out


@pytest.mark.parametrize("change", ["seed", "max_new_tokens", "temperature", "prompts", "base weights"])
def test_every_key_ingredient_is_a_miss(tiny, tmp_path, change):
    options = {"max_new_tokens": 6, "temperature": 1.0}
    base_dir, seed, prompts, cand = tiny["base"], 1234, PROMPTS[:4], tiny["candidate"]
    guard(ModelStore(device="cpu"), base_dir, cand, ResultCache(tmp_path / "c")).kl(prompts, **options)
    assert len(list((tmp_path / "c" / SAMPLES_NAMESPACE).rglob("*.json"))) == 1
    if change == "seed":
        seed = 99
    elif change == "max_new_tokens":
        options["max_new_tokens"] = 7
    elif change == "temperature":
        options["temperature"] = 0.9
    elif change == "prompts":
        prompts = [*PROMPTS[:3], PROMPTS[4]]
    elif change == "base weights":
        base_dir = changed_weights(tiny["base"], tmp_path / "base2")
    cache = ResultCache(tmp_path / "c")
    fg = guard(ModelStore(device="cpu"), base_dir, cand, cache, seed=seed)
    steps = count_decoding_steps(fg.base)
    fg.kl(prompts, **options)
    assert (cache.hits, cache.misses) == (0, 1) and steps[0] > 0, f"changing {change} must resample"
    assert len(list((tmp_path / "c" / SAMPLES_NAMESPACE).rglob("*.json"))) == 2


def test_key_covers_vocab_limit_dtype_and_library_versions(tiny, monkeypatch):
    import transformers

    def key(dtype: str = "float32", vocab: int | None = None) -> str:
        handle = ModelStore(device="cpu", dtype=dtype).get(str(tiny["base"]), role="base")
        return samples_cache_key(handle, [[5, 6, 7]], max_new_tokens=8, seed=1, temperature=1.0, vocab=vocab)

    plain = key()
    assert key() == plain, "the key is stable across sessions"
    assert key(vocab=300) != plain, "a vocabulary limit restricts the distribution sampled from"
    assert key(dtype="bfloat16") != plain
    monkeypatch.setattr(transformers, "__version__", "0.0.0-other")
    assert key() != plain, "another transformers version may round differently"


def test_corrupt_entry_is_resampled_with_a_warning(tiny, tmp_path):
    fg = guard(ModelStore(device="cpu"), tiny["base"], tiny["candidate"], warning_cache(tmp_path))
    first = fg.kl(PROMPTS, max_new_tokens=8)
    [entry] = (tmp_path / SAMPLES_NAMESPACE).rglob("*.json")
    entry.write_text(entry.read_text()[:40])  # a write cut short
    fg2 = guard(ModelStore(device="cpu"), tiny["base"], tiny["candidate"], warning_cache(tmp_path))
    steps = count_decoding_steps(fg2.base)
    with pytest.warns(ForgetguardWarning, match="unusable.*recomputing"):
        again = fg2.kl(PROMPTS, max_new_tokens=8)
    assert steps[0] > 0 and again.value == first.value
    json.loads(entry.read_text())  # rewritten whole


@pytest.mark.parametrize(
    "tamper, why",
    [
        (lambda rs: rs[:-1], "responses for"),
        (lambda rs: [[10_000]] + rs[1:], "outside the vocabulary"),
        (lambda rs: [rs[0][:1] + ["x"]] + rs[1:], "other than token ids"),
        (lambda rs: [rs[0] * 9] + rs[1:], "1..8 token ids"),
    ],
)
def test_entry_that_does_not_fit_is_resampled_with_a_warning(tiny, tmp_path, tamper, why):
    base = ModelStore(device="cpu").get(str(tiny["base"]), role="base")
    prompts = encoded(base)
    vocab = len(base.tokenizer)
    fresh = cached_sample_responses(base, prompts, 8, seed=1, vocab=vocab, cache=warning_cache(tmp_path))
    [entry] = (tmp_path / SAMPLES_NAMESPACE).rglob("*.json")
    data = json.loads(entry.read_text())
    data["payload"]["responses"] = tamper(data["payload"]["responses"])
    entry.write_text(json.dumps(data))
    cache = warning_cache(tmp_path)
    with pytest.warns(ForgetguardWarning, match=f"unusable.*{why}"):
        again = cached_sample_responses(base, prompts, 8, seed=1, vocab=vocab, cache=cache)
    assert again == fresh and (cache.hits, cache.misses) == (0, 1)


def test_without_a_cache_directory_samples_are_kept_for_the_process(tiny):
    base = ModelStore(device="cpu").get(str(tiny["base"]), role="base")
    steps = count_decoding_steps(base)
    prompts = encoded(base)[:3]
    cache = ResultCache(None)
    first = cached_sample_responses(base, prompts, 6, seed=1, cache=cache)
    used = steps[0]
    assert cached_sample_responses(base, prompts, 6, seed=1, cache=cache) == first and steps[0] == used
    assert cached_sample_responses(base, prompts, 6, seed=1, cache=None) == first and steps[0] > used


# -- the real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_batched_equals_unbatched(smollm2_dir):
    store = ModelStore(device="cpu", dtype="float32")
    base = store.get(str(smollm2_dir), role="base")
    items = [
        "The capital of France is",
        {"messages": [{"role": "user", "content": "What is 17 + 25?"}]},
        "def fibonacci(n):",
        {"messages": [{"role": "user", "content": "Name three primary colours, briefly."}]},
        "Once upon a time, in a land far away, there lived",
    ]
    prompts = encoded(base, items)
    assert len({len(p) for p in prompts}) == len(prompts), "every row is padded differently"
    one = sample_responses(base, prompts, max_new_tokens=16, seed=1234, batch_size=1)
    assert sample_responses(base, prompts, max_new_tokens=16, seed=1234, batch_size=16) == one


def test_the_decode_batch_is_as_large_as_its_kv_cache_allows(tiny, store):
    from types import SimpleNamespace

    base = store.get(str(tiny["base"]), role="base")
    prompts = encoded(base)
    assert decode_batch_size(base, prompts, 12, at_least=8) == DECODE_BATCH  # a tiny model: the cap

    def fake(**config):
        return SimpleNamespace(raw_model=SimpleNamespace(config=SimpleNamespace(**config)), dtype="bfloat16")

    # An 8B-like model (32 layers, 8 KV heads of 128) with 4,000-token sequences: 0.5 MB a token-row.
    big = fake(num_hidden_layers=32, num_key_value_heads=8, num_attention_heads=32, hidden_size=4096)
    per_row = (4000 + 64) * 32 * 2 * 8 * 128 * 2
    assert decode_batch_size(big, [[1] * 4000], 64, at_least=1) == DECODE_MEMORY // per_row == 2
    assert decode_batch_size(big, [[1] * 4000], 64, at_least=8) == 8  # never fewer than the caller's batch
    assert decode_batch_size(fake(), [[1]], 4, at_least=5) == 5  # a config it cannot read: the caller's
