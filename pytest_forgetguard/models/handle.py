"""Lazily loaded model handles, and the store that makes one per SPEC and role.

A :class:`ModelStore` turns SPECs into :class:`ModelHandle` objects that load
on first use, so a session that only collects tests loads nothing. A handle
is either good or unusable (see :meth:`ModelHandle.fail`).

Example::

    store = ModelStore(device="cpu", dtype="float32", cache_dir=Path("~/.cache/fg"))
    base = store.get("models/base", role="base")
    cand = store.get("runs/lora-adapter", base=base)   # shares base weights
    with cand.active() as model:
        logits = model(input_ids).logits
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..context import current_check
from ..context import warn as context_warn
from ..errors import ForgetguardError, ModelLoadError, own_error
from ..files import read_text
from .fingerprint import fingerprint_directory, fingerprint_loaded
from .gguf import materialize_gguf
from .loaders import CustomLoader, LoadedModel, LoadOptions, hub_snapshot, load_adapter, load_directory, load_from_hook
from .spec import ModelSpec, parse_spec

if TYPE_CHECKING:
    import torch


# pytest shows none of this module's frames under a forgetguard error: its message is the report.
__tracebackhide__ = own_error


def unusable_error(exc: ForgetguardError, label: str, found_by: str | None) -> ForgetguardError:
    """The error every later use of a failed model raises: the first error, and which check found it."""
    where = f"check {found_by!r}" if found_by else "loading"
    message = f"{exc} [{label!r} failed in {where}; a model that failed a check is never used again in this run]"
    try:
        return type(exc)(message)
    except TypeError:  # an error class with another signature: keep the words, lose the class
        return ModelLoadError(message)


class ModelHandle:
    """A lazily loaded model + tokenizer with a content fingerprint.

    ``active()`` yields the module to run: for a base whose weights are shared
    with PEFT candidates it disables the adapters, for an adapter candidate it
    selects that adapter.

    A handle is either good or unusable: once loading it, a finiteness check
    or a compatibility check fails (:meth:`fail`), every later use raises
    that first error, naming the check that found it. A PEFT candidate is
    also unusable when the base it shares weights with is.
    """

    def __init__(self, store: "ModelStore", spec: ModelSpec, role: str, run_base: "ModelHandle | None" = None) -> None:
        self.store = store
        self.spec = spec
        self.role = role
        self._model: Any = None
        self._tokenizer: Any = None
        self._fingerprint: str | None = None
        self._local_dir: Path | None = None
        self._from_hook = False
        self._peft: Any = None  # PeftModel wrapping this handle's model (a base that shares its weights)
        self._adapter_name: str | None = None  # set on PEFT candidates
        self._shared_base: ModelHandle | None = None  # a PEFT candidate's base (whose weights it runs on)
        self._run_base = run_base  # the base this candidate is compared with
        self._failure: tuple[ForgetguardError, str | None] | None = None
        # Warnings about this model that every check of it should carry (e.g. an adapter trained on another base).
        self.notices: list[str] = []

    def __repr__(self) -> str:
        state = "unusable" if self.failure else "loaded" if self._model is not None else "not loaded"
        return f"<ModelHandle {self.role} {self.spec.text!r} ({state})>"

    @property
    def label(self) -> str:
        return self.spec.text

    @property
    def short_label(self) -> str:
        """How a person reads the model's name in messages and tables: its SPEC's last path component."""
        from ..records import candidate_id

        return candidate_id(self.spec.text)

    @property
    def run_base(self) -> "ModelHandle | None":
        """The base this candidate is compared with (None for a base)."""
        return self._run_base

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # -- good or unusable ------------------------------------------------------------

    @property
    def failure(self) -> tuple[ForgetguardError, str | None] | None:
        """(first error, name of the check that found it) once this model is unusable, else None."""
        if self._failure is not None:
            return self._failure
        if self._shared_base is not None and self._shared_base is not self:
            return self._shared_base.failure
        return None

    def fail(self, exc: ForgetguardError) -> ForgetguardError:
        """Mark this model unusable for the rest of the run; returns ``exc`` (to raise).

        The first failure is kept; the loaded module is dropped, so nothing
        can reach it any more.

        Example::

            raise handle.fail(NonFiniteError("NaN logits"))
        """
        if self._failure is None:
            self._failure = (exc, current_check())
            self._model = None
        return exc

    def ensure_usable(self) -> None:
        """Raise the first error again (naming the check that found it) if this model failed before."""
        failure = self.failure
        if failure is not None:
            exc, found_by = failure
            raise unusable_error(exc, self.label, found_by)

    # -- the model -------------------------------------------------------------------

    @property
    def adapter_name(self) -> str | None:
        """The PEFT adapter this handle selects (None for full models); loads the model."""
        self.load()
        return self._adapter_name

    @property
    def adapter_base(self) -> "ModelHandle":
        """A PEFT candidate's base model: the run's base when the adapter was trained on it."""
        if self.spec.kind != "peft":
            raise ModelLoadError(f"{self.label!r} is not a PEFT adapter")
        if self._shared_base is None:
            self._shared_base = self.store.resolve_adapter_base(self)
        return self._shared_base

    @property
    def from_hook(self) -> bool:
        """Whether a ``pytest_forgetguard_load_model`` hook loaded this model."""
        return self._from_hook

    @property
    def local_dir(self) -> Path:
        """The directory holding this model's files (GGUF converted on demand)."""
        if self._local_dir is None:
            self._local_dir = self.store.local_dir(self.spec)
        return self._local_dir

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over weights, config, tokenizer and code files."""
        if self._fingerprint is None:
            if self.spec.kind == "custom" or (self._model is not None and self._from_hook):
                self._fingerprint = fingerprint_loaded(self.model, self.tokenizer)
            elif self.spec.kind == "peft":
                self._fingerprint = fingerprint_directory(self.local_dir, extra=self.adapter_base.fingerprint)
            else:
                self._fingerprint = fingerprint_directory(self.local_dir)
        return self._fingerprint

    @property
    def model(self) -> Any:
        """The loaded module (a PeftModel for adapters). Prefer :meth:`active`."""
        self.load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    @property
    def raw_model(self) -> Any:
        """The underlying transformers model (LoRA layers injected where shared)."""
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def dtype(self) -> str:
        """The dtype the model is loaded in (``float32``, ``bfloat16``, ``float16``)."""
        return self.store.dtype

    @property
    def device_class(self) -> str:
        """``cpu``, ``cuda`` or ``mps``: the kind of device, without its index."""
        return self.store.device.split(":")[0]

    @property
    def is_adapter(self) -> bool:
        """Whether this is a PEFT adapter on a base model."""
        return self.spec.kind == "peft"

    @property
    def device(self) -> "torch.device":
        """Where inputs go: the store's device, or the input embeddings' device for a sharded model."""
        import torch

        if self.store.device_map is not None and self._model is not None:
            return self.raw_model.get_input_embeddings().weight.device  # type: ignore[no-any-return]
        return torch.device(self.store.device)

    def load(self) -> None:
        """Load the model now (once); a model that fails here is unusable for every later check."""
        self.ensure_usable()
        if self._model is not None:
            return
        from .. import progress

        with progress.task(f"loading {self.role} {self.short_label}"), progress.third_party_quiet():
            try:
                loaded = self.store.load(self)
            except ForgetguardError as exc:
                self.fail(exc)
                raise
            except Exception as exc:  # a loader's own exception: still a failed load, said plainly
                raise self.fail(
                    ModelLoadError(f"could not load {self.role} {self.label!r}: {type(exc).__name__}: {exc}")
                ) from exc
        self._tokenizer = loaded.tokenizer
        self._adapter_name = loaded.adapter_name
        self.notices.extend(n for n in loaded.notices if n not in self.notices)
        self._from_hook = loaded.from_hook
        self._model = loaded.model  # last: a handle with a model is a handle that passed every load check

    def attach_adapter(self, adapter_dir: Path, name: str) -> Any:
        """Load the PEFT adapter at ``adapter_dir`` onto this (base) model as ``name``; returns the PeftModel.

        Adapters share this model's weights: the first wraps it in a
        ``PeftModel``, later ones are added to the same one.
        """
        from peft import PeftModel

        self.load()
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._model, str(adapter_dir), adapter_name=name)
        elif name not in self._peft.peft_config:
            self._peft.load_adapter(str(adapter_dir), adapter_name=name)
        self._peft.eval()
        return self._peft

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """Yield the module configured to behave as this model."""
        self.load()
        if self._adapter_name is not None:
            peft_model = self._model
            peft_model.set_adapter(self._adapter_name)
            yield peft_model
        elif self._peft is not None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            yield self._model


class ModelStore:
    """Creates and caches :class:`ModelHandle` objects for one session (one device and dtype)."""

    def __init__(
        self,
        device: str = "cpu",
        dtype: str = "float32",
        cache_dir: Path | None = None,
        trust_remote_code: bool = False,
        custom_loader: CustomLoader | None = None,
        warn: Callable[[str], None] | None = None,
        check_weights: bool = True,
        device_map: str | None = None,
    ) -> None:
        self.device = device
        self.device_map = device_map
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.trust_remote_code = trust_remote_code
        self.custom_loader = custom_loader
        self.warn = warn or context_warn
        self.check_weights = check_weights
        self.options = LoadOptions(
            device=device,
            dtype=dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            check=check_weights,
            warn=self.warn,
        )
        self._handles: dict[tuple[str, str, str], ModelHandle] = {}

    def get(self, spec: str, role: str = "candidate", base: ModelHandle | None = None) -> ModelHandle:
        """A handle for ``spec`` (nothing is loaded yet). ``base`` is the run's base model."""
        parsed = parse_spec(spec)
        # A candidate is compared with one base: an adapter may share that base's weights.
        against = base.spec.location if base is not None and role != "base" else ""
        key = (role, parsed.location + "@" + (parsed.revision or ""), against)
        if key not in self._handles:
            self._handles[key] = ModelHandle(self, parsed, role, run_base=base if role != "base" else None)
        return self._handles[key]

    def local_dir(self, spec: ModelSpec) -> Path:
        """The directory of a SPEC's files: itself, a GGUF file's converted copy, or a hub snapshot."""
        if spec.kind == "custom":
            raise ModelLoadError(f"model SPEC {spec.text!r} was loaded by a hook and has no local directory")
        if spec.kind in ("dir", "peft"):
            return Path(spec.location)
        if spec.kind == "gguf":
            return materialize_gguf(Path(spec.location), self.cache_dir, self.warn)
        return hub_snapshot(spec)

    def load(self, handle: ModelHandle) -> LoadedModel:
        """Load ``handle``'s model with the loader for its kind of SPEC (a hook first, when one is given)."""
        if self.custom_loader is not None:
            loaded = load_from_hook(self.custom_loader, handle.spec, self.options)
            if loaded is not None:
                return loaded
        if handle.spec.kind == "custom":
            raise ModelLoadError(
                f"no pytest_forgetguard_load_model hook loaded model SPEC {handle.spec.text!r}; "
                "implement the hook in a conftest.py or plugin (see the README)"
            )
        from ..settings import device_problem

        problem = device_problem(self.device)
        if problem is not None:  # before the first weight moves (a suite's device; an option's is refused earlier)
            raise ModelLoadError(f"cannot load {handle.spec.text!r} on {self.device}: {problem}")
        if handle.spec.kind == "peft":
            return load_adapter(Path(handle.spec.location), handle.spec.text, handle.adapter_base, self.options)
        return load_directory(handle.local_dir, handle.spec.text, self.options)

    def resolve_adapter_base(self, handle: ModelHandle) -> ModelHandle:
        """The handle of a PEFT adapter's base model: the run's base when they match.

        An adapter trained on another (loadable) model is applied to that
        model, with a warning on every check of it: the comparison is then
        "that model + adapter" against the run's base.
        """
        cfg_path = Path(handle.spec.location) / "adapter_config.json"
        try:
            cfg = json.loads(read_text(cfg_path, "PEFT adapter config"))
        except (ForgetguardError, ValueError) as exc:
            raise ModelLoadError(f"unreadable PEFT adapter config {cfg_path}: {exc}") from exc
        if not isinstance(cfg, dict):
            raise ModelLoadError(f"PEFT adapter config {cfg_path} is not a JSON object")
        base_ref = cfg.get("base_model_name_or_path")
        run_base = handle.run_base
        if run_base is not None and run_base is not handle and self._same_model(base_ref, run_base, handle):
            return run_base
        if not base_ref:
            raise ModelLoadError(
                f"PEFT adapter {handle.spec.text!r} does not name its base model "
                "(base_model_name_or_path); pass that base model as --fg-base"
            )
        ref = str(base_ref)
        if not os.path.isabs(ref) and (Path(handle.spec.location) / ref).exists():
            ref = str(Path(handle.spec.location) / ref)
        try:
            other = self.get(ref, role="adapter-base")
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"PEFT adapter {handle.spec.text!r} was trained on {base_ref!r}, which is not the "
                f"run's base and cannot be loaded: {exc}"
            ) from exc
        if run_base is not None:
            message = (
                f"PEFT adapter {handle.spec.text!r} was trained on {base_ref!r}, not on the run's base "
                f"{run_base.label!r}: the candidate is {base_ref!r} + the adapter, compared with {run_base.label!r}"
            )
            handle.notices.append(message)
            self.warn(message)
        return other

    def _same_model(self, base_ref: str | None, run_base: ModelHandle, adapter: ModelHandle) -> bool:
        if not base_ref:
            return True  # the adapter does not say: assume the run's base, the usual case
        if base_ref in (run_base.spec.text, run_base.spec.location):
            return True
        ref_path = Path(base_ref).expanduser()
        if not ref_path.is_absolute():
            ref_path = Path(adapter.spec.location) / ref_path
        if ref_path.exists():
            real = ref_path.resolve()
            if str(real) == run_base.spec.location:
                return True
            if run_base.spec.kind != "hub" and (real / "config.json").is_file():
                return fingerprint_directory(real) == run_base.fingerprint
        return False
