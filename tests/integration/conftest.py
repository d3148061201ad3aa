"""pytester runs in-process and drops modules first imported inside them; `datasets` (used by lm-eval)
cannot be imported twice in one process (pyarrow registers its types globally), so import it here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _import_lm_eval_once() -> None:
    import datasets  # noqa: F401
    import lm_eval.evaluator  # noqa: F401
    import lm_eval.models.huggingface  # noqa: F401
