"""Exceptions raised by pytest-forgetguard.

Two families: :class:`ForgetguardError` for bad input or an impossible
computation (the check *errored*), and :class:`CheckFailed` subclasses of
``AssertionError`` for a check that ran and did not hold (the check *failed*).
"""

from __future__ import annotations


class ForgetguardError(Exception):
    """Bad input or a computation that cannot give a trustworthy number."""


class ModelLoadError(ForgetguardError):
    """A model SPEC could not be resolved or loaded."""


class IncompatibleModelsError(ForgetguardError):
    """Base and candidate cannot be compared (tokenizer or vocabulary differ)."""


class TokenizerMismatchError(IncompatibleModelsError):
    """The two tokenizers map some id to different tokens: no option makes the models comparable."""


class NonFiniteError(ForgetguardError):
    """A NaN or infinity in weights, logits or a result: never averaged away."""


class PromptFileError(ForgetguardError):
    """A prompt file is missing, empty or malformed."""


class RetentionError(ForgetguardError):
    """A retention check cannot run: unknown task or metric, unpaired items."""


class SuiteError(ForgetguardError):
    """A suite file is malformed; the message names the file, check and key."""


class MissingDependencyError(ForgetguardError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class ForgetguardWarning(UserWarning):
    """Something a person should know that does not fail a check (e.g. an underpowered test)."""


class CheckFailed(AssertionError):
    """A forgetguard check ran and did not hold. ``result`` holds the numbers."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class KLBudgetExceeded(CheckFailed):
    """The KL between base and candidate exceeds the declared budget."""


class DriftExceeded(CheckFailed):
    """The candidate's weights moved further from the base than allowed."""


class CapabilityForgotten(CheckFailed):
    """The candidate scores worse than the base beyond the allowed drop."""


def headline(text: str) -> str:
    """The one line that stands for a multi-line message (pytest's short test summary, JUnit's
    ``message``): its first line, joined with the second when the first only introduces it.

    >>> headline("KL budget exceeded for 'c':\\n  kl = 0.5 > budget 0.1\\n  95% CI 0.4..0.6")
    "KL budget exceeded for 'c': kl = 0.5 > budget 0.1"
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def own_error(excinfo: object) -> bool:
    """For a module's ``__tracebackhide__``: pytest hides that module's frames under a forgetguard error, whose
    message says what is wrong and the fix (the frames of model loading would only bury it), and shows them
    for any other exception (a bug)."""
    check = getattr(excinfo, "errisinstance", None)
    return bool(check is not None and check(ForgetguardError))
