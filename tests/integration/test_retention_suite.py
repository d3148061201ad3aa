"""Retention checks in suites and fixtures, run by real pytest sessions (tiny models)."""

from __future__ import annotations

import json

import pytest
from helpers import forgetguard_args
from lmeval_tasks import write_tasks

# Every test runs lm-eval on both models.
pytestmark = pytest.mark.slow

SUITE = """
checks:
  - name: keeps-mc
    retention:
      task: tiny_mc
      include_path: tasks
      max_drop: 1.0
  - name: keeps-ppl
    retention:
      task: [tiny_ppl]
      include_path: tasks
      metric: word_perplexity
      max_drop: 1.0e+14         # random tiny models: perplexities of 1e13
      gate: observed            # 6 items: too few for any verdict on a real-valued drop (10 must differ)
"""


@pytest.fixture
def project(pytester):
    write_tasks(pytester.path / "tasks")
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE)
    return pytester


def run(pytester, tiny, *args):
    return pytester.runpytest(*forgetguard_args(tiny["base"], tiny["candidate"], cache=pytester.path / "cache"), *args)


def test_suite_retention_report_and_warm_cache(project, tiny):
    result = run(project, tiny, "--fg-report-json", "r.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*keeps-mc*acc*PASS*", "*keeps-ppl*word_perplexity*PASS*"])
    checks = {c["name"]: c for c in json.loads(project.path.joinpath("r.json").read_text())["checks"]}
    mc = checks["keeps-mc"]
    assert mc["kind"] == "retention" and mc["n"] == 12 and mc["budget"] == 1.0
    assert mc["delta"] == pytest.approx(mc["candidate_value"] - mc["base_value"])
    assert mc["ci_low"] <= mc["delta"] <= mc["ci_high"] and 0 <= mc["p_value"] <= 1
    assert mc["details"]["base_cached"] is False
    ppl = checks["keeps-ppl"]
    assert ppl["p_value"] is None and ppl["details"]["higher_is_better"] is False
    # A rerun with an unchanged base evaluates only the candidate.
    result = run(project, tiny, "--fg-report-json", "r2.json")
    result.assert_outcomes(passed=2)
    rerun = {c["name"]: c for c in json.loads(project.path.joinpath("r2.json").read_text())["checks"]}
    assert all(c["details"]["base_cached"] for c in rerun.values())
    assert rerun["keeps-mc"]["base_value"] == mc["base_value"]
    # --fg-no-cache never reads it.
    result = run(project, tiny, "--fg-no-cache", "--fg-report-json", "r3.json", "-k", "keeps-mc")
    assert not json.loads(project.path.joinpath("r3.json").read_text())["checks"][0]["details"]["base_cached"]


def test_retention_failure_names_the_flipped_items(project, tiny):
    project.makepyfile("""
        import pytest
        from pytest_forgetguard import CapabilityForgotten

        def test_forgets(forgetguard):
            result = forgetguard.retention("tiny_mc", include_path="tasks")
            if result.drop <= 0:
                pytest.skip("this tiny candidate did not lose anything")
            with pytest.raises(CapabilityForgotten) as info:
                forgetguard.assert_retained("tiny_mc", include_path="tasks", max_drop=0.0, name="mc")
            assert "items the base got right and the candidate got wrong" in str(info.value)
    """)
    result = run(project, tiny, "-p", "no:warnings", "test_retention_failure_names_the_flipped_items.py")
    assert result.ret == 0


def test_malformed_retention_check(project):
    project.path.joinpath("forgetguard.yaml").write_text("checks:\n  - {name: r, retention: {task: tiny_mc}}\n")
    result = project.runpytest("--forgetguard")
    result.stdout.fnmatch_lines(["*forgetguard.yaml:2: check 'r': retention: give max_drop and/or max_drop_relative*"])
    project.path.joinpath("forgetguard.yaml").write_text(
        "checks:\n  - {name: r, retention: {task: tiny_mc, max_drop: 0.1, gate: maybe}}\n"
    )
    result = project.runpytest("--forgetguard")
    result.stdout.fnmatch_lines(["*retention.gate: must be one of strict, significant, observed*"])
