"""What a directory's safetensors files hold, read from their headers: no tensor is loaded, no torch needed.

A safetensors file is 8 bytes (the header's length), a JSON header naming each
tensor's dtype, shape and byte range, then the data. Reading the header alone
says whether the file is whole (a truncated download is not), each tensor's
shape (to name a vocabulary that does not fit ``config.json``) and the dtype
the weights were saved in.

Example::

    header = read_header(Path("models/base/model.safetensors"))  # {name: {"dtype", "shape", "data_offsets"}}
    saved_dtype(Path("models/base"))                               # 'bfloat16'
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

# A header is a few MB even for large models; a length beyond this is not a safetensors file.
MAX_HEADER = 100_000_000
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "BF16": "bfloat16", "F16": "float16"}


class UnreadableWeights(ValueError):
    """A weights file that is not a whole safetensors file; the message says what is wrong with it."""


def read_header(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file, ``{name: {"dtype", "shape", "data_offsets"}}`` (``__metadata__`` left out).

    Raises :class:`UnreadableWeights` when the file is empty, is not safetensors, or is shorter than its
    header says (truncated).
    """
    size = path.stat().st_size
    if size == 0:
        raise UnreadableWeights("it is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UnreadableWeights(f"it is {size} bytes, too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise UnreadableWeights(
                f"it is not a safetensors file, or its start is damaged: its first 8 bytes give a header "
                f"longer than the file ({size:,} bytes)"
            )
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UnreadableWeights(
            "it is not a safetensors file, or its start is damaged: its header is not JSON"
        ) from None
    if not isinstance(header, dict):
        raise UnreadableWeights("it is not a safetensors file: its header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        need = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise UnreadableWeights("it is not a safetensors file: its header lacks tensor byte ranges") from None
    have = size - 8 - length
    if need > have:
        raise UnreadableWeights(
            f"it is truncated: its header says the tensors need {need:,} bytes after it, the file holds {have:,}"
        )
    return tensors


def weight_files(directory: Path, name: str = "*.safetensors") -> list[Path]:
    return sorted(p for p in directory.glob(name) if p.is_file())


def shapes(directory: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{tensor name: (shape, file name)}`` over every safetensors file of ``directory`` (headers only)."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in weight_files(directory):
        for tensor, info in read_header(path).items():
            out[tensor] = (tuple(int(d) for d in info.get("shape", ())), path.name)
    return out


def saved_dtype(directory: Path) -> str | None:
    """The floating-point dtype most of the weights were saved in (``float32``, ``bfloat16``, ...); None when
    the directory has no readable safetensors file or no floating-point tensor."""
    counts: Counter[str] = Counter()
    try:
        for path in weight_files(directory):
            for info in read_header(path).values():
                name = DTYPE_NAMES.get(str(info.get("dtype")))
                if name is not None:
                    numel = 1
                    for d in info.get("shape", ()):
                        numel *= int(d)
                    counts[name] += numel
    except (OSError, UnreadableWeights):
        return None
    return counts.most_common(1)[0][0] if counts else None
