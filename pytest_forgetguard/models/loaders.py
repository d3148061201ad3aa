"""One loader per kind of SPEC, each returning a :class:`LoadedModel` that passed every load check.

- :func:`load_directory`: a Hugging Face directory (safetensors only), also what a
  converted GGUF file (:func:`~.gguf.materialize_gguf`) and a hub snapshot
  (:func:`hub_snapshot`) are loaded through;
- :func:`load_adapter`: a PEFT adapter on its base model's weights;
- :func:`load_from_hook`: a model a ``pytest_forgetguard_load_model`` hook returns.

Every loader checks what it loads before handing it back: weights finite,
and one forward pass on a short text with finite logits (finite weights can
overflow). Nothing is handed back half-checked, so a model that fails here is
never reachable by a check.

Example::

    options = LoadOptions(device="cpu", dtype="float32")
    loaded = load_directory(Path("models/base"), "models/base", options)
    loaded.model, loaded.tokenizer
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..context import warn as context_warn
from ..deps import require
from ..errors import ModelLoadError, NonFiniteError, own_error
from .spec import ModelSpec
from .weights import UnreadableWeights, read_header, shapes, weight_files

if TYPE_CHECKING:
    import torch

# pytest shows none of this module's frames under a forgetguard error: its message is the report.
__tracebackhide__ = own_error


class AdapterBase(Protocol):
    """What applying an adapter needs from its base (a :class:`~.handle.ModelHandle`), named here so that
    this module does not import the handle that imports it."""

    @property
    def label(self) -> str: ...

    @property
    def raw_model(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    def load(self) -> Any: ...

    def attach_adapter(self, adapter_dir: Path, name: str) -> Any: ...


# Loader hook: (spec, device, dtype) -> (model, tokenizer) or None.
CustomLoader = Callable[[str, str, str], "tuple[Any, Any] | None"]


@dataclass(frozen=True)
class LoadOptions:
    """How models are loaded: where, in which dtype, and what is checked.

    ``device_map`` is an accelerate device map (``sequential``: fill the first
    GPU, spill onto the next) for models larger than one device; None loads
    each model whole onto ``device``. ``check`` turns the finiteness checks off
    (tests of what happens downstream of a broken model use it).
    """

    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None
    trust_remote_code: bool = False
    check: bool = True
    warn: Callable[[str], None] = field(default=context_warn, compare=False)


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


def _torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_from_hook(loader: CustomLoader, spec: ModelSpec, options: LoadOptions) -> LoadedModel | None:
    """What a ``pytest_forgetguard_load_model`` hook returns for ``spec`` (None: no hook took it), checked."""
    loaded = loader(spec.text, options.device, options.dtype)
    if loaded is None:
        return None
    model, tokenizer = loaded
    _prepare(spec.text, model, tokenizer, options)
    return LoadedModel(model, tokenizer, from_hook=True)


def load_directory(directory: Path, label: str, options: LoadOptions) -> LoadedModel:
    """A Hugging Face model directory (``config.json`` + safetensors) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_safetensors(directory, "model")
    _require_whole(directory, label, "model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=options.trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load the tokenizer of {label!r}: {_explain_load_error(exc, directory)}"
        ) from exc
    placement: dict[str, Any] = {}
    if options.device_map is not None:
        require("accelerate", "gguf")
        placement["device_map"] = options.device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=_torch_dtype(options.dtype),
            trust_remote_code=options.trust_remote_code,
            use_safetensors=True,
            **placement,
        )
    except Exception as exc:
        if "ignore_mismatched_sizes" in str(exc):
            # transformers logged its table of mismatched tensors (silenced here) and says "look at the above
            # report": say what did not fit, and the fix, in the error itself.
            raise ModelLoadError(_config_mismatch(directory, label, options)) from None
        raise ModelLoadError(f"could not load model {label!r}: {_explain_load_error(exc, directory)}") from exc
    # A dispatched model is already where accelerate put it; moving it would undo the map.
    if not placement:
        model = model.to(torch.device(options.device))  # type: ignore[arg-type]
    _prepare(label, model, tokenizer, options)
    return LoadedModel(model, tokenizer)


def load_adapter(adapter_dir: Path, label: str, base: AdapterBase, options: LoadOptions) -> LoadedModel:
    """A PEFT adapter applied to ``base``'s weights (shared: ``base`` keeps one ``PeftModel`` for all its adapters)."""
    require("peft", "peft")
    from transformers import AutoTokenizer

    _require_safetensors(adapter_dir, "PEFT adapter")
    _require_whole(adapter_dir, label, "PEFT adapter")
    base.load()
    name = "fg_" + hashlib.sha256(str(adapter_dir).encode()).hexdigest()[:8]
    try:
        with warnings.catch_warnings():
            # PEFT's warning for adapter keys that match no module: _check_applied turns it into a clear error.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = base.attach_adapter(adapter_dir, name)
    except Exception as exc:
        mismatch = _SIZE_MISMATCH.search(str(exc))
        if mismatch is not None:
            raise ModelLoadError(_adapter_mismatch(label, base, mismatch)) from None
        raise ModelLoadError(f"could not load PEFT adapter {label!r}: {_explain_load_error(exc, adapter_dir)}") from exc
    own = [(pname, param) for pname, param in peft_model.named_parameters() if f".{name}." in pname]
    _check_applied(label, adapter_dir, own, name)
    if any(adapter_dir.glob("tokenizer*")):
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
        _prepare(label, None, tokenizer, options)
    else:
        tokenizer = base.tokenizer
    if options.check:
        # The adapter's own weights (the base's were checked when it loaded), then what they compute.
        for pname, param in own:
            _check_finite(label, pname, param)
        peft_model.set_adapter(name)
        _probe_outputs(label, peft_model, tokenizer)
    if _adapter_is_identity(own, name):
        raise ModelLoadError(
            f"PEFT adapter {label!r} changes nothing: every LoRA B matrix is zero (as PEFT initialises them), "
            "so the candidate would compute exactly what its base does and pass every check; was it trained "
            "and saved after training?"
        )
    return LoadedModel(peft_model, tokenizer, adapter_name=name)


def hub_snapshot(spec: ModelSpec) -> Path:
    """The local snapshot of a hub model (downloaded when the hub is reachable); offline, a clear error."""
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


def _prepare(label: str, model: Any, tokenizer: Any, options: LoadOptions) -> None:
    """Eval mode, frozen weights, a pad token; unless ``options.check`` is off, finite weights and outputs."""
    if model is not None:
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        if options.check:
            for pname, param in model.named_parameters():
                _check_finite(label, pname, param)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and options.check:
        _probe_outputs(label, model, tokenizer)


def _check_applied(label: str, adapter_dir: Path, own: list[tuple[str, Any]], name: str) -> None:
    """Every tensor the adapter file holds must have landed on a module of the base. PEFT skips keys that
    match no module without an error, leaving its freshly initialised (no-op) LoRA in their place: such a
    candidate *is* its base and would pass every check."""
    from safetensors import safe_open

    try:
        with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as fh:
            saved = set(fh.keys())
    except Exception as exc:  # a corrupt file: the load above would normally have failed already
        raise ModelLoadError(f"PEFT adapter {label!r}: cannot read adapter_model.safetensors ({exc})") from None
    landed = {pname.replace(f".{name}", "") for pname, _ in own}
    unmatched = sorted(saved - landed)
    if unmatched:
        what = "applies nothing" if len(unmatched) == len(saved) else "applies only part of itself"
        raise ModelLoadError(
            f"PEFT adapter {label!r} {what}: {len(unmatched)} of its {len(saved)} tensors match no module of the "
            f"base (first: {unmatched[0]!r}). Was it trained on another model, or saved with other module "
            "names? Check adapter_config.json's base_model_name_or_path and target_modules"
        )


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


def _require_whole(directory: Path, label: str, what: str) -> None:
    """Every safetensors file must be whole: a truncated or garbled one fails deep inside transformers with a
    traceback hundreds of lines long; here it is one line naming the file."""
    for path in weight_files(directory):
        try:
            read_header(path)
        except (OSError, UnreadableWeights) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ModelLoadError(
                f"could not load {what} {label!r}: weights file {path} cannot be read: {why}. Download it again, "
                "or save the model again with save_pretrained(safe_serialization=True)"
            ) from None


def _config_mismatch(directory: Path, label: str, options: LoadOptions) -> str:
    """What transformers' "ignore_mismatched_sizes" error means: tensors whose saved shape is not the shape
    config.json describes, found by comparing the files' headers with the model config.json builds (on the
    meta device: no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    start = f"could not load model {label!r}: its weights do not fit its config.json"
    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=options.trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, trust_remote_code=options.trust_remote_code
            )
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        saved = shapes(directory)
    except Exception:  # the message below still says what is wrong, without the tensor names
        return (
            f"{start}: some tensors have other shapes than config.json describes. Restore the config.json "
            "these weights were saved with, or save the model again with save_pretrained"
        )
    wrong = [(n, s, f, expected[n]) for n, (s, f) in saved.items() if n in expected and expected[n] != s]
    if not wrong:
        return f"{start}. Restore the config.json these weights were saved with, or save the model again"
    name, got, file, want = wrong[0]
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and got and want and want[0] == vocab and got[0] != vocab:
        rows = [n for n, g, _, w in wrong if g and w and w[0] == vocab and g[0] == got[0]]
        return (
            f"{start}: {file} holds {' and '.join(rows[:2])} with {got[0]} token rows, config.json says vocab_size "
            f"{vocab}. The vocabulary was resized (resize_token_embeddings) without saving config.json: set "
            f'"vocab_size": {got[0]} in {directory / "config.json"}, or save the model again with save_pretrained'
        )
    return (
        f"{start}: {file} holds {name} as {list(got)}, config.json makes it {list(want)}{more}. Restore the "
        "config.json these weights were saved with, or save the model again with save_pretrained"
    )


# torch's load_state_dict message for one tensor of the wrong shape.
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)


def _adapter_mismatch(label: str, base: AdapterBase, found: "re.Match[str]") -> str:
    """An adapter whose saved tensors do not fit the base it is applied to: most often it carries the embedding
    or LM head of a resized vocabulary (modules_to_save) and the base has the original one."""
    name = re.sub(r"\.fg_[0-9a-f]{8}\b", "", found.group(1))  # our adapter name, not the saved key
    got, want = ([int(d) for d in g.split(",") if d.strip()] for g in (found.group(2), found.group(3)))
    vocab = getattr(getattr(base.raw_model, "config", None), "vocab_size", None)
    if got and want and want[0] == vocab and got[0] != vocab:
        return (
            f"could not load PEFT adapter {label!r}: it was saved for a vocabulary of {got[0]} tokens ({name}), "
            f"its base {base.label!r} has {vocab}. It was trained on a base with a resized vocabulary: pass that "
            "model (with its resized embeddings) as the base"
        )
    return (
        f"could not load PEFT adapter {label!r}: its tensor {name} is {got}, the base {base.label!r} makes it "
        f"{want}. It was trained on another model: pass that model as the base"
    )


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
    why = degenerate_logits(logits[0], tokenizer)
    if why is not None:
        raise ModelLoadError(
            f"model {label!r} is degenerate: on a plain input ({PROBE_TEXT!r}, {len(ids)} tokens) {why}. Such a "
            "model scores like any other in lm-eval and could pass a retention check on a small task; a collapsed "
            "fine-tune or zeroed weights?"
        )


def degenerate_logits(logits: "torch.Tensor", tokenizer: Any = None) -> str | None:
    """What makes a model's next-token logits [positions, vocab] useless (None when nothing does): the same
    logit for every token (a flat distribution), the same distribution at every position (the input is
    ignored), or all probability on one token everywhere.

    >>> import torch
    >>> degenerate_logits(torch.zeros(4, 10))
    'its logits are equal for every token at every position (a flat distribution over the 10 tokens)'
    >>> degenerate_logits(torch.randn(4, 10)) is None
    True
    """
    import torch

    x = logits.detach().double()
    finite = torch.isfinite(x)
    scale = max(1.0, float(x[finite].abs().max())) if bool(finite.any()) else 1.0
    x = torch.where(finite, x, torch.full_like(x, -1e30))  # a ruled-out token (-inf) is fine
    spread = x.max(dim=-1).values - x.min(dim=-1).values
    if bool((spread <= 1e-6 * scale).all()):
        return f"its logits are equal for every token at every position (a flat distribution over the {x.shape[-1]} tokens)"
    probs = torch.softmax(x, dim=-1)
    top = probs.argmax(dim=-1)
    if bool((probs.max(dim=-1).values >= 1 - 1e-6).all()) and bool((top == top[0]).all()):
        token = int(top[0])
        shown = repr(tokenizer.decode([token])) if tokenizer is not None else str(token)
        return f"it puts all probability on one token ({shown}, id {token}) at every position"
    if x.shape[0] >= 3 and bool(((x - x[0]).abs() <= 1e-5 * scale).all()):
        return "its next-token distribution is the same at every position: it ignores its input"
    return None


def _check_finite(label: str, name: str, param: "torch.Tensor") -> None:
    import torch

    finite = torch.isfinite(param)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteError(
            f"model {label!r}: parameter {name} has {bad} NaN/inf value(s) of {param.numel()}; "
            "the checkpoint is corrupt or training diverged"
        )
