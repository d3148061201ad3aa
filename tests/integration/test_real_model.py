"""The real model: SmolLM2-135M-Instruct (from its GGUF file) against candidates derived from it.

Candidates: ``nudged`` (Gaussian noise of 0.002 x each weight's std: near-identical),
``drifted`` (0.02 x std: damaged), ``nan`` (one NaN weight) and a LoRA adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from reference import reference_kl

from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.generation import sample_responses
from pytest_forgetguard.models import ModelStore, fingerprint_directory
from pytest_forgetguard.prompts import encode_prompt, encode_response, load_prompts

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARITH = REPO / "example_suites" / "data" / "arith_prompts.jsonl"


def test_gguf_spec_converts_once_and_matches_the_cached_copy(real, tmp_path):
    store = ModelStore(device="cpu", cache_dir=real["base"].parents[1])
    handle = store.get(str(real["gguf"]), role="base")
    assert handle.spec.kind == "gguf"
    assert handle.local_dir == real["base"]  # the cached conversion is reused, keyed by the file's hash
    assert handle.fingerprint == fingerprint_directory(real["base"])
    assert handle.tokenizer.eos_token == "<|im_end|>" and len(handle.tokenizer) == 49152


def test_kl_on_smollm2_matches_float64_reference(real):
    store = ModelStore(device="cpu")
    base = store.get(str(real["base"]), role="base")
    fg = Forgetguard(base, store.get(str(real["drifted"]), base=base))
    records = load_prompts(ARITH)[:4]
    result = fg.kl(ARITH, sample_from="dataset", limit=4, batch_size=3)
    tok = base.tokenizer
    pairs = [(encode_prompt(tok, r), encode_response(tok, r)) for r in records]
    sampled = fg.kl(ARITH, limit=3, max_new_tokens=12)
    prompts = [encode_prompt(tok, r) for r in records[:3]]
    pairs_sampled = list(zip(prompts, sample_responses(base, prompts, 12, seed=fg.seed)))
    ref_f, ref_r = reference_kl(real["base"], real["drifted"], pairs + pairs_sampled)
    for got, f, r in zip(result.prompts, ref_f, ref_r):
        np.testing.assert_allclose(got.forward, f, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(got.reverse, r, rtol=1e-3, atol=1e-6)
    assert result.value == pytest.approx(np.concatenate(ref_f[:4]).mean(), rel=1e-4)
    assert sampled.value == pytest.approx(np.concatenate(ref_f[4:]).mean(), rel=1e-4)
    assert result.value > 0.01


SUITE = f"""
models:
  base: {{base}}
checks:
  - name: arith-kl
    kl:
      prompts: {ARITH}
      limit: 8
      max_new_tokens: 16
      budget: 0.01
  - name: weights
    drift:
      max_relative_l2: 0.01
"""


@pytest.fixture
def real_suite(pytester, real):
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE.format(base=real["gguf"]))
    return pytester


def test_gate_passes_a_near_identical_candidate(real_suite, real):
    result = real_suite.runpytest("--forgetguard", "--fg-candidate", str(real["nudged"]), "--fg-report-json", "r.json")
    result.assert_outcomes(passed=2)
    report = json.loads(real_suite.path.joinpath("r.json").read_text())
    assert report["base"]["spec"] == str(real["gguf"])
    kl = report["checks"][0]
    assert 0 < kl["value"] < 0.01 and kl["n"] == 8 and kl["passed"]


def test_gate_fails_a_drifted_candidate_with_a_useful_message(real_suite, real):
    result = real_suite.runpytest("--forgetguard", "--fg-candidate", str(real["drifted"]))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*KLBudgetExceeded: KL budget exceeded for candidate*",
            "*kl_forward_mean = * nats/token > budget 0.01*",
            "*prompt * (mean * over * tokens): user: What is*",
            "*DriftExceeded: weight drift of candidate * exceeds its limit: relative_l2 = 0.0*",
            "*arith-kl*FAIL*",
        ]
    )


def test_gate_never_passes_a_nan_candidate(real_suite, real):
    result = real_suite.runpytest("--forgetguard", "--fg-candidate", str(real["nan"]), "--fg-report-json", "r.json")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*NonFiniteError*layers.7.self_attn.o_proj.weight has 1 NaN*"])
    assert not any(c["passed"] for c in json.loads(real_suite.path.joinpath("r.json").read_text())["checks"])


def test_lora_adapter_on_smollm2(real):
    store = ModelStore(device="cpu")
    base = store.get(str(real["base"]), role="base")
    cand = store.get(str(real["lora"]), base=base)
    fg = Forgetguard(base, cand)
    result = fg.kl(ARITH, sample_from="dataset", limit=4)
    assert cand.model is base._peft  # one copy of the 135M weights
    ref_f, _ = reference_kl(
        real["base"],
        real["lora"],
        [(encode_prompt(base.tokenizer, r), encode_response(base.tokenizer, r)) for r in load_prompts(ARITH)[:4]],
    )
    assert result.value == pytest.approx(np.concatenate(ref_f).mean(), rel=1e-3)
    drift = fg.drift()
    assert 0 < drift.relative_l2 < 0.1
    layers = {l.name: l for l in drift.layers}
    # LoRA touched q_proj, v_proj and down_proj only: embeddings and norms are unchanged.
    assert layers["model.embed_tokens"].relative_l2 == 0.0 and layers["model.norm"].relative_l2 == 0.0
    assert 0 < layers["model.layers.3"].changed_fraction < 1


def test_a_poisoned_gguf_copy_is_converted_again_with_a_warning(real, tmp_path):
    """The converted copy records each file's size and hash; a copy whose files changed is never served."""
    import shutil

    from pytest_forgetguard.models import invalid_gguf_copy, materialize_gguf

    cache = tmp_path / "cache"
    target = cache / "gguf" / real["base"].name
    shutil.copytree(real["base"], target)
    digest = target.name.split("-")[-2]
    seen: list[str] = []
    assert materialize_gguf(real["gguf"], cache, seen.append) == target and seen == []  # a whole copy is reused
    original = fingerprint_directory(target)
    # Truncated weights (a full disk, a killed copy): refused without converting anything.
    weights = target / "model.safetensors"
    shutil.copy(weights, tmp_path / "weights")
    with open(weights, "r+b") as fh:
        fh.truncate(1000)
    assert "model.safetensors has another size" in invalid_gguf_copy(target, digest)
    shutil.copy(tmp_path / "weights", weights)
    assert invalid_gguf_copy(target, digest) is None
    # A config edited in place (same size, other content): converted again, with a warning.
    config = target / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"silu"', '"gelu"'))
    assert len(config.read_text()) == len(text)
    assert materialize_gguf(real["gguf"], cache, seen.append) == target
    assert len(seen) == 1 and "config.json changed since it was written" in seen[0] and "converting again" in seen[0]
    assert fingerprint_directory(target) == original and '"silu"' in config.read_text()
    # A marker from an older layout (no file list) is not trusted either.
    marker = json.loads((target / "COMPLETE").read_text())
    (target / "COMPLETE").write_text(json.dumps({"source": marker["source"], "sha256": marker["sha256"]}))
    assert "written by another version" in invalid_gguf_copy(target, digest)
    # A copy written by another transformers (whose config.json says so, and whose conversion may differ):
    # not served either. A cache that outlived an upgrade is converted again, not compared with a new one.
    (target / "COMPLETE").write_text(
        json.dumps({**marker, "libraries": {**marker["libraries"], "transformers": "4.0"}})
    )
    why = invalid_gguf_copy(target, digest)
    assert why is not None and "written with other libraries (transformers 4.0, gguf" in why


def test_a_gguf_conversion_into_a_full_cache_is_one_error_and_leaves_nothing(smollm2_gguf, full_disk):
    """A full disk while the converted copy is written: one load error naming the folder and the fix, and no
    half-written copy that a later run could pick up."""
    from helpers import fill

    from pytest_forgetguard.errors import ModelLoadError
    from pytest_forgetguard.models import materialize_gguf

    (full_disk / "gguf").mkdir()
    fill(full_disk, leave=0)
    with pytest.raises(ModelLoadError, match=r"cannot write the converted copy of .*\.gguf to .*: No space left on "
                                             r"device; free space there or choose another cache folder"):  # fmt: skip
        materialize_gguf(smollm2_gguf, full_disk)
    assert list((full_disk / "gguf").iterdir()) == []
