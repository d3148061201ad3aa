"""Progress lines keep pytest's layout: quiet by default, every step with -v, third-party noise hidden."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path

from pytest_forgetguard import progress
from pytest_forgetguard.progress import Event, TerminalProgress


class Reporter:
    """What TerminalProgress uses of pytest's TerminalReporter, recording what is written."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.currentfspath: Path | None = Path("/proj/forgetguard.yaml")
        self.startpath = Path("/proj")

    def write(self, text: str) -> None:
        self.out.append(text)

    def write_line(self, text: str) -> None:
        self.out.append(f"<line>{text}</line>")

    def ensure_newline(self) -> None:
        self.out.append("<newline>")


class Writer:
    fullwidth, width_of_current_line = 80, 20

    def flush(self) -> None:
        pass


def event(label: str, elapsed: float, finished: bool, done: int = 0, total: int | None = None) -> Event:
    return Event(label, done, total, "prompts", elapsed, finished)


def test_in_a_log_a_short_step_prints_nothing_and_a_long_one_a_line_then_pytests_file_again():
    rep = Reporter()
    sink = TerminalProgress(rep, tty=False, log_interval=30.0)
    sink(event("scoring KL", 0.0, False))
    sink(event("scoring KL", 8.1, True))
    assert rep.out == []
    sink(event("lm-eval fg_code_ppl on candidate nudged", 54.0, True))
    assert rep.out == [
        "<line>forgetguard: lm-eval fg_code_ppl on candidate nudged (54.0 s)</line>",
        "forgetguard.yaml ",
    ]
    assert rep.currentfspath == Path("/proj/forgetguard.yaml")  # pytest goes on after the file it knows


def test_with_v_every_step_prints_a_line():
    rep = Reporter()
    sink = TerminalProgress(rep, tty=False, verbose=1)
    sink(event("scoring KL", 8.1, True, 32, 32))
    assert rep.out == ["<line>forgetguard: scoring KL 32/32 prompts (8.1 s)</line>"]


def test_on_a_terminal_the_running_step_is_shown_after_pytests_line_and_erased(monkeypatch):
    rep, out = Reporter(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    sink = TerminalProgress(rep, tty=True, tw=Writer(), interval=0.0)
    sink(event("sampling from base", 0.1, False, 12, 32))
    shown = " [forgetguard: sampling from base 12/32 prompts ...]"
    assert out.getvalue() == shown
    sink(event("sampling from base", 9.0, True, 32, 32))
    n = len(shown)
    assert out.getvalue() == shown + "\b" * n + " " * n + "\b" * n  # erased: pytest's line is as it was
    assert rep.out == []  # nothing through pytest's writer: its idea of the line stays right


def test_third_party_bars_logs_and_harmless_warnings_are_hidden_only_while_asked(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    previous = progress.set_quiet(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with progress.third_party_quiet():
                sys.stderr.write("\rLoading weights:  50%|█████     | 10/21")
                sys.stderr.write("\n")
                sys.stderr.write("a real message\n")
                logging.getLogger("transformers").info("noise")
                warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
                warnings.warn("the user's own warning", UserWarning, stacklevel=1)
        assert err.getvalue() == "a real message\n"
        assert [str(w.message) for w in caught] == ["the user's own warning"]
        assert sys.stderr is err  # restored
    finally:
        progress.set_quiet(previous)
    with progress.third_party_quiet():  # not asked: everything shows
        sys.stderr.write("\rbar 10%|#")
    assert err.getvalue().endswith("\rbar 10%|#")
