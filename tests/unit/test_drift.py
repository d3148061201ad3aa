"""Weight drift against a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from pytest_forgetguard.drift import weight_drift
from pytest_forgetguard.models import ModelStore


def numpy_drift(base_dir, cand_dir, tol):
    a = load_file(str(base_dir / "model.safetensors"))
    b = load_file(str(cand_dir / "model.safetensors"))
    d2 = sum(float(((b[k].astype(np.float64) - a[k]) ** 2).sum()) for k in a)
    b2 = sum(float((a[k].astype(np.float64) ** 2).sum()) for k in a)
    changed = sum(int((np.abs(b[k].astype(np.float64) - a[k]) > tol).sum()) for k in a)
    n = sum(a[k].size for k in a)
    return np.sqrt(d2 / b2), changed / n, n


def test_drift_matches_numpy(tiny):
    store = ModelStore()
    base = store.get(str(tiny["base"]), role="base")
    result = weight_drift(base, store.get(str(tiny["candidate"]), base=base), tolerance=1e-3)
    rel, frac, n = numpy_drift(tiny["base"], tiny["candidate"], 1e-3)
    assert result.relative_l2 == pytest.approx(rel, rel=1e-9)
    assert result.changed_fraction == pytest.approx(frac, abs=1e-6)
    assert result.n_params == n
    assert {l.name for l in result.layers} >= {"model.layers.0", "model.layers.1", "model.embed_tokens", "lm_head"}


def test_identical_models_do_not_drift(tiny):
    store = ModelStore()
    base = store.get(str(tiny["base"]), role="base")
    result = weight_drift(base, store.get(str(tiny["twin"]), base=base))
    assert result.relative_l2 == 0.0 and result.changed_fraction == 0.0


def test_lora_drift_uses_effective_weights(tiny):
    import torch
    from reference import load_float64

    store = ModelStore()
    base = store.get(str(tiny["base"]), role="base")
    cand = store.get(str(tiny["lora"]), base=base)
    result = weight_drift(base, cand)
    merged = {k: v.double() for k, v in load_float64(tiny["lora"]).state_dict().items()}
    plain = {k: v.double() for k, v in load_float64(tiny["base"]).state_dict().items()}
    d2 = sum(float(((merged[k] - plain[k]) ** 2).sum()) for k in plain)
    b2 = sum(float((plain[k] ** 2).sum()) for k in plain)
    assert result.relative_l2 == pytest.approx((d2 / b2) ** 0.5, rel=1e-4)
    assert 0 < result.changed_fraction < 0.9
    assert result.n_params == sum(v.numel() for v in plain.values())
    assert isinstance(result.relative_l2, float) and torch.is_tensor(next(iter(merged.values())))
