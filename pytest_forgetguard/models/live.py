"""Models already in memory: the model being trained, and its frozen base, as the checks see them.

A :class:`LiveModel` gives an in-memory transformers (or PEFT) model the
:class:`~.protocol.ModelLike` interface, so the training callback measures it
with the gate's own code. For a PEFT model the base is the same module with
its adapters disabled (``adapters="disabled"``): no second copy in memory.

A live model's weights change between measurements, so its fingerprint is not a
content hash (that would cost a pass over every weight per evaluation): the
base's is hashed once, before training moves anything; the trained model's
names the object and the step (``set_step``), which keeps caches from serving
one step's samples to another.

Example::

    base = LiveModel(peft_model, tokenizer, role="base", label="base", adapters="disabled")
    live = LiveModel(peft_model, tokenizer, role="candidate", label="training")
    fg = Forgetguard(base, live)            # the gate's checks, on the model being trained
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..context import current_check
from ..errors import ForgetguardError
from .fingerprint import fingerprint_loaded
from .handle import unusable_error

if TYPE_CHECKING:
    import torch

ADAPTER_MODES = ("as-is", "disabled")


class LiveModel:
    """An in-memory model (``model``, ``tokenizer``) as one side of a comparison.

    ``adapters``: ``as-is`` runs the module as it is (a PEFT model with its active adapter),
    ``disabled`` runs a PEFT model with every adapter disabled (its base).
    """

    def __init__(self, model: Any, tokenizer: Any, role: str, label: str, adapters: str = "as-is") -> None:
        if adapters not in ADAPTER_MODES:
            raise ValueError(f"adapters must be one of {', '.join(ADAPTER_MODES)}, got {adapters!r}")
        if adapters == "disabled" and not hasattr(model, "disable_adapter"):
            raise ValueError(f"{label!r} has no adapters to disable: it is not a PEFT model")
        self._model = model
        self._tokenizer = tokenizer
        self.role = role
        self.label = label
        self.adapters = adapters
        self.notices: list[str] = []
        self._failure: tuple[ForgetguardError, str | None] | None = None
        self._fingerprint: str | None = None
        self._step: int | None = None

    def __repr__(self) -> str:
        return f"<LiveModel {self.role} {self.label!r}{' (adapters disabled)' if self.adapters == 'disabled' else ''}>"

    @property
    def short_label(self) -> str:
        return self.label

    # -- good or unusable (as ModelHandle) ---------------------------------------------------

    @property
    def failure(self) -> tuple[ForgetguardError, str | None] | None:
        return self._failure

    def fail(self, exc: ForgetguardError) -> ForgetguardError:
        """Mark the model unusable (a NaN in its logits, say): every later measurement raises ``exc`` again."""
        if self._failure is None:
            self._failure = (exc, current_check())
        return exc

    def ensure_usable(self) -> None:
        if self._failure is not None:
            exc, found_by = self._failure
            raise unusable_error(exc, self.label, found_by)

    def load(self) -> None:
        self.ensure_usable()

    # -- what the checks read -----------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The module itself (a PeftModel for an adapter), whatever ``adapters`` says: prefer :meth:`active`."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def raw_model(self) -> Any:
        model = self._model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def is_adapter(self) -> bool:
        return self.adapters == "as-is" and hasattr(self._model, "disable_adapter")

    @property
    def adapter_name(self) -> str | None:
        if not self.is_adapter:
            return None
        active = getattr(self._model, "active_adapter", None)
        return active if isinstance(active, str) else None

    @property
    def device(self) -> "torch.device":
        return self.raw_model.get_input_embeddings().weight.device  # type: ignore[no-any-return]

    @property
    def dtype(self) -> str:
        return str(self.raw_model.get_input_embeddings().weight.dtype).removeprefix("torch.")

    @property
    def device_class(self) -> str:
        return self.device.type

    def set_step(self, step: int) -> None:
        """The training step the model is at (part of a trained model's fingerprint)."""
        self._step = step

    def freeze_fingerprint(self) -> str:
        """Hash the weights now (the base, before training changes anything); kept from then on."""
        with self.active() as model:
            state = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
        self._fingerprint = fingerprint_loaded(
            _StateOnly(state, getattr(self.raw_model, "config", None)), self.tokenizer
        )
        return self._fingerprint

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is not None:
            return self._fingerprint
        return f"live-{id(self._model):x}-step-{self._step}"

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """The module to run: as it is, or with its adapters disabled."""
        self.ensure_usable()
        if self.adapters == "disabled":
            with self._model.disable_adapter():
                yield self._model
        else:
            yield self._model


class _StateOnly:
    """A state dict and a config, shaped as :func:`fingerprint_loaded` reads a model."""

    def __init__(self, state: dict[str, Any], config: Any) -> None:
        self._state = state
        self.config = config

    def state_dict(self) -> dict[str, Any]:
        return self._state
