"""Integration fixtures: lm-eval imported once, and real candidates derived from SmolLM2.

pytester runs in-process and drops modules first imported inside a run; `datasets` (used by lm-eval)
cannot be imported twice in one process (pyarrow registers its types globally), so it is imported here.
"""

from __future__ import annotations

import shutil

import pytest
from builders import build_lora, noisy_copy


@pytest.fixture(scope="session", autouse=True)
def _import_lm_eval_once() -> None:
    import datasets  # noqa: F401
    import lm_eval.evaluator  # noqa: F401
    import lm_eval.models.huggingface  # noqa: F401


@pytest.fixture(scope="session")
def real(smollm2_dir, smollm2_gguf, tmp_path_factory):
    """SmolLM2 and candidates: nudged (noise 0.002 x std), drifted (0.02), damaged (0.08), nan, lora."""
    root = tmp_path_factory.mktemp("real")
    paths = {
        "gguf": smollm2_gguf,
        "base": smollm2_dir,
        "nudged": noisy_copy(smollm2_dir, root / "nudged", 0.002, seed=1),
        "drifted": noisy_copy(smollm2_dir, root / "drifted", 0.02, seed=2),
        "damaged": noisy_copy(smollm2_dir, root / "damaged", 0.08, seed=3),
    }
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[7].self_attn.o_proj.weight[3, 5] = float("nan")
    model.save_pretrained(root / "nan", safe_serialization=True)
    for f in smollm2_dir.glob("tokenizer*"):
        shutil.copy(f, root / "nan")
    paths["nan"] = root / "nan"
    paths["lora"] = build_lora(smollm2_dir, root / "lora", scale=0.02)
    return paths


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytester's in-process runs inherit this session's ``filterwarnings = error``; a user's run would show
    forgetguard's own warnings (an identical candidate, an adapter trained on another base) in its summary,
    not fail on them. Tests that expect one assert it in the output."""
    for item in items:
        item.add_marker(pytest.mark.filterwarnings("default::pytest_forgetguard.errors.ForgetguardWarning"))
