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

from .errors import IncompatibleModelsError, ModelLoadError, NonFiniteError, require

if TYPE_CHECKING:
    import torch

SCHEME_RE = re.compile(r"^[A-Za-z][\w+.-]*://")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# Files that define a model's behaviour; anything else in the directory
# (README, training logs) does not change its fingerprint.
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
)
GGUF_CACHE_VERSION = "1"

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
    looks_like_path = raw.startswith((".", "/", "~")) or raw.lower().endswith(".gguf") or raw.count("/") > 1
    match = HUB_ID_RE.match(raw)
    if looks_like_path or not match:
        raise ModelLoadError(
            f"model SPEC {raw!r}: no such file or directory (and not a hub id of the form org/name[@revision])"
        )
    name, _, revision = raw.partition("@")
    return ModelSpec(raw, "hub", name, revision or None)


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


def materialize_gguf(path: Path, cache_dir: Path | None, warn: Callable[[str], None] | None = None) -> Path:
    """Convert a GGUF file once into a safetensors directory cached by the file's hash.

    Without a cache directory the conversion goes to a temporary directory
    that lives for the process. Writes are atomic: a half-written copy is
    never picked up.
    """
    require("gguf", "gguf")
    digest = _hash_file_memo(path)[:16]
    root = cache_dir if cache_dir is not None else Path(tempfile.gettempdir()) / f"forgetguard-{os.getpid()}"
    target = root / "gguf" / f"{path.stem}-{digest}-v{GGUF_CACHE_VERSION}"
    if (target / "COMPLETE").is_file():
        return target
    if target.exists():
        if warn:
            warn(f"discarding incomplete GGUF conversion at {target}")
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
        (tmp / "COMPLETE").write_text(json.dumps({"source": str(path), "sha256": digest}))
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "COMPLETE").is_file():  # lost a race to another process: fine
            raise
    return target


class ModelHandle:
    """A lazily loaded model + tokenizer with a content fingerprint.

    ``active()`` yields the module to run: for a base whose weights are shared
    with PEFT candidates it disables the adapters, for an adapter candidate it
    selects that adapter.
    """

    def __init__(self, store: "ModelStore", spec: ModelSpec, role: str) -> None:
        self.store = store
        self.spec = spec
        self.role = role
        self._model: Any = None
        self._tokenizer: Any = None
        self._fingerprint: str | None = None
        self._local_dir: Path | None = None
        self._peft: Any = None  # PeftModel wrapping this handle's model (base that shares)
        self._adapter_name: str | None = None  # set on PEFT candidates
        self._shared_base: ModelHandle | None = None
        self._run_base: ModelHandle | None = None  # the base this candidate is compared with

    def __repr__(self) -> str:
        state = "loaded" if self._model is not None else "not loaded"
        return f"<ModelHandle {self.role} {self.spec.text!r} ({state})>"

    @property
    def label(self) -> str:
        return self.spec.text

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def adapter_name(self) -> str | None:
        """The PEFT adapter this handle selects (None for full models); loads the model."""
        self.load()
        return self._adapter_name

    @property
    def local_dir(self) -> Path:
        """The directory holding this model's files (GGUF converted on demand)."""
        if self._local_dir is None:
            self._local_dir = self.store._local_dir(self.spec)
        return self._local_dir

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over weights, config and tokenizer files."""
        if self._fingerprint is None:
            if self.spec.kind == "custom" or (self._model is not None and self.store.custom_loaded(self)):
                self._fingerprint = fingerprint_loaded(self.model, self.tokenizer)
            elif self.spec.kind == "peft":
                base_fp = self.store._adapter_base(self).fingerprint
                self._fingerprint = fingerprint_directory(self.local_dir, extra=base_fp)
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
        if self._model is None:
            from . import progress

            with progress.task(f"loading {self.role} {self.label}"):
                self.store._load(self)

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
        self.warn = warn or (lambda msg: None)
        self.check_weights = check_weights
        self._handles: dict[tuple[str, str, str], ModelHandle] = {}
        self._custom: set[int] = set()  # ids of handles a loader hook loaded

    def get(self, spec: str, role: str = "candidate", base: ModelHandle | None = None) -> ModelHandle:
        """A handle for ``spec`` (nothing is loaded yet). ``base`` is the run's base model."""
        parsed = parse_spec(spec)
        # A candidate is compared with one base: an adapter may share that base's weights.
        against = base.spec.location if base is not None and role != "base" else ""
        key = (role, parsed.location + "@" + (parsed.revision or ""), against)
        if key not in self._handles:
            self._handles[key] = ModelHandle(self, parsed, role)
            self._handles[key]._run_base = base if role != "base" else None
        return self._handles[key]

    # -- loading -----------------------------------------------------------------

    def custom_loaded(self, handle: ModelHandle) -> bool:
        return id(handle) in self._custom

    def _local_dir(self, spec: ModelSpec) -> Path:
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
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            )
        except Exception as exc:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
            raise ModelLoadError(
                f"cannot load hub model {spec.text!r}: {why} and it is not in the local Hugging "
                f"Face cache ({type(exc).__name__}: {exc}). Download it on a machine with network "
                "access (huggingface-cli download) or pass a local directory or .gguf file."
            ) from exc
        return Path(path)

    def _adapter_base(self, handle: ModelHandle) -> ModelHandle:
        """The handle of the adapter's base model: the run's base when they match."""
        if handle._shared_base is not None:
            return handle._shared_base
        cfg_path = Path(handle.spec.location) / "adapter_config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"unreadable PEFT adapter config {cfg_path}: {exc}") from exc
        base_ref = cfg.get("base_model_name_or_path")
        run_base = handle._run_base
        if run_base is not None and run_base is not handle and self._same_model(base_ref, run_base, handle):
            handle._shared_base = run_base
            return run_base
        if not base_ref:
            raise ModelLoadError(
                f"PEFT adapter {handle.spec.text!r} does not name its base model "
                "(base_model_name_or_path); pass that base model as --fg-base"
            )
        ref = base_ref
        if not os.path.isabs(ref) and (Path(handle.spec.location) / ref).exists():
            ref = str(Path(handle.spec.location) / ref)
        try:
            other = self.get(ref, role="adapter-base")
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"PEFT adapter {handle.spec.text!r} was trained on {base_ref!r}, which is not the "
                f"run's base and cannot be loaded: {exc}"
            ) from exc
        handle._shared_base = other
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

    def _load(self, handle: ModelHandle) -> None:
        import torch

        if self.custom_loader is not None:
            loaded = self.custom_loader(handle.spec.text, self.device, self.dtype)
            if loaded is not None:
                handle._model, handle._tokenizer = loaded
                self._custom.add(id(handle))
                self._finish(handle)
                return
        if handle.spec.kind == "custom":
            raise ModelLoadError(
                f"no pytest_forgetguard_load_model hook loaded model SPEC {handle.spec.text!r}; "
                "implement the hook in a conftest.py or plugin (see the README)"
            )
        if handle.spec.kind == "peft":
            self._load_adapter(handle)
            return
        directory = handle.local_dir
        if not list(directory.glob("*.safetensors")):
            pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
            hint = (
                f" It has pickle weights ({', '.join(pickles)}), which can run arbitrary code: "
                "re-save with save_pretrained(safe_serialization=True)."
                if pickles
                else ""
            )
            raise ModelLoadError(f"model directory {directory} has no .safetensors weights.{hint}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=self.trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"could not load the tokenizer of {handle.spec.text!r}: {exc}") from exc
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
            raise ModelLoadError(f"could not load model {handle.spec.text!r}: {exc}") from exc
        # A dispatched model is already where accelerate put it; moving it would undo the map.
        handle._model = model if placement else model.to(torch.device(self.device))  # type: ignore[arg-type]
        handle._tokenizer = tokenizer
        self._finish(handle)

    def _load_adapter(self, handle: ModelHandle) -> None:
        require("peft", "peft")
        from peft import PeftModel
        from transformers import AutoTokenizer

        base = self._adapter_base(handle)
        base.load()
        name = "fg_" + hashlib.sha256(handle.spec.location.encode()).hexdigest()[:8]
        try:
            if base._peft is None:
                base._peft = PeftModel.from_pretrained(base._model, handle.spec.location, adapter_name=name)
            else:
                base._peft.load_adapter(handle.spec.location, adapter_name=name)
        except Exception as exc:
            raise ModelLoadError(f"could not load PEFT adapter {handle.spec.text!r}: {exc}") from exc
        base._peft.eval()
        handle._model = base._peft
        handle._adapter_name = name
        adapter_dir = Path(handle.spec.location)
        if any(adapter_dir.glob("tokenizer*")):
            handle._tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
        else:
            handle._tokenizer = base._tokenizer
        self._finish(handle, check=False)
        if self.check_weights:
            for pname, param in base._peft.named_parameters():
                if f".{name}." in pname:
                    _check_finite(handle.spec.text, pname, param)

    def _finish(self, handle: ModelHandle, check: bool = True) -> None:
        model = handle._model
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        tok = handle._tokenizer
        if tok.pad_token_id is None and tok.eos_token_id is not None:
            tok.pad_token = tok.eos_token
        if check and self.check_weights:
            for pname, param in model.named_parameters():
                _check_finite(handle.spec.text, pname, param)


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


def check_compatible(base: ModelHandle, candidate: ModelHandle, allow_vocab_mismatch: bool = False) -> int:
    """Raise unless the two models can be compared token by token.

    Returns the number of vocabulary ids to compare (the shared prefix when
    ``allow_vocab_mismatch`` is set and the sizes differ).
    """
    vb = {i: t for t, i in base.tokenizer.get_vocab().items()}
    vc = {i: t for t, i in candidate.tokenizer.get_vocab().items()}
    shared = min(len(vb), len(vc))
    for i in sorted(set(vb) | set(vc)):
        tb, tc = vb.get(i), vc.get(i)
        if tb != tc:
            if allow_vocab_mismatch and (tb is None or tc is None) and i >= shared:
                break
            raise IncompatibleModelsError(
                f"tokenizers differ at token id {i}: base {base.label!r} has {tb!r}, candidate "
                f"{candidate.label!r} has {tc!r} ({len(vb)} vs {len(vc)} tokens). KL needs both "
                "models to read the same token ids: compare a candidate fine-tuned from this base."
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
