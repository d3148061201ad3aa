"""pytest collection of suite files: one item per check (and candidate).

A suite is validated whole before any item exists, so a malformed file is one
collection error (``file:line: check 'name': key: problem``) and nothing loads.
A check's ``marks`` become pytest marks (``-m`` selects them, ``--strict-markers``
refuses unregistered ones) and ``skip`` a skip mark with its reason.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest

from .errors import CheckFailed, ForgetguardError, SuiteError, headline
from .records import candidate_id
from .stash import SESSION_KEY
from .suite import CheckSpec, Suite, load_suite


@dataclasses.dataclass
class _Crash:
    """Where and what, as pytest's own crash location carries it (path, lineno, message)."""

    path: str
    lineno: int
    message: str


class CheckFailureRepr:
    """A check's failure as pytest shows it: the whole message in the failure section, one
    headline in the short test summary (also on CI, where pytest would repeat the whole message)
    and as JUnit's ``message``. Anything that cannot use it (pytest-xdist's transport) gets the text."""

    def __init__(self, text: str, path: os.PathLike[str], line: int | None) -> None:
        self.text = text
        self.reprcrash = _Crash(os.fspath(path), line or 1, headline(text))

    def toterminal(self, tw: Any) -> None:
        for line in self.text.splitlines():
            tw.line(line)

    def __str__(self) -> str:
        return self.text


class SuiteFile(pytest.File):
    """A ``forgetguard*.yaml`` file; invalid files fail collection with the reason."""

    def collect(self) -> Iterator[pytest.Item]:
        display = self._display_path()
        try:
            suite = load_suite(self.path, display=display)
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from None
        session = self.config.stash[SESSION_KEY]
        candidates = session.candidate_specs(suite.candidates) or (None,)
        # Marks of every check are resolved before the first item is made: one bad mark fails the file.
        marks = {check.name: self._marks(suite, check, display) for check in suite.checks}
        for check in suite.checks:
            for spec in candidates:
                # Several candidates: one item each, named so -k can pick a checkpoint.
                name = check.name if len(candidates) == 1 else f"{check.name}[{candidate_id(spec)}]"
                item = CheckItem.from_parent(self, name=name, check=check, suite=suite, candidate=spec)
                for mark in marks[check.name]:
                    item.add_marker(mark)
                if check.skip is not None:
                    item.add_marker(pytest.mark.skip(reason=check.skip))
                yield item

    def _display_path(self) -> str:
        """The file as messages name it: relative to where pytest was started, when it lies below."""
        start = self.config.invocation_params.dir
        return os.path.relpath(self.path, start) if self.path.is_relative_to(start) else str(self.path)

    def _marks(self, suite: Suite, check: CheckSpec, display: str) -> list[pytest.MarkDecorator]:
        out = []
        for i, name in enumerate(check.marks):
            try:
                out.append(getattr(pytest.mark, name))
            except pytest.fail.Exception as exc:
                # --strict-markers refuses an unregistered mark; say where it is written.
                line = suite.line("checks", check.index, "marks", i)
                raise self.CollectError(
                    f"{display}:{line}: check {check.name!r}: marks: {exc.msg}; register it under `markers` "
                    "in your pytest configuration or fix its name"
                ) from None
        return out


class CheckItem(pytest.Item):
    def __init__(self, *, check: CheckSpec, suite: Suite, candidate: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.suite = suite
        self.candidate = candidate
        self.add_marker(pytest.mark.forgetguard)

    def runtest(self) -> None:
        from .session import run_check

        session = self.config.stash[SESSION_KEY]
        if not session.settings.enabled:
            pytest.skip("forgetguard is off: run pytest with --forgetguard to enable it")
        try:
            fg = session.forgetguard(
                self.candidate,
                name=self.check.name,
                suite_base=self.suite.base,
                suite_device=self.suite.device,
                suite_dtype=self.suite.dtype,
                suite_seed=self.suite.seed,
            )
        except Exception as exc:
            session.record_error(self.check.name, self.check.kind, self.candidate or "-", exc)
            raise
        if session.forecasts is not None:
            # A retention check's forecast_from names a KL check of this suite: where that one ran in
            # another process (pytest-xdist), the forecast measures it here, so every process decides alike.
            session.forecasts.suite_kl = {c.name: c.options for c in self.suite.checks if c.kind == "kl"}
        run_check(fg, self.check)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # A failed or invalid check is explained by its message, not by our stack.
        if isinstance(excinfo.value, (CheckFailed, ForgetguardError, ValueError)):
            return CheckFailureRepr(f"{type(excinfo.value).__name__}: {excinfo.value}", self.path, self.check.line)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int, str]:
        # pytest's line numbers here are 0-based; CheckSpec.line is the 1-based line of the check.
        line = (self.check.line or 1) - 1
        # The failure's header: which check, on which candidate (several candidates share a check's name).
        on = f" on {candidate_id(self.candidate)}" if self.candidate else ""
        return self.path, line, f"forgetguard {self.check.kind} check {self.check.name}{on}"
