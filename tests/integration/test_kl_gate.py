"""KL and drift gates through the fixtures, run by real pytest sessions (pytester)."""

from __future__ import annotations

import json

import pytest
from helpers import forgetguard_args, prompts_jsonl

PROMPTS = prompts_jsonl()


@pytest.fixture
def project(pytester):
    pytester.path.joinpath("prompts.jsonl").write_text(PROMPTS)
    return pytester


def run(pytester, tiny, cand, *args):
    return pytester.runpytest(*forgetguard_args(tiny["base"], tiny[cand]), *args)


def test_pass_and_fail_with_an_actionable_message(project, tiny):
    project.makepyfile("""
        def test_within_budget(forgetguard):
            result = forgetguard.assert_kl_budget("prompts.jsonl", budget=100.0, sample_from="dataset")
            assert result.n_prompts == 4 and result.value > 0

        def test_over_budget(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=0.001, sample_from="dataset", name="tight")
    """)
    result = run(project, tiny, "candidate")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*KLBudgetExceeded: KL budget exceeded for candidate*",
            "*kl_forward_mean = * nats/token > budget 0.001 (over by *",
            "*95% CI *..*, n = 4 prompts, * response tokens*",
            "*prompts where the models disagree most:*",
            "*prompt * (mean * over * tokens): *",
            "*token * KL *, base top-1 *, candidate top-1 *",
        ]
    )
    # The traceback ends in the user's test, not in the plugin.
    assert "comparison.py" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*= forgetguard =*", "*tight*kl_forward_mean*FAIL*"])


def test_json_report(project, tiny):
    project.makepyfile("""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=100.0, name="task-kl", max_new_tokens=6)

        def test_drift(forgetguard):
            forgetguard.assert_drift(max_relative_l2=0.01, name="weights")
    """)
    result = run(project, tiny, "candidate", "--fg-report-json", "out/report.json", "--fg-report-md", "out/report.md")
    result.assert_outcomes(passed=1, failed=1)
    data = json.loads(project.path.joinpath("out/report.json").read_text())
    assert data["schema"] == 1
    assert data["base"]["spec"] == str(tiny["base"]) and len(data["base"]["fingerprint"]) == 16
    assert data["candidates"] == [{"spec": str(tiny["candidate"]), "fingerprint": data["candidates"][0]["fingerprint"]}]
    kl, drift = data["checks"]
    assert (kl["name"], kl["kind"], kl["metric"], kl["passed"], kl["n"], kl["budget"]) == (
        "task-kl",
        "kl",
        "kl_forward_mean",
        True,
        4,
        100.0,
    )
    assert kl["ci_low"] <= kl["value"] <= kl["ci_high"] and kl["error"] is None
    assert (drift["name"], drift["kind"], drift["metric"], drift["passed"]) == (
        "weights",
        "drift",
        "relative_l2",
        False,
    )
    assert drift["value"] > 0.01
    md = project.path.joinpath("out/report.md").read_text()
    assert md.startswith("## ❌ forgetguard: 1 of 2 checks failed") and "weight drift of candidate" in md


def test_nan_candidate_never_passes(project, tiny):
    project.makepyfile("""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=1e9, sample_from="dataset", name="nan-kl")
    """)
    result = run(project, tiny, "nan", "--fg-report-json", "r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*NonFiniteError*down_proj.weight has 1 NaN*"])
    check = json.loads(project.path.joinpath("r.json").read_text())["checks"][0]
    assert check["passed"] is False and "NonFiniteError" in check["error"]


def test_incompatible_tokenizer_is_an_error_not_a_pass(project, tiny):
    project.makepyfile("""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=1e9, sample_from="dataset")
    """)
    result = run(project, tiny, "other_vocab")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*IncompatibleModelsError: tokenizers differ at token id*"])


def test_empty_prompt_file(project, tiny):
    project.path.joinpath("empty.jsonl").write_text("")
    project.makepyfile("""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("empty.jsonl", budget=1.0)
    """)
    result = run(project, tiny, "candidate")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*PromptFileError: prompt file empty.jsonl is empty*"])


def test_lora_adapter_candidate_and_model_handles(project, tiny):
    project.makepyfile("""
        def test_handles(base_model, candidate_model, forgetguard):
            assert candidate_model.adapter_name is not None
            assert candidate_model.model is base_model._peft  # weights loaded once
            assert base_model.fingerprint != candidate_model.fingerprint
            result = forgetguard.kl("prompts.jsonl", sample_from="dataset")
            assert 0 < result.value < 10
    """)
    result = run(project, tiny, "lora")
    result.assert_outcomes(passed=1)


def test_several_candidates_parametrize(project, tiny):
    project.makepyfile("""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=1e-4, sample_from="dataset")
    """)
    result = project.runpytest(
        "--forgetguard",
        "--fg-base",
        str(tiny["base"]),
        "--fg-candidate",
        str(tiny["twin"]),
        "--fg-candidate",
        str(tiny["candidate"]),
        "-v",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_kl?*twin?*PASSED*", "*test_kl?*candidate?*FAILED*"])


def test_numbers_in_junit_xml(project, tiny):
    import xml.etree.ElementTree as ET

    project.makepyfile("""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=100.0, sample_from="dataset", name="task-kl")
    """)
    result = run(project, tiny, "candidate", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value") for p in ET.parse(project.path / "junit.xml").iter("property")}
    assert props["forgetguard.task-kl.verdict"] == "PASS"
    assert float(props["forgetguard.task-kl.budget"]) == 100.0 and float(props["forgetguard.task-kl.value"]) > 0
    assert props["forgetguard.task-kl.n"] == "4"
