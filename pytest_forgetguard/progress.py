"""Progress of long model work (loading, sampling, KL scoring, lm-eval) for people watching a CI log.

Core modules announce work without knowing who listens; the plugin installs a
sink that writes to pytest's terminal. Without a sink nothing is printed.

Example::

    from pytest_forgetguard import progress

    with progress.task("sampling from base", total=len(prompts), unit="prompts") as t:
        for batch in batches:
            ...
            t.advance(len(batch))
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    label: str
    done: int
    total: int | None
    unit: str
    elapsed: float
    finished: bool


Sink = Callable[[Event], None]
_sink: Sink | None = None
_BAR = re.compile(r"\d+%\|")  # a tqdm bar: "Loading weights:  50%|█████     | 10/21"


def set_sink(sink: Sink | None) -> Sink | None:
    """Install ``sink`` (``None`` to silence); returns the previous one so callers can restore it."""
    global _sink
    previous, _sink = _sink, sink
    return previous


class Task:
    """One piece of long work; ``advance`` as it goes, ``finish`` at the end."""

    def __init__(self, label: str, total: int | None = None, unit: str = "") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.start = time.perf_counter()
        self._emit(False)

    def _emit(self, finished: bool) -> None:
        if _sink is not None:
            _sink(Event(self.label, self.done, self.total, self.unit, time.perf_counter() - self.start, finished))

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._emit(False)

    def finish(self) -> None:
        self._emit(True)


@contextmanager
def task(label: str, total: int | None = None, unit: str = "") -> Iterator[Task]:
    """A :class:`Task` that reports its end (also when the work raised: the log shows how far it got)."""
    t = Task(label, total, unit)
    try:
        yield t
    finally:
        t.finish()


def _format(event: Event) -> str:
    count = ""
    if event.total is not None:
        count = f" {event.done}/{event.total}{' ' + event.unit if event.unit else ''}"
    if event.finished:
        return f"forgetguard: {event.label}{count} ({event.elapsed:.1f} s)"
    return f"forgetguard: {event.label}{count} ..."


class TerminalProgress:
    """Writes events to pytest's terminal without breaking its layout.

    ``reporter`` is a pytest ``TerminalReporter`` (duck-typed: ``write``,
    ``write_line``, ``ensure_newline``) and ``tw`` its ``TerminalWriter``
    (``flush``, ``fullwidth``, ``width_of_current_line``).

    - On a terminal, by default, the running step is shown after pytest's
      current line (``forgetguard_newtask.yaml ..  [forgetguard: sampling 12/32]``)
      and erased when it ends: the dots stay on their line.
    - In a log (CI), by default, only steps that run ``log_interval`` seconds
      or more print a line (when they end, and every ``log_interval`` seconds
      while they run), so a long step is never silent and a short one adds nothing.
    - With ``-v`` (``verbose`` >= 1) every step prints a line when it ends.
    """

    def __init__(
        self,
        reporter: Any,
        tty: bool,
        interval: float = 0.5,
        log_interval: float = 30.0,
        capture: Any = None,
        verbose: int = 0,
        tw: Any = None,
    ) -> None:
        self.reporter, self.tty, self.verbose, self.tw = reporter, tty, verbose, tw
        # pytest's capture manager: output written during a test is captured unless capture is suspended.
        self.capture = capture
        self.interval, self.log_interval = interval, log_interval
        self._last = 0.0
        self._open: str | None = None  # label of a line written with "\r" and no newline yet
        self._shown = 0  # characters of the transient status now on screen

    def __call__(self, event: Event) -> None:
        now = time.perf_counter()
        transient = self.tty and not self.verbose and self.tw is not None
        if not event.finished:
            if self.tty and now - self._last < self.interval and (self._open == event.label or transient):
                return
            # In a log: nothing when a task starts, then a line every log_interval seconds.
            if not self.tty and now - max(self._last, now - event.elapsed) < self.log_interval:
                return
        elif not self.tty and not self.verbose and event.elapsed < self.log_interval:
            return  # a short step, in a log: nothing to say
        self._last = now
        if self.capture is not None:
            with self.capture.global_and_fixture_disabled():
                self._dispatch(event, transient)
        else:
            self._dispatch(event, transient)

    def _dispatch(self, event: Event, transient: bool) -> None:
        if transient:
            self._status(event)
        else:
            self._write(event)

    def _status(self, event: Event) -> None:
        """Show (or, when the step ended, erase) a status after pytest's current line, untracked by pytest."""
        import sys

        self.tw.flush()  # pytest's own text first
        out = sys.stdout
        erase = "\b" * self._shown + " " * self._shown + "\b" * self._shown
        if event.finished:
            text = ""
        else:
            room = self.tw.fullwidth - self.tw.width_of_current_line - 4
            text = f" [{_format(event)}]"[: max(room, 0)]
        out.write(erase + text)
        out.flush()
        self._shown = len(text)

    def _write(self, event: Event) -> None:
        text = _format(event)
        if self.tty:
            if self._open is None:
                self.reporter.ensure_newline()
            elif self._open != event.label:  # a nested task: keep the outer one's line
                self.reporter.write("\n")
            self.reporter.write("\r" + text + "\x1b[K")
            self._open = None if event.finished else event.label
            if event.finished:
                self.reporter.write("\n")
        else:
            self.reporter.write_line(text)
        where = getattr(self.reporter, "currentfspath", None)
        if not self.verbose and where is not None and hasattr(self.reporter, "startpath"):
            # Back to pytest's line: the file again, so the next dot lands after it, not alone below.
            import os

            self.reporter.write(f"{os.path.relpath(where, self.reporter.startpath)} ")
        elif hasattr(self.reporter, "currentfspath"):
            self.reporter.currentfspath = None  # pytest prints the file name again before its next result


# -- third-party noise ------------------------------------------------------------------

_quiet = False  # set by the plugin: hide third-party progress bars and known-harmless warnings

# Warnings our own calls into other libraries cause and a user can do nothing about.
HARMLESS_WARNINGS = (
    # peft 0.21 calls a transformers 5 alias deprecated for v6.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


def set_quiet(quiet: bool) -> bool:
    """Whether :func:`third_party_quiet` hides anything (the plugin turns it on unless ``-vv``); returns the old value."""
    global _quiet
    previous, _quiet = _quiet, quiet
    return previous


class _NoBars:
    """A stand-in for ``sys.stderr`` that drops progress bars (tqdm redraws lines with ``\\r``) and passes the rest."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._in_bar = False

    def write(self, text: str) -> int:
        if "\r" in text or _BAR.search(text):
            self._in_bar = True
            return len(text)
        if self._in_bar and not text.strip():  # the newline a closed bar ends with
            self._in_bar = False
            return len(text)
        self._in_bar = False
        return int(self.stream.write(text))

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def third_party_quiet() -> Iterator[None]:
    """Around forgetguard's calls into transformers, peft and lm-eval: their progress bars, info logs and
    known-harmless warnings are not shown (forgetguard's own progress lines say what runs).

    Only while forgetguard's own work runs, so a user's code and its warnings are never hidden; and
    only when the plugin asked for it (:func:`set_quiet`), so library use outside pytest shows everything.
    """
    if not _quiet:
        yield
        return
    import logging
    import sys
    import warnings

    loggers = [logging.getLogger(name) for name in ("transformers", "peft", "lm_eval", "datasets")]
    levels = [lg.level for lg in loggers]
    stderr = sys.stderr
    try:
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.ERROR))
        sys.stderr = _NoBars(stderr)
        with warnings.catch_warnings():
            for category, message in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        sys.stderr = stderr
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
