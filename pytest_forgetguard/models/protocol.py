"""What the measuring code needs from a model: the :class:`ModelLike` protocol.

The KL engine, sampling, weight drift and the compatibility checks use only
these members, so they can run on anything that provides them — a
:class:`~.handle.ModelHandle`, or a small fake in a unit test.

Example (a fake wrapping an already-loaded transformers model)::

    class Loaded:
        role, label, dtype, device_class, is_adapter = "candidate", "mine", "float32", "cpu", False
        def __init__(self, model, tokenizer):
            self.model = self.raw_model = model
            self.tokenizer, self.device = tokenizer, torch.device("cpu")
        ...
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from ..errors import ForgetguardError


class ModelLike(Protocol):
    """A model as the checks see it: run it, read its tokenizer, and mark it unusable when it misbehaves."""

    @property
    def role(self) -> str:
        """``base``, ``candidate`` or ``adapter-base``: how messages name the model's part."""

    @property
    def label(self) -> str:
        """How messages name the model (its SPEC)."""

    @property
    def short_label(self) -> str:
        """How tables, progress lines and failure messages name the model (its SPEC's last path component)."""

    @property
    def fingerprint(self) -> str:
        """A content hash: equal for equal weights, config and tokenizer."""

    @property
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (``get_vocab``, ``__call__``, ``decode``, pad/eos ids)."""

    @property
    def raw_model(self) -> Any:
        """The transformers model (for a PEFT candidate: the base model with its LoRA layers)."""

    @property
    def adapter_name(self) -> str | None:
        """The PEFT adapter this model selects, or None for a full model."""

    @property
    def device(self) -> "torch.device":
        """Where inputs go."""

    @property
    def dtype(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``."""

    @property
    def device_class(self) -> str:
        """``cpu``, ``cuda``, ``mps``: what cache keys record (numbers differ across device kinds)."""

    @property
    def is_adapter(self) -> bool:
        """Whether this is a PEFT adapter on a base model."""

    @property
    def failure(self) -> "tuple[ForgetguardError, str | None] | None":
        """(first error, the check that found it) once the model is unusable, else None."""

    def load(self) -> None:
        """Load now (a no-op when loaded); raises the model's first error when it is unusable."""

    def active(self) -> AbstractContextManager[Any]:
        """The module to run, configured to behave as this model (the adapter selected or disabled)."""

    def fail(self, exc: "ForgetguardError") -> "ForgetguardError":
        """Mark the model unusable for the rest of the run; returns ``exc`` to raise."""
