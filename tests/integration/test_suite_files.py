"""YAML suites collected as pytest items, run through the same API as the fixtures."""

from __future__ import annotations

import json

import pytest

SUITE = """
models:
  base: {base}
  candidate: {candidate}
checks:
  - name: task-kl
    kl:
      prompts: data/prompts.jsonl
      sample_from: dataset
      budget: {budget}
  - name: sampled-kl
    kl:
      prompts: data/prompts.jsonl
      max_new_tokens: 6
      direction: reverse
      budget: 100
  - name: weights
    drift:
      max_relative_l2: 0.5
"""


@pytest.fixture
def suite_project(pytester, tiny):
    data = pytester.path / "data"
    data.mkdir()
    data.joinpath("prompts.jsonl").write_text(
        "\n".join(
            json.dumps({"prompt": p, "response": r})
            for p, r in [
                ("The for statement", " executes the suite once for each item."),
                ("Identifiers", " are unlimited in length."),
            ]
        )
        + "\n"
    )
    return pytester


def write_suite(pytester, tiny, budget=100, candidate="candidate", name="forgetguard.yaml"):
    pytester.path.joinpath(name).write_text(SUITE.format(base=tiny["base"], candidate=tiny[candidate], budget=budget))


def test_collect_only_lists_checks_without_loading(suite_project, tiny):
    write_suite(suite_project, tiny)
    result = suite_project.runpytest("--forgetguard", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        ["forgetguard.yaml::task-kl", "forgetguard.yaml::sampled-kl", "forgetguard.yaml::weights"]
    )
    assert result.ret == 0


def test_suite_passes_and_fails(suite_project, tiny):
    write_suite(suite_project, tiny, budget=0.0001)
    result = suite_project.runpytest("--forgetguard", "--fg-report-json", "r.json", "-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*forgetguard.yaml::task-kl FAILED*",
            "*KLBudgetExceeded: KL budget exceeded*",
        ]
    )
    checks = {c["name"]: c for c in json.loads(suite_project.path.joinpath("r.json").read_text())["checks"]}
    assert checks["task-kl"]["passed"] is False
    assert checks["sampled-kl"]["metric"] == "kl_reverse_mean" and checks["sampled-kl"]["passed"]
    assert checks["weights"]["kind"] == "drift" and checks["weights"]["passed"]


def test_keyword_selection(suite_project, tiny):
    write_suite(suite_project, tiny)
    result = suite_project.runpytest("--forgetguard", "-k", "weights")
    result.assert_outcomes(passed=1, deselected=2)


def test_command_line_overrides_suite_models(suite_project, tiny):
    write_suite(suite_project, tiny, budget=1e-6, candidate="candidate")
    result = suite_project.runpytest("--forgetguard", "--fg-candidate", str(tiny["twin"]), "-k", "task-kl")
    result.assert_outcomes(passed=1, deselected=2)


def test_malformed_suite_is_a_collection_error(suite_project, tiny):
    suite_project.path.joinpath("forgetguard.yaml").write_text(
        "checks:\n  - name: task-kl\n    kl: {prompts: data/prompts.jsonl, budget: -1}\n"
    )
    result = suite_project.runpytest("--forgetguard")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*forgetguard.yaml: check 'task-kl': kl.budget: must be >= 0*"])


def test_nan_candidate_in_a_suite_errors(suite_project, tiny):
    write_suite(suite_project, tiny, candidate="nan")
    result = suite_project.runpytest("--forgetguard", "-k", "task-kl", "--fg-report-json", "r.json")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines(["*NonFiniteError*NaN*"])
    assert json.loads(suite_project.path.joinpath("r.json").read_text())["checks"][0]["passed"] is False


def test_several_candidates_one_item_each(suite_project, tiny):
    write_suite(suite_project, tiny, budget=1e-4)
    result = suite_project.runpytest(
        "--forgetguard",
        "--fg-candidate",
        str(tiny["twin"]),
        "--fg-candidate",
        str(tiny["candidate"]),
        "-k",
        "task-kl",
        "-v",
    )
    result.assert_outcomes(passed=1, failed=1, deselected=4)
    result.stdout.fnmatch_lines(["*task-kl?twin? PASSED*", "*task-kl?candidate? FAILED*"])
