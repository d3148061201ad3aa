"""GGUF files, converted once into a cached safetensors directory that is checked on every read.

transformers loads a ``.gguf`` file (dequantized to float32) in about 20 s
for SmolLM2-135M; the converted copy reloads in about 1 s. The copy's
``COMPLETE`` marker records every file's size and hash and the versions of the
libraries that wrote it, so a copy that was truncated, edited, or written by
another version of forgetguard, transformers or gguf (whose conversion may
differ) is converted again (with a warning), never served.

Example::

    directory = materialize_gguf(Path("SmolLM2-135M-Instruct.Q4_1.gguf"), cache_dir=Path(".cache"))
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..deps import require
from ..errors import ModelLoadError
from ..files import publish_directory, sha256_file

# 2: the COMPLETE marker records every file's size and hash (copies are validated on read).
GGUF_CACHE_VERSION = "2"


def gguf_manifest(directory: Path) -> dict[str, Any]:
    """Size and sha256 of every file of a converted GGUF copy (what its COMPLETE marker records)."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != "COMPLETE"
    }


def converter_versions() -> dict[str, str]:
    """The libraries whose versions decide what a conversion writes (transformers writes its version into
    config.json; gguf reads the tensors)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("transformers", "gguf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def invalid_gguf_copy(target: Path, source_digest: str) -> str | None:
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
    written_with, now = marker.get("libraries"), converter_versions()
    if written_with != now:
        was = ", ".join(f"{k} {v}" for k, v in written_with.items()) if isinstance(written_with, dict) else "unknown"
        return f"written with other libraries ({was}; now {', '.join(f'{k} {v}' for k, v in now.items())})"
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
        if sha256_file(target / name) != info.get("sha256"):
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
    digest = sha256_file(path)[:16]
    root = cache_dir if cache_dir is not None else Path(tempfile.gettempdir()) / f"forgetguard-{os.getpid()}"
    target = root / "gguf" / f"{path.stem}-{digest}-v{GGUF_CACHE_VERSION}"
    if target.exists():
        why = invalid_gguf_copy(target, digest) if (target / "COMPLETE").exists() else "incomplete"
        if why is None:
            return target
        if warn:
            warn(f"forgetguard: discarding the converted GGUF copy at {target} ({why}); converting again")
        shutil.rmtree(target, ignore_errors=True)
    from .. import progress

    with progress.task(f"converting {path.name} from GGUF (once; cached)"), progress.third_party_quiet():
        _convert(path, target, digest)
    return target


def _convert(path: Path, target: Path, digest: str) -> None:
    """Load the GGUF file with transformers (dequantized to float32) and publish it as a safetensors copy."""
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
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        marker = {"source": str(path), "sha256": digest, "version": GGUF_CACHE_VERSION, "files": gguf_manifest(tmp),
                  "libraries": converter_versions()}  # fmt: skip
        (tmp / "COMPLETE").write_text(json.dumps(marker, indent=1), encoding="utf-8")
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":  # a full disk, a read-only cache
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ModelLoadError(
                f"cannot write the converted copy of {path.name} to {target.parent}: {why}; free space there or "
                "choose another cache folder (--fg-cache-dir)"
            ) from None
        raise
    publish_directory(tmp, target)  # False: a concurrent run published the same conversion first, fine
