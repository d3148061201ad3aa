"""Models: SPECs, loaders, lazily loaded handles, fingerprints and compatibility checks.

One module a concern:

- :mod:`.spec` — what a SPEC string names (directory, adapter, GGUF, hub id, hook);
- :mod:`.loaders` — one loader per kind of SPEC, each checking what it loads;
- :mod:`.gguf` — GGUF files converted once into a validated cache;
- :mod:`.fingerprint` — content hashes for cache keys;
- :mod:`.weights` — what safetensors files hold (shapes, dtypes, whole or not), from their headers;
- :mod:`.handle` — :class:`ModelHandle` (lazy, good or unusable) and :class:`ModelStore`;
- :mod:`.compat` — whether two models can be compared token by token;
- :mod:`.protocol` — :class:`ModelLike`, what the measuring code needs from a model.

Example::

    store = ModelStore(device="cpu", dtype="float32")
    base = store.get("models/base", role="base")
    cand = store.get("runs/lora-adapter", base=base)   # shares base weights
    check_compatible(base, cand)
"""

from .compat import check_compatible, context_window, embedding_rows, tokenizer_difference
from .fingerprint import FINGERPRINT_PATTERNS, fingerprint_directory, fingerprint_loaded
from .gguf import invalid_gguf_copy, materialize_gguf
from .handle import ModelHandle, ModelStore, unusable_error
from .loaders import CustomLoader, LoadedModel, LoadOptions
from .protocol import ModelLike
from .spec import ModelSpec, parse_spec

__all__ = [
    "FINGERPRINT_PATTERNS",
    "CustomLoader",
    "LoadOptions",
    "LoadedModel",
    "ModelHandle",
    "ModelLike",
    "ModelSpec",
    "ModelStore",
    "check_compatible",
    "context_window",
    "embedding_rows",
    "fingerprint_directory",
    "fingerprint_loaded",
    "invalid_gguf_copy",
    "materialize_gguf",
    "parse_spec",
    "tokenizer_difference",
    "unusable_error",
]
