"""What the pytester-driven tests share: prompt data and the command line of a forgetguard run.

Model paths go on the command line as ``--fg-base=PATH``: pytest chooses its rootdir from the paths
among its arguments, and a model path given as a separate argument would take part in that choice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

# Sentences of Python's own documentation and their continuations: prompts with reference responses.
DOC_PAIRS = [
    ("The for statement", " executes the suite once for each item."),
    ("A class definition", " defines a class object."),
    ("Identifiers", " are unlimited in length."),
    ("Boolean operations", " are or, and and not."),
]


def prompts_jsonl(pairs: Iterable[tuple[str, str]] = DOC_PAIRS) -> str:
    """A JSONL prompt file's text: one ``{"prompt", "response"}`` object per line."""
    return "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs)


def forgetguard_args(base: object, *candidates: object, cache: Path | None = None) -> list[str]:
    """``--forgetguard --fg-base=... --fg-candidate=...`` (and ``--fg-cache-dir=``) for a pytester run."""
    args = ["--forgetguard", f"--fg-base={base}", *(f"--fg-candidate={c}" for c in candidates)]
    return args + ([f"--fg-cache-dir={cache}"] if cache is not None else [])


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` until at most ``leave`` bytes are free."""
    with open(disk / "ballast", "ab") as fh:
        block = b"\0" * 4096
        while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > leave:
            try:
                fh.write(block)
                fh.flush()
            except OSError:
                break
