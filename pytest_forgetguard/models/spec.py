"""Model SPECs: the strings that name a model, classified before anything loads.

A SPEC is a local Hugging Face directory, a PEFT adapter directory, a
``.gguf`` file, a hub id (``org/name[@revision]``) or ``scheme://...`` for a
``pytest_forgetguard_load_model`` hook. A string that looks like a path is
read as one, so a typo is reported as a missing path, not a failed hub lookup.

>>> parse_spec("HuggingFaceTB/SmolLM2-135M@main").kind
'hub'
>>> parse_spec("registry://my-model").kind
'custom'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError

SCHEME_RE = re.compile(r"^[A-Za-z][\w+.-]*://")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


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
