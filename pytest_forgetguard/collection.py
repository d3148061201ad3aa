"""pytest collection of suite files: one item per check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .errors import CheckFailed, ForgetguardError, SuiteError
from .suite import CheckSpec, Suite, load_suite


class SuiteFile(pytest.File):
    """A ``forgetguard*.yaml`` file; invalid files fail collection with the reason."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            suite = load_suite(self.path)
        except SuiteError as exc:
            raise self.CollectError(str(exc)) from None
        from .plugin import SESSION_KEY

        session = self.config.stash[SESSION_KEY]
        candidates = session.candidate_specs(suite.candidates) or (None,)
        for check in suite.checks:
            for spec in candidates:
                # Several candidates: one item each, named so -k can pick a checkpoint.
                name = check.name if len(candidates) == 1 else f"{check.name}[{candidate_id(spec)}]"
                yield CheckItem.from_parent(self, name=name, check=check, suite=suite, candidate=spec)


def candidate_id(spec: str | None) -> str:
    """A short, readable id for a candidate SPEC (its last path component)."""
    if not spec:
        return "none"
    return spec.rstrip("/").rsplit("/", 1)[-1] or spec


class CheckItem(pytest.Item):
    def __init__(self, *, check: CheckSpec, suite: Suite, candidate: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.suite = suite
        self.candidate = candidate
        self.add_marker(pytest.mark.forgetguard)

    def runtest(self) -> None:
        from .plugin import SESSION_KEY
        from .session import run_check

        session = self.config.stash[SESSION_KEY]
        if not session.settings.enabled:
            pytest.skip("forgetguard is off: run pytest with --forgetguard to enable it")
        try:
            fg = session.forgetguard(self.candidate, name=self.check.name, suite_base=self.suite.base)
        except Exception as exc:
            session.record_error(self.check.name, self.check.kind, self.candidate or "-", exc)
            raise
        run_check(fg, self.check)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        # A failed or invalid check is explained by its message, not by our stack.
        if isinstance(excinfo.value, (CheckFailed, ForgetguardError, ValueError)):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, 0, f"forgetguard {self.check.kind} check: {self.check.name}"
