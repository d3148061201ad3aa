"""The check that is running now: its name, and the warnings raised while it runs.

Models are shared by every check of a run, so a model that breaks is found
by whichever check touches it first; the error it leaves on its handle
names that check (``found by check 'task-kl'``). Warnings raised deep in
loading or caching (a cache entry recomputed, an adapter trained on another
base) belong to the check that was running: they go to Python's warnings
(pytest's summary) and into that check's record (JSON and Markdown reports).

Example::

    with running_check("task-kl") as notes:
        warn("forgetguard cache entry ... is unusable; recomputing")
    notes  # ['forgetguard cache entry ... is unusable; recomputing']
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import ForgetguardWarning


@dataclass
class _Check:
    name: str
    notes: list[str] = field(default_factory=list)


_CURRENT: contextvars.ContextVar[_Check | None] = contextvars.ContextVar("forgetguard_check", default=None)


@contextlib.contextmanager
def running_check(name: str) -> Iterator[list[str]]:
    """Mark ``name`` as the running check; yields the list its warnings are collected in."""
    check = _Check(name)
    token = _CURRENT.set(check)
    try:
        yield check.notes
    finally:
        _CURRENT.reset(token)


def current_check() -> str | None:
    """The name of the running check, or None outside any check."""
    check = _CURRENT.get()
    return None if check is None else check.name


def current_notes() -> list[str]:
    """The warnings the running check collected so far (a copy; empty outside any check)."""
    check = _CURRENT.get()
    return [] if check is None else list(check.notes)


def note(message: str) -> None:
    """Add ``message`` to the running check's warnings (once), without a Python warning."""
    check = _CURRENT.get()
    if check is not None and message not in check.notes:
        check.notes.append(message)


def warn(message: str, stacklevel: int = 3) -> None:
    """A :class:`ForgetguardWarning` for pytest's summary, and a note in the running check's record."""
    note(message)
    warnings.warn(message, ForgetguardWarning, stacklevel=stacklevel)
