"""Model SPECs, lazily loaded model handles, fingerprints and compatibility checks.

A SPEC names a model: a local Hugging Face directory, a PEFT adapter directory,
a ``.gguf`` file or a hub id (``org/name[@revision]``). A :class:`ModelStore`
turns SPECs into :class:`ModelHandle` objects that load on first use, so a
session that only collects tests loads nothing.

Example::

    store = ModelStore(device="cpu", dtype="float32", cache_dir=Path("~/.cache/fg"))
    base = store.get("models/base")
    cand = store.get("runs/lora-adapter", base=base)   # shares base weights
    with cand.active() as model:
        logits = model(input_ids).logits
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import current_check
from .context import warn as context_warn
from .errors import (
    ForgetguardError,
    IncompatibleModelsError,
    ModelLoadError,
    NonFiniteError,
    TokenizerMismatchError,
    require,
)
from .files import publish_directory, read_text

if TYPE_CHECKING:
    import torch

SCHEME_RE = re.compile(r"^[A-Za-z][\w+.-]*://")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
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
# 2: the COMPLETE marker records every file's size and hash (copies are validated on read).
GGUF_CACHE_VERSION = "2"

# Loader hook: (spec, device, dtype) -> (model, tokenizer) or None.
CustomLoader = Callable[[str, str, str], "tuple[Any, Any] | None"]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed SPEC: ``kind`` is one of ``dir``, ``peft``, ``gguf``, ``hub``, ``custom`` (scheme://)."""

    text: str
    kind: str
    location: str
    revision: str | None = None


def parse_spec(text: str) -> ModelSpec:
    """Classify a SPEC string; a path that does not exist is an error, not a hub id.

    >>> parse_spec("HuggingFaceTB/SmolLM2-135M@main").kind
    'hub'
    """
    raw = text.strip()
    if not raw:
        raise ModelLoadError("empty model SPEC: give a directory, a .gguf file or a hub id")
    path = Path(raw).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return ModelSpec(raw, "gguf", str(path.resolve()))
            raise ModelLoadError(f"model SPEC {raw!r} is a file but not a .gguf file; give the model's directory")
        if (path / "adapter_config.json").is_file():
            return ModelSpec(raw, "peft", str(path.resolve()))
        if (path / "config.json").is_file():
            return ModelSpec(raw, "dir", str(path.resolve()))
        raise ModelLoadError(
            f"model directory {raw!r} has neither config.json (a Hugging Face model) nor "
            "adapter_config.json (a PEFT adapter); save the model with save_pretrained()"
        )
    if SCHEME_RE.match(raw):
        # "registry://name": only a pytest_forgetguard_load_model hook can load it.
        return ModelSpec(raw, "custom", raw)
    # "models/bas" has the shape of a hub id, but when ./models exists it is a path with a typo:
    # say so, rather than report a failed hub lookup.
    first = raw.split("/", 1)[0]
    looks_like_path = (
        raw.startswith((".", "/", "~"))
        or raw.lower().endswith(".gguf")
        or raw.count("/") > 1
        or ("/" in raw and Path(first).expanduser().is_dir())
    )
    match = HUB_ID_RE.match(raw)
    if looks_like_path or not match:
        where = path.resolve()
        close = _close_paths(path)
        raise ModelLoadError(
            f"model SPEC {raw!r}: no such file or directory ({where})"
            + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
            + (
                f" ({first}/ is a local directory, so this is read as a path, not a hub id)"
                if match
                else " (and not a hub id of the form org/name[@revision])"
            )
        )
    name, _, revision = raw.partition("@")
    return ModelSpec(raw, "hub", name, revision or None)


def _close_paths(path: Path) -> list[str]:
    """Existing siblings spelled like ``path`` (for "did you mean"), as the user would write them."""
    parent = path.parent
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        return []
    return [str(parent / n) if str(parent) != "." else n for n in difflib.get_close_matches(path.name, names, n=2)]


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _hash_file_memo(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = _sha256_file(path)
    return _FILE_HASHES[key]


def fingerprint_directory(directory: Path, extra: str = "") -> str:
    """Content hash of the files that define a model (weights, config, tokenizer)."""
    files: set[Path] = set()
    for pattern in FINGERPRINT_PATTERNS:
        files.update(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        raise ModelLoadError(f"{directory}: no model files to fingerprint")
    h = hashlib.sha256(extra.encode())
    for f in sorted(files):
        h.update(f.name.encode() + b"\0" + _hash_file_memo(f).encode() + b"\n")
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


def _torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _gguf_manifest(directory: Path) -> dict[str, Any]:
    """Size and sha256 of every file of a converted GGUF copy (what its COMPLETE marker records)."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": _hash_file_memo(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != "COMPLETE"
    }


def _invalid_gguf_copy(target: Path, source_digest: str) -> str | None:
    """Why a converted GGUF copy cannot be used (None when it can): its files must be the ones recorded.

    The hashes are the ones the model's fingerprint computes anyway (memoised), so checking costs nothing extra.
    """
    try:
        marker = json.loads((target / "COMPLETE").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable COMPLETE marker ({exc})"
    if not isinstance(marker, dict) or marker.get("version") != GGUF_CACHE_VERSION:
        return "written by another version of forgetguard"
    if marker.get("sha256") != source_digest:
        return "converted from another GGUF file"
    files = marker.get("files")
    if not isinstance(files, dict) or "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        return "the marker lists no model files"
    try:
        present = {p.name: p.stat().st_size for p in target.iterdir() if p.is_file() and p.name != "COMPLETE"}
    except OSError as exc:
        return f"unreadable ({exc})"
    if set(present) != set(files):
        return f"its files differ from those recorded ({', '.join(sorted(set(present) ^ set(files)))})"
    for name, info in files.items():
        if not isinstance(info, dict) or present[name] != info.get("size"):
            return f"{name} has another size than when it was written"
    for name, info in files.items():
        if _hash_file_memo(target / name) != info.get("sha256"):
            return f"{name} changed since it was written"
    return None


def materialize_gguf(path: Path, cache_dir: Path | None, warn: Callable[[str], None] | None = None) -> Path:
    """Convert a GGUF file once into a safetensors directory cached by the file's hash.

    Without a cache directory the conversion goes to a temporary directory
    that lives for the process. Writes are atomic: a half-written copy is
    never picked up. A copy whose files differ from the ones recorded when
    it was written (edited, truncated, from another version) is converted
    again, with a warning.
    """
    require("gguf", "gguf")
    digest = _hash_file_memo(path)[:16]
    root = cache_dir if cache_dir is not None else Path(tempfile.gettempdir()) / f"forgetguard-{os.getpid()}"
    target = root / "gguf" / f"{path.stem}-{digest}-v{GGUF_CACHE_VERSION}"
    if target.exists():
        why = _invalid_gguf_copy(target, digest) if (target / "COMPLETE").exists() else "incomplete"
        if why is None:
            return target
        if warn:
            warn(f"forgetguard: discarding the converted GGUF copy at {target} ({why}); converting again")
        shutil.rmtree(target, ignore_errors=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    except Exception as exc:  # transformers raises many types for unsupported files
        raise ModelLoadError(f"could not load GGUF file {path}: {exc}") from exc
    # transformers marks GGUF-loaded models as quantized and refuses to save them,
    # although the weights are dequantized float32 tensors by now.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        marker = {"source": str(path), "sha256": digest, "version": GGUF_CACHE_VERSION, "files": _gguf_manifest(tmp)}
        (tmp / "COMPLETE").write_text(json.dumps(marker, indent=1), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_directory(tmp, target)  # False: a concurrent run published the same conversion first, fine
    return target


@dataclass(frozen=True)
class LoadedModel:
    """What a loader hands back: the module to run and its tokenizer.

    ``adapter_name`` is set for a PEFT candidate (the adapter to select in
    the shared ``PeftModel``); ``from_hook`` when a ``pytest_forgetguard_load_model``
    hook loaded it (its fingerprint is then computed from memory).
    """

    model: Any
    tokenizer: Any
    adapter_name: str | None = None
    from_hook: bool = False
    notices: tuple[str, ...] = ()  # warnings every check of this model carries


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
        from . import progress

        with progress.task(f"loading {self.role} {self.label}"):
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
    """Creates and caches :class:`ModelHandle` objects for one session."""

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
        # An accelerate device map ("sequential": fill the first GPU, spill onto the next ones) for
        # models larger than one device; None loads each model whole onto ``device``.
        self.device_map = device_map
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.trust_remote_code = trust_remote_code
        self.custom_loader = custom_loader
        self.warn = warn or context_warn
        self.check_weights = check_weights
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

    # -- where the files are ---------------------------------------------------------

    def local_dir(self, spec: ModelSpec) -> Path:
        """The directory of a SPEC's files: itself, a GGUF file's converted copy, or a hub snapshot."""
        if spec.kind == "custom":
            raise ModelLoadError(f"model SPEC {spec.text!r} was loaded by a hook and has no local directory")
        if spec.kind in ("dir", "peft"):
            return Path(spec.location)
        if spec.kind == "gguf":
            return materialize_gguf(Path(spec.location), self.cache_dir, self.warn)
        return self._hub_snapshot(spec)

    def _hub_snapshot(self, spec: ModelSpec) -> Path:
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(
                spec.location,
                revision=spec.revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py"],
            )
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
            raise ModelLoadError(
                f"cannot load hub model {spec.text!r}: {why} and it is not in the local Hugging "
                f"Face cache ({type(exc).__name__}: {exc}). Download it on a machine with network "
                "access (huggingface-cli download) or pass a local directory or .gguf file"
                f" (there is no local path {Path(spec.text).resolve()} either)."
            ) from exc
        return Path(path)

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
        run_base = handle._run_base
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

    # -- loading ---------------------------------------------------------------------

    def load(self, handle: ModelHandle) -> LoadedModel:
        """Load ``handle``'s model: through the hook, as a PEFT adapter, or from its directory.

        Nothing is handed back unless every check passed (finite weights), so
        a model that fails is never half-loaded.
        """
        if self.custom_loader is not None:
            loaded = self.custom_loader(handle.spec.text, self.device, self.dtype)
            if loaded is not None:
                model, tokenizer = loaded
                self._prepare(handle.spec.text, model, tokenizer, check=self.check_weights)
                if self.check_weights:
                    _probe_outputs(handle.spec.text, model, tokenizer)
                return LoadedModel(model, tokenizer, from_hook=True)
        if handle.spec.kind == "custom":
            raise ModelLoadError(
                f"no pytest_forgetguard_load_model hook loaded model SPEC {handle.spec.text!r}; "
                "implement the hook in a conftest.py or plugin (see the README)"
            )
        from .settings import device_problem

        problem = device_problem(self.device)
        if problem is not None:  # before the first weight moves (a suite's device; an option's is refused earlier)
            raise ModelLoadError(f"cannot load {handle.spec.text!r} on {self.device}: {problem}")
        if handle.spec.kind == "peft":
            return self._load_adapter(handle)
        return self._load_directory(handle)

    def _load_directory(self, handle: ModelHandle) -> LoadedModel:
        import torch

        directory = handle.local_dir
        _require_safetensors(directory, "model")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=self.trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the tokenizer of {handle.spec.text!r}: {_explain_load_error(exc, directory)}"
            ) from exc
        placement: dict[str, Any] = {}
        if self.device_map is not None:
            require("accelerate", "gguf")
            placement["device_map"] = self.device_map
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(directory),
                dtype=_torch_dtype(self.dtype),
                trust_remote_code=self.trust_remote_code,
                use_safetensors=True,
                **placement,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not load model {handle.spec.text!r}: {_explain_load_error(exc, directory)}"
            ) from exc
        # A dispatched model is already where accelerate put it; moving it would undo the map.
        if not placement:
            model = model.to(torch.device(self.device))  # type: ignore[arg-type]
        self._prepare(handle.spec.text, model, tokenizer, check=self.check_weights)
        if self.check_weights:
            _probe_outputs(handle.spec.text, model, tokenizer)
        return LoadedModel(model, tokenizer)

    def _load_adapter(self, handle: ModelHandle) -> LoadedModel:
        require("peft", "peft")
        from transformers import AutoTokenizer

        adapter_dir = Path(handle.spec.location)
        _require_safetensors(adapter_dir, "PEFT adapter")
        base = handle.adapter_base
        base.load()
        name = "fg_" + hashlib.sha256(handle.spec.location.encode()).hexdigest()[:8]
        try:
            peft_model = base.attach_adapter(adapter_dir, name)
        except Exception as exc:
            raise ModelLoadError(
                f"could not load PEFT adapter {handle.spec.text!r}: {_explain_load_error(exc, adapter_dir)}"
            ) from exc
        own = [(pname, param) for pname, param in peft_model.named_parameters() if f".{name}." in pname]
        if any(adapter_dir.glob("tokenizer*")):
            tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
            self._prepare(handle.spec.text, None, tokenizer, check=False)
        else:
            tokenizer = base.tokenizer
        if self.check_weights:
            # The adapter's own weights (the base's were checked when it loaded), then what they compute.
            for pname, param in own:
                _check_finite(handle.spec.text, pname, param)
            peft_model.set_adapter(name)
            _probe_outputs(handle.spec.text, peft_model, tokenizer)
        notices = []
        if _adapter_is_identity(own, name):
            notices.append(
                f"PEFT adapter {handle.spec.text!r} changes nothing: every LoRA B matrix is zero (as PEFT "
                "initialises them), so the candidate computes exactly what its base does; was it trained and saved?"
            )
            self.warn(notices[-1])
        return LoadedModel(peft_model, tokenizer, adapter_name=name, notices=tuple(notices))

    @staticmethod
    def _prepare(label: str, model: Any, tokenizer: Any, check: bool) -> None:
        """Eval mode, frozen weights, a pad token; with ``check``, every weight finite."""
        if model is not None:
            model.eval()
            for param in model.parameters():
                param.requires_grad_(False)
            if check:
                for pname, param in model.named_parameters():
                    _check_finite(label, pname, param)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token


def _adapter_is_identity(params: list[tuple[str, Any]], name: str) -> bool:
    """Whether a LoRA adapter's weights make it a no-op: only LoRA A/B matrices, every B all zero."""
    b = [p for n, p in params if f"lora_B.{name}." in n or f"lora_embedding_B.{name}" in n]
    others = [n for n, _ in params if not any(part in n for part in ("lora_A.", "lora_B.", "lora_embedding_"))]
    return bool(b) and not others and not any(bool(p.any()) for p in b)


def _require_safetensors(directory: Path, what: str) -> None:
    """Refuse a directory whose weights exist only as pickles (``.bin``/``.pt``), which can run code when loaded."""
    if list(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in directory.glob(pattern))
    hint = (
        f" It has pickle weights ({', '.join(pickles)}), which can run arbitrary code when loaded: "
        "re-save them with save_pretrained(safe_serialization=True) on a machine you trust."
        if pickles
        else ""
    )
    raise ModelLoadError(f"{what} directory {directory} has no .safetensors weights.{hint}")


def _explain_load_error(exc: BaseException, directory: Path | None = None) -> str:
    """transformers' error, with its advice translated into this plugin's options.

    Its own advice names Python arguments (``trust_remote_code=True``,
    ``weights_only=False``) that a pytest user cannot pass, and one of which
    would run a pickle: say what to do here instead.
    """
    text = f"{type(exc).__name__}: {exc}"
    if "trust_remote_code" in text:
        code = sorted(p.name for p in directory.glob("*.py")) if directory is not None else []
        return (
            "the model ships its own Python code"
            + (f" ({', '.join(code)})" if code else "")
            + ", which runs only if you allow it: pass --fg-trust-remote-code if (and only if) you trust that code"
        )
    if "weights_only" in text:
        return (
            "the weights are a pickle file, which can run arbitrary code when loaded; forgetguard loads "
            "safetensors only: re-save them with save_pretrained(safe_serialization=True) on a machine you trust"
        )
    return text


PROBE_TEXT = "The capital of France is"


def _probe_outputs(label: str, model: Any, tokenizer: Any) -> None:
    """One forward pass on a short plain text: finite weights can still overflow into NaN/inf logits.

    Checked when the model loads, so such a model is unusable from the start
    whichever check runs first (a drift check alone cannot see its outputs).
    Costs one forward pass over a few tokens. A -inf logit (a token ruled
    out) is allowed; NaN and +inf are not.
    """
    import torch

    ids = list(tokenizer(PROBE_TEXT)["input_ids"]) or [tokenizer.eos_token_id or 0]
    device = model.get_input_embeddings().weight.device
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise NonFiniteError(
            f"model {label!r} gives NaN/inf logits on a plain input ({PROBE_TEXT!r}) although its weights are "
            "finite: they overflow (a diverged fine-tune, or weights scaled far out of range)"
        )


def _check_finite(label: str, name: str, param: "torch.Tensor") -> None:
    import torch

    finite = torch.isfinite(param)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteError(
            f"model {label!r}: parameter {name} has {bad} NaN/inf value(s) of {param.numel()}; "
            "the checkpoint is corrupt or training diverged"
        )


def embedding_rows(handle: ModelHandle) -> int:
    head = handle.raw_model.get_output_embeddings()
    if head is None:
        raise IncompatibleModelsError(f"model {handle.label!r} has no output embedding (LM head)")
    weight = getattr(head, "weight", None)
    if weight is None and hasattr(head, "base_layer"):
        weight = head.base_layer.weight
    if weight is None:
        raise IncompatibleModelsError(f"model {handle.label!r}: cannot read the LM head's weight")
    return int(weight.shape[0])


def tokenizer_difference(base: ModelHandle, candidate: ModelHandle, allow_extra: bool = False) -> str | None:
    """Why the two tokenizers do not read the same token ids (None when they do).

    With ``allow_extra``, one vocabulary may extend the other at its end
    (the shared ids must still agree).
    """
    vb = {i: t for t, i in base.tokenizer.get_vocab().items()}
    vc = {i: t for t, i in candidate.tokenizer.get_vocab().items()}
    shared = min(len(vb), len(vc))
    for i in sorted(set(vb) | set(vc)):
        tb, tc = vb.get(i), vc.get(i)
        if tb != tc:
            if allow_extra and (tb is None or tc is None) and i >= shared:
                return None
            return (
                f"tokenizers differ at token id {i}: base {base.label!r} has {tb!r}, candidate "
                f"{candidate.label!r} has {tc!r} ({len(vb)} vs {len(vc)} tokens)"
            )
    return None


def check_compatible(base: ModelHandle, candidate: ModelHandle, allow_vocab_mismatch: bool = False) -> int:
    """Raise unless the two models can be compared token by token.

    Returns the number of vocabulary ids to compare (the shared prefix when
    ``allow_vocab_mismatch`` is set and the sizes differ). Tokenizers that
    disagree on a shared id raise :class:`TokenizerMismatchError` whatever
    the option: such a pair can never be compared.
    """
    differ = tokenizer_difference(base, candidate, allow_extra=True)
    if differ is None and not allow_vocab_mismatch:
        differ = tokenizer_difference(base, candidate)
        if differ is not None:
            raise IncompatibleModelsError(
                f"{differ}. KL needs both models to read the same token ids: compare a candidate fine-tuned "
                "from this base, or pass allow_vocab_mismatch=True (suite: 'allow_vocab_mismatch: true') "
                "when one vocabulary only extends the other."
            )
    elif differ is not None:
        raise TokenizerMismatchError(
            f"{differ}. KL needs both models to read the same token ids: compare a candidate fine-tuned from this base."
        )
    rows_b, rows_c = embedding_rows(base), embedding_rows(candidate)
    if rows_b != rows_c:
        if not allow_vocab_mismatch:
            raise IncompatibleModelsError(
                f"vocabulary sizes differ: base {base.label!r} has {rows_b} output rows, candidate "
                f"{candidate.label!r} has {rows_c}. Pass allow_vocab_mismatch=True (suite: "
                f"'allow_vocab_mismatch: true') to compare on the {min(rows_b, rows_c)} shared ids."
            )
        return min(rows_b, rows_c)
    return rows_b


def context_window(handle: ModelHandle) -> int | None:
    """The most tokens the model reads at once (its position limit), where its config says; else None."""
    config = getattr(handle.raw_model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
