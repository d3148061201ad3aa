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
    """Writes events to a pytest ``TerminalReporter`` (duck-typed: ``write``, ``write_line``, ``ensure_newline``).

    On a terminal the running line is rewritten in place (at most ``interval``
    seconds apart); in a log (CI) each task prints a line when it ends, and a
    line every ``log_interval`` seconds while it runs, so a long step is never
    silent.
    """

    def __init__(
        self, reporter: Any, tty: bool, interval: float = 0.5, log_interval: float = 30.0, capture: Any = None
    ) -> None:
        self.reporter, self.tty = reporter, tty
        # pytest's capture manager: output written during a test is captured unless capture is suspended.
        self.capture = capture
        self.interval, self.log_interval = interval, log_interval
        self._last = 0.0
        self._open: str | None = None  # label of a line written with "\r" and no newline yet

    def __call__(self, event: Event) -> None:
        now = time.perf_counter()
        if not event.finished:
            if self.tty and self._open == event.label and now - self._last < self.interval:
                return
            # In a log: nothing when a task starts, then a line every log_interval seconds.
            if not self.tty and now - max(self._last, now - event.elapsed) < self.log_interval:
                return
        self._last = now
        if self.capture is not None:
            with self.capture.global_and_fixture_disabled():
                self._write(event)
        else:
            self._write(event)

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
        # pytest prints the file name again before the next result, instead of a bare dot.
        if hasattr(self.reporter, "currentfspath"):
            self.reporter.currentfspath = None
