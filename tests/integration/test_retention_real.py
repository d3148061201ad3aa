"""Retention on the real model with the shipped probes: lm-eval equality, a damaged candidate caught,
a benign one passed, and a warm-cache rerun that evaluates only the candidate."""

from __future__ import annotations

import json

import pytest

from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.lmeval import PROBES_DIR
from pytest_forgetguard.models import ModelStore

pytestmark = pytest.mark.slow


def test_probe_base_score_equals_lm_eval(real, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    store = ModelStore()
    base = store.get(str(real["base"]), role="base")
    result = Forgetguard(base, store.get(str(real["nudged"]), base=base)).retention("fg_elements")
    monkeypatch.chdir(PROBES_DIR)  # lm-eval resolves the probe's relative data file against the cwd
    lm = HFLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=8, device="cpu")
    tm = TaskManager(include_path=str(PROBES_DIR), include_defaults=False)
    ref = simple_evaluate(model=lm, tasks=["fg_elements"], task_manager=tm, bootstrap_iters=0)
    assert result.base_value == ref["results"]["fg_elements"]["acc,none"]
    assert result.n == 102 and result.base_value > 0.45, "the probe is clearly above chance (0.25)"


SUITE = """
checks:
  - name: capitals
    retention:
      task: fg_capitals
      limit: 100
      max_drop: 0.05
  - name: prose
    retention:
      task: fg_prose_ppl
      metric: bits_per_byte
      limit: 30
      max_drop_relative: 0.05
"""


def test_damaged_candidate_fails_benign_passes_warm_cache_reuses_base(pytester, real):
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE)
    common = [
        "--forgetguard",
        "--fg-base",
        str(real["base"]),
        "--fg-cache-dir",
        str(pytester.path / "cache"),
        "-W",
        "default::pytest_forgetguard.ForgetguardWarning",
    ]
    result = pytester.runpytest(*common, "--fg-candidate", str(real["damaged"]), "--fg-report-json", "damaged.json")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*CapabilityForgotten: capability forgotten by candidate 'damaged' (verdict: fail, alpha 0.05, gate: strict)*",
            "*acc base 0.* -> candidate 0.* (delta -0.*, 90% interval *) on * paired items of fg_capitals, McNemar p = *",
            "*FAIL: drop +0.*, one-sided 95% bounds [[]+0.*, +0.*[]] vs allowance 0.05; decided after * of 100 items*",
            "*items the base got right and the candidate got wrong*",
            "*What is the capital of*right*base said*candidate said*",
        ]
    )
    damaged = {c["name"]: c for c in json.loads(pytester.path.joinpath("damaged.json").read_text())["checks"]}
    assert damaged["capitals"]["delta"] < -0.05 and damaged["capitals"]["p_value"] < 0.01
    assert damaged["prose"]["delta"] > 0 and not damaged["prose"]["passed"]
    assert not damaged["capitals"]["details"]["base_cached"]
    # A clearly damaged candidate is stopped at the first look (50 of the 100 items: min_items).
    assert damaged["capitals"]["n"] == 50 and damaged["capitals"]["details"]["items_total"] == 100
    assert damaged["capitals"]["details"]["looks"] == 1

    result = pytester.runpytest(*common, "--fg-candidate", str(real["nudged"]), "--fg-report-json", "nudged.json")
    result.assert_outcomes(passed=2)
    nudged = {c["name"]: c for c in json.loads(pytester.path.joinpath("nudged.json").read_text())["checks"]}
    assert all(c["details"]["base_cached"] for c in nudged.values()), "unchanged base: only the candidate ran"
    assert nudged["capitals"]["base_value"] == damaged["capitals"]["base_value"]
    assert abs(nudged["capitals"]["delta"]) <= 0.02
