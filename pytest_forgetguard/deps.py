"""Optional dependencies: whether one is installed, and the error that names the extra to install.

>>> available("json")
True
>>> require("no_such_module_here", "plots")
Traceback (most recent call last):
...
pytest_forgetguard.errors.MissingDependencyError: 'no_such_module_here' is required for this feature: pip install "pytest-forgetguard[plots]"
"""

from __future__ import annotations

import importlib.util

from .errors import MissingDependencyError


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):  # a parent missing; a module without a spec (or None)
        return False


def require(module: str, extra: str) -> None:
    """Raise :class:`MissingDependencyError` naming the extra to install unless ``module`` is there."""
    if not available(module):
        raise MissingDependencyError(
            f'{module!r} is required for this feature: pip install "pytest-forgetguard[{extra}]"'
        )
