"""The base's pass computed once: shared by candidates, cached across runs, never trusted when wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_kl import dataset_items, pairs_of

from pytest_forgetguard.base_states import BaseStates
from pytest_forgetguard.cache import ResultCache
from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.kl import TokenSequence, teacher_forced_kl
from pytest_forgetguard.models import ModelStore


def sequences(fg):
    return [TokenSequence(i, p, r) for i, (p, r) in enumerate(pairs_of(fg, dataset_items()))]


def values(result):
    return np.concatenate([p.forward for p in result.prompts]), np.concatenate([p.reverse for p in result.prompts])


def count_runs(handle):
    """How many times the model's body runs (a forward hook on its decoder)."""
    calls = []
    handle.raw_model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.fixture
def models(tiny):
    store = ModelStore(device="cpu", dtype="float32")
    base = store.get(str(tiny["base"]), role="base")
    cands = [store.get(str(tiny[name]), base=base) for name in ("candidate", "twin", "lora")]
    return base, cands


def test_candidates_share_one_base_pass_with_identical_values(models):
    base, cands = models
    seqs = sequences(Forgetguard(base, cands[0]))
    plain = [teacher_forced_kl(base, c, seqs, batch_size=4) for c in cands]
    states = BaseStates(ResultCache(None))
    full = cands[:2]  # full models: the base's decoder runs only for the base (the LoRA one shares it)
    runs = count_runs(base)
    shared = [teacher_forced_kl(base, c, seqs, batch_size=4, base_states=states) for c in full]
    batches = -(-len(seqs) // 4)
    # Per call, a check on a few tokens that body + head give the model's logits (two small passes);
    # the batches once.
    assert len(runs) == batches + 2 * len(full), f"{len(runs)} base passes for {len(full)} candidates"
    shared.append(teacher_forced_kl(base, cands[2], seqs, batch_size=4, base_states=states))
    assert states.misses == batches and states.hits == 2 * batches
    for a, b in zip(plain, shared):  # the very same numbers: the cached states are the computed ones
        np.testing.assert_array_equal(values(a)[0], values(b)[0])
        np.testing.assert_array_equal(values(a)[1], values(b)[1])


def test_a_warm_rerun_reads_the_base_from_disk_and_a_changed_base_misses(tiny, tmp_path, models):
    base, cands = models
    seqs = sequences(Forgetguard(base, cands[0]))
    cold = teacher_forced_kl(base, cands[0], seqs, base_states=BaseStates(ResultCache(tmp_path)))
    files = list((tmp_path / "base-states").rglob("*.safetensors"))
    assert files and all(f.stat().st_mode & 0o777 == 0o644 for f in files)
    warm_states = BaseStates(ResultCache(tmp_path))  # a new process: nothing in memory
    runs = count_runs(base)
    warm = teacher_forced_kl(base, cands[0], seqs, base_states=warm_states)
    assert warm_states.hits == len(files) and warm_states.misses == 0
    assert len(runs) == 2, "only the split check's few tokens ran on the base"
    np.testing.assert_allclose(values(warm)[0], values(cold)[0], rtol=1e-6, atol=0)
    # Another base (other weights, same tokens): its own keys, computed, never served the first one's.
    store = ModelStore(device="cpu", dtype="float32")
    other = store.get(str(tiny["candidate"]), role="base")
    moved = BaseStates(ResultCache(tmp_path))
    teacher_forced_kl(other, store.get(str(tiny["twin"]), base=other), seqs, base_states=moved)
    assert moved.hits == 0 and moved.misses == len(files)


@pytest.mark.parametrize(
    "poison",
    [
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), id="truncated"),
        pytest.param("nan", id="nan-values"),
        pytest.param("other-key", id="another-entry"),
    ],
)
def test_a_poisoned_entry_is_recomputed_with_a_warning(models, tmp_path, poison):
    import torch
    from safetensors.torch import load_file, save_file

    base, cands = models
    seqs = sequences(Forgetguard(base, cands[0]))
    cold = teacher_forced_kl(base, cands[0], seqs, base_states=BaseStates(ResultCache(tmp_path)))
    files = sorted((tmp_path / "base-states").rglob("*.safetensors"))
    target = files[0]
    if poison == "nan":
        t = load_file(str(target))["states"]
        t[0, 0] = float("nan")
        save_file({"states": t}, str(target), metadata={"key": target.stem, "format": "1"})
    elif poison == "other-key":
        target.write_bytes(files[-1].read_bytes())  # a valid file, for another batch
    else:
        poison(target)
    warnings = []
    states = BaseStates(ResultCache(tmp_path, warn=warnings.append))
    again = teacher_forced_kl(base, cands[0], seqs, base_states=states)
    assert len(warnings) == 1 and str(target) in warnings[0] and "recomputing" in warnings[0]
    assert base.failure is None, "a bad cache entry never makes the base unusable"
    np.testing.assert_allclose(values(again)[0], values(cold)[0], rtol=1e-6, atol=0)
    assert torch.isfinite(load_file(str(target))["states"]).all(), "the entry is replaced"


def test_the_session_shares_base_passes_across_candidates_through_the_plugin(pytester, tiny):
    from helpers import forgetguard_args, prompts_jsonl

    pytester.makefile(".ini", pytest="[pytest]\n")
    pytester.path.joinpath("prompts.jsonl").write_text(prompts_jsonl())
    pytester.path.joinpath("forgetguard.yaml").write_text(
        "checks:\n  - name: k\n    kl: {prompts: prompts.jsonl, sample_from: dataset, budget: 100}\n"
    )
    args = [
        *forgetguard_args(tiny["base"], tiny["candidate"], tiny["lora"], cache=pytester.path / "c"),
        "--fg-report-json=r.json",
    ]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=2)
    cold = (pytester.path / "r.json").read_text()
    files = list((pytester.path / "c").rglob("base-states/**/*.safetensors"))
    assert len(files) == 1, "one batch of base states for both candidates"
    result = pytester.runpytest(*args)  # warm: the base's pass comes from disk
    result.assert_outcomes(passed=2)
    import json

    def kl_values(text):
        return [c["value"] for c in json.loads(text)["checks"]]

    assert kl_values((pytester.path / "r.json").read_text()) == pytest.approx(kl_values(cold), rel=1e-6)


# Stores one batch's states again and again, as xdist workers (or ranks on nodes that share a disk) do.
SAME_STATES_WRITER = """
import sys
from pathlib import Path

import torch

from pytest_forgetguard.base_states import BaseStates
from pytest_forgetguard.cache import ResultCache

states = BaseStates(ResultCache(Path(sys.argv[1])))
for _ in range(100):
    states.store(sys.argv[2], torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32))
"""


def test_concurrent_writers_of_one_batch_leave_one_whole_file(tmp_path):
    import torch

    key = "ab" + "0" * 62
    writers = [subprocess.Popen([sys.executable, "-c", SAME_STATES_WRITER, str(tmp_path), key]) for _ in range(2)]
    problems: list[str] = []
    expected = torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32)
    while any(w.poll() is None for w in writers):  # read while they write: never half a file
        hit = BaseStates(ResultCache(tmp_path, warn=problems.append)).load(key, 64, torch.device("cpu"))
        assert hit is None or torch.equal(hit, expected)
    assert [w.wait() for w in writers] == [0, 0] and problems == []
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [Path("base-states") / key[:2] / f"{key}.safetensors"], "one file, no temporary file left"
