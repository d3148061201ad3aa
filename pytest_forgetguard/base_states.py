"""The base's pass, computed once: its final hidden states at the response positions, kept and reused.

Every KL check runs the base and the candidate over the same tokens. The base's
part does not depend on the candidate, so with N candidates (a checkpoint sweep)
or a CI rerun it is the same work again. What the KL needs from the base is its
final hidden state (after the final norm) at each response position — the LM
head is applied afterwards — which is 30–85× smaller than the logits
(576 floats per token for SmolLM2). :class:`BaseStates` keeps them:

- in memory for this process, up to ``memory_limit`` bytes (least recently used out first);
- on disk in the result cache's directory (``base-states/``), as safetensors files
  written atomically and checked on every read (the key, shape, dtype, every value
  finite); an unusable file is reported and computed again, never trusted.

A batch's key is everything that determines its states: the base's content
fingerprint, its dtype and device class, the library versions, and the exact
token ids, attention mask and positions of the batch (so a different batch size
is a different set of keys, never a wrong answer).

Example::

    states = BaseStates(ResultCache(cache_dir))
    teacher_forced_kl(base, candidate, sequences, base_states=states)   # computes and keeps
    teacher_forced_kl(base, other, sequences, base_states=states)       # the base does not run
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import cache_key
from .files import write_atomic

if TYPE_CHECKING:
    import torch

    from .cache import ResultCache
    from .models import ModelLike

NAMESPACE = "base-states"
FORMAT = 1
DEFAULT_MEMORY_LIMIT = 512 * 2**20  # bytes of hidden states kept in memory per process


class BaseStates:
    """Hidden states of base passes, by batch: in memory, and on disk when ``cache`` has a directory."""

    def __init__(self, cache: "ResultCache | None" = None, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.cache = cache
        self.memory_limit = memory_limit
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def root(self) -> Path | None:
        return None if self.cache is None or self.cache.root is None else self.cache.root / NAMESPACE

    def key(
        self, base: "ModelLike", ids: "torch.Tensor", mask: "torch.Tensor", rows: "torch.Tensor", cols: "torch.Tensor"
    ) -> str:
        """Everything that determines the base's states for this batch, hashed."""
        import torch
        import transformers

        h = hashlib.sha256()
        for t in (ids, mask, rows, cols):
            arr = t.detach().to("cpu", torch.int64).contiguous()
            h.update(str(tuple(arr.shape)).encode())
            h.update(arr.numpy().tobytes())
        return cache_key(
            format=FORMAT,
            model=base.fingerprint,
            dtype=base.dtype,
            device=base.device_class,
            versions={"torch": torch.__version__, "transformers": transformers.__version__},
            batch=h.hexdigest(),
        )

    def load(self, key: str, positions: int, device: "torch.device") -> "torch.Tensor | None":
        """The states stored under ``key`` ([positions, hidden], on ``device``), or None."""
        states = self._memory.get(key)
        if states is not None:
            self._memory.move_to_end(key)
        else:
            states = self._read(key)
        if states is None or states.shape[0] != positions:
            if states is not None:
                self._report(key, f"{states.shape[0]} positions stored, {positions} asked for")
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, states)
        return states.to(device)

    def store(self, key: str, states: "torch.Tensor") -> None:
        """Keep ``states`` (a base's finite hidden states) in memory and, with a directory, on disk."""
        cpu = states.detach().to("cpu").contiguous()
        self._remember(key, cpu)
        root = self.root
        if root is None:
            return
        from safetensors.torch import save

        path = root / key[:2] / f"{key}.safetensors"
        try:
            # Atomic, from a temporary file no other writer shares (xdist workers, or ranks on several
            # nodes whose process ids may coincide, can store the same key): a reader sees one whole file.
            write_atomic(path, save({"states": cpu}, metadata={"key": key, "format": str(FORMAT)}))
        except OSError as exc:
            self._warn(f"forgetguard could not write {path} ({exc}); the base's pass is computed again next run")

    # -- internals ------------------------------------------------------------------------

    def _remember(self, key: str, states: "torch.Tensor") -> None:
        size = states.numel() * states.element_size()
        if size > self.memory_limit:
            return
        if key in self._memory:
            self._memory.move_to_end(key)
            return
        self._memory[key] = states.to("cpu")
        self._bytes += size
        while self._bytes > self.memory_limit:
            _, old = self._memory.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def _read(self, key: str) -> "torch.Tensor | None":
        root = self.root
        if root is None:
            return None
        path = root / key[:2] / f"{key}.safetensors"
        if not path.is_file():
            return None
        import torch
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = list(f.keys())
                if meta.get("key") != key or meta.get("format") != str(FORMAT) or names != ["states"]:
                    raise ValueError("not the entry for this key")
                states: torch.Tensor = f.get_tensor("states")
        except Exception as exc:  # a truncated or foreign file: safetensors raises its own errors
            self._report(key, f"{type(exc).__name__}: {exc}", path)
            return None
        if not states.is_floating_point() or states.dim() != 2:
            self._report(key, f"a {states.dtype} tensor of shape {tuple(states.shape)}", path)
            return None
        if not bool(torch.isfinite(states).all()):
            self._report(key, "non-finite values", path)
            return None
        return states

    def _report(self, key: str, why: str, path: Path | None = None) -> None:
        where = path or (self.root / key[:2] / f"{key}.safetensors" if self.root else f"{NAMESPACE}/{key}")
        old = self._memory.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._warn(f"forgetguard cache entry {where} is unusable ({why}); recomputing")

    def _warn(self, message: str) -> None:
        if self.cache is not None:
            self.cache.warn(message)
