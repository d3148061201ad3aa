"""Hooks other plugins and conftest files can implement.

Example ``conftest.py``::

    def pytest_forgetguard_load_model(spec, device, dtype):
        if spec.startswith("registry://"):
            model, tokenizer = my_registry.load(spec[len("registry://"):])
            return model.to(device), tokenizer
        return None  # let forgetguard load it
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(firstresult=True)
def pytest_forgetguard_load_model(spec: str, device: str, dtype: str) -> "tuple[Any, Any] | None":
    """Load the model named by ``spec`` yourself.

    Return ``(model, tokenizer)`` — a transformers causal LM already on
    ``device`` and its tokenizer — or ``None`` to use the built-in loaders.
    """
