"""pytest-forgetguard: gate fine-tuned models on drift from their base.

Run ``pytest --forgetguard --fg-base BASE --fg-candidate CANDIDATE``; see the
documentation (docs/) for fixtures, suite files and reports. Public names are importable
from here without importing torch::

    from pytest_forgetguard import KLBudgetExceeded, DriftExceeded
"""

from __future__ import annotations

from .errors import (
    CapabilityForgotten,
    CheckFailed,
    DriftExceeded,
    ForgetguardError,
    ForgetguardWarning,
    IncompatibleModelsError,
    KLBudgetExceeded,
    ModelLoadError,
    NonFiniteError,
    PromptFileError,
    RetentionError,
    SuiteError,
    TokenizerMismatchError,
)

__version__ = "0.2.0.dev0"  # the one place the version is written (pyproject reads it)

__all__ = [
    "CapabilityForgotten",
    "CheckFailed",
    "DriftExceeded",
    "ForgetguardError",
    "ForgetguardWarning",
    "IncompatibleModelsError",
    "KLBudgetExceeded",
    "ModelLoadError",
    "NonFiniteError",
    "PromptFileError",
    "RetentionError",
    "SuiteError",
    "TokenizerMismatchError",
    "__version__",
]
