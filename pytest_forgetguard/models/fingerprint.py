"""Content fingerprints: the same model gives the same 16 hex digits wherever its files are.

Caches are keyed by fingerprints (base samples, base lm-eval results), so
every file that changes what a model computes is part of it, and nothing else.

Example::

    fingerprint_directory(Path("models/base"))          # '3f2a9c...'
    fingerprint_loaded(model, tokenizer)                # for models a hook loaded
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..files import sha256_file

# Files that define a model's behaviour; anything else in the directory (README, training logs)
# does not change its fingerprint. Python files count: with --fg-trust-remote-code a model's own
# modeling code runs, and a change to it must not be served cached base results.
FINGERPRINT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "*.safetensors",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template*",
    "added_tokens.json",
    "*.model",
    "*.tiktoken",
    "*.py",
)


def fingerprint_directory(directory: Path, extra: str = "") -> str:
    """Content hash of the files that define a model (weights, config, tokenizer)."""
    files: set[Path] = set()
    for pattern in FINGERPRINT_PATTERNS:
        files.update(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        raise ModelLoadError(f"{directory}: no model files to fingerprint")
    h = hashlib.sha256(extra.encode())
    for f in sorted(files):
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()[:16]


def fingerprint_loaded(model: Any, tokenizer: Any) -> str:
    """Content hash of an in-memory model (for models a hook loaded): weights, config, vocabulary."""
    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        # Where the model was loaded from is not its content: the same weights give the same hash.
        settings = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]
