"""YAML suites collected as pytest items, run through the same API as the fixtures."""

from __future__ import annotations

import json

import pytest
from helpers import DOC_PAIRS, prompts_jsonl

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
    data.joinpath("prompts.jsonl").write_text(prompts_jsonl([DOC_PAIRS[0], DOC_PAIRS[2]]))
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


# -- validation: every malformed suite is a collection error that says file:line, check and key -------

CHECK_HEAD = "checks:\n  - name: task-kl\n"


@pytest.mark.parametrize(
    "body, args, expected",
    [
        (
            CHECK_HEAD + "    kl:\n      prompts: data/prompts.jsonl\n      budget: 1\n      bugdet: 2\n",
            [],
            "forgetguard.yaml:6: check 'task-kl': kl: unknown key 'bugdet' (did you mean 'budget'?); expected one of:*",
        ),
        (
            CHECK_HEAD + "    kl:\n      prompts: data/prompts.jsonl\n      budget: high\n",
            [],
            "forgetguard.yaml:5: check 'task-kl': kl.budget: expected a number, got 'high'",
        ),
        (
            CHECK_HEAD + "    kl:\n      prompts: data/missing.jsonl\n      budget: 1\n",
            [],
            "forgetguard.yaml:4: check 'task-kl': kl.prompts: file *missing.jsonl does not exist "
            "(paths are relative to the suite file)",
        ),
        (
            CHECK_HEAD + "    kl:\n      prompts: data/prompts.jsonl\n      budget: -1\n",
            [],
            "forgetguard.yaml:5: check 'task-kl': kl.budget: must be >= 0, got -1",
        ),
        (
            CHECK_HEAD + "    marks: [slow, slw]\n    drift: {max_relative_l2: 1}\n",
            ["--strict-markers"],
            "forgetguard.yaml:3: check 'task-kl': marks: 'slw' not found in `markers` configuration option; "
            "register it under `markers`*",
        ),
        (
            CHECK_HEAD + "    marks: 'not a mark'\n    drift: {max_relative_l2: 1}\n",
            [],
            "forgetguard.yaml:3: check 'task-kl': marks: 'not a mark' is not valid; expected a mark name*",
        ),
        (
            CHECK_HEAD + "    drift: {max_relative_l2: 1\n  - name: other\n",
            [],
            "forgetguard.yaml:4: not valid YAML (column 9): while parsing a flow mapping started on line 3; "
            "expected ',' or '}', but got ':'",
        ),
    ],
    ids=["unknown-key", "wrong-type", "missing-file", "negative-budget", "unregistered-mark", "bad-mark", "yaml"],
)
def test_malformed_suite_is_a_collection_error(suite_project, body, args, expected):
    suite_project.makeini("[pytest]\nmarkers =\n    slow: a slow check\n")
    suite_project.path.joinpath("forgetguard.yaml").write_text(body)
    # Checks before models: a bad suite fails at collection even with a base model that does not exist.
    result = suite_project.runpytest("--forgetguard", "--fg-base", "no/such-model", *args)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting forgetguard.yaml*", expected, "*1 error*"])


# -- marks, skip, -k, -m, --collect-only --------------------------------------------------------------

MARKED = """
checks:
  - name: quick-weights
    drift: {max_relative_l2: 0.5}
  - name: slow-kl
    marks: slow
    kl: {prompts: data/prompts.jsonl, sample_from: dataset, budget: 100}
  - name: nightly-kl
    marks: [slow, nightly]
    kl: {prompts: data/prompts.jsonl, sample_from: dataset, budget: 100}
  - name: parked
    skip: waiting for the merged adapter
    drift: {max_relative_l2: 0.5}
  - name: parked-too
    skip: true
    drift: {max_relative_l2: 0.5}
  - name: not-parked
    skip: false
    drift: {max_relative_l2: 0.5}
"""


@pytest.fixture
def marked_project(suite_project, tiny):
    suite_project.makeini("[pytest]\nmarkers =\n    slow: a slow check\n    nightly: runs at night\n")
    suite_project.path.joinpath("forgetguard.yaml").write_text(MARKED)
    return suite_project


def collected(result):
    return [line for line in result.stdout.lines if "::" in line]


def test_collect_only_lists_every_check_including_skipped_ones(marked_project):
    result = marked_project.runpytest("--collect-only", "-q", "--strict-markers")
    assert collected(result) == [
        f"forgetguard.yaml::{name}"
        for name in ("quick-weights", "slow-kl", "nightly-kl", "parked", "parked-too", "not-parked")
    ]
    assert result.ret == 0


@pytest.mark.parametrize(
    "args, selected",
    [
        (["-m", "slow"], ["slow-kl", "nightly-kl"]),
        (["-m", "nightly"], ["nightly-kl"]),
        (["-m", "not slow"], ["quick-weights", "parked", "parked-too", "not-parked"]),
        (["-m", "forgetguard and not slow and not nightly", "-k", "parked"], ["parked", "parked-too", "not-parked"]),
        (["-k", "kl and not nightly"], ["slow-kl"]),
        (["-k", "nightly"], ["nightly-kl"]),  # -k matches mark names, as for any pytest item
    ],
)
def test_marks_and_keywords_select_checks(marked_project, args, selected):
    result = marked_project.runpytest("--collect-only", "-q", "--strict-markers", *args)
    assert collected(result) == [f"forgetguard.yaml::{name}" for name in selected]


def test_skip_gives_the_reason(marked_project, tiny):
    # -c: model paths on the command line would move pytest's rootdir (and ini search) above them.
    result = marked_project.runpytest(
        "-c",
        "tox.ini",
        "--forgetguard",
        "--fg-base",
        str(tiny["base"]),
        "--fg-candidate",
        str(tiny["candidate"]),
        "-k",
        "parked",
        "-rs",
    )
    # `skip: false` runs; skipped checks load nothing. (pytest shows no line for skip marks.)
    result.assert_outcomes(passed=1, skipped=2, deselected=3)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] forgetguard.yaml: waiting for the merged adapter",
            "SKIPPED [[]1[]] forgetguard.yaml: skipped in the suite file (skip: true)",
        ]
    )


def test_unregistered_mark_without_strict_markers_warns_as_pytest_does(suite_project):
    # A name no other test registers: pytest remembers known marks across in-process runs. The
    # ini filter keeps it a warning here (this repository's own filterwarnings=error reaches in).
    suite_project.makeini("[pytest]\nfilterwarnings =\n    default::pytest.PytestUnknownMarkWarning\n")
    suite_project.path.joinpath("forgetguard.yaml").write_text(
        "checks:\n  - {name: a, marks: never_registered, drift: {max_relative_l2: 1}}\n"
    )
    result = suite_project.runpytest("--collect-only", "-q")
    assert collected(result) == ["forgetguard.yaml::a"]
    result.stdout.fnmatch_lines(["*PytestUnknownMarkWarning: Unknown pytest.mark.never_registered*"])


# -- suite-level defaults, seed, device and dtype ------------------------------------------------------


def test_defaults_merge_under_each_checks_options(suite_project, tiny):
    suite_project.path.joinpath("forgetguard.yaml").write_text(
        f"""
models: {{base: {tiny["base"]}, candidate: {tiny["candidate"]}}}
defaults:
  kl: {{prompts: data/prompts.jsonl, sample_from: dataset, budget: 100}}
checks:
  - name: from-defaults
    kl: {{}}
  - name: own-budget
    kl: {{budget: 1.0e-6}}
"""
    )
    result = suite_project.runpytest("--forgetguard", "--fg-report-json", "r.json")
    result.assert_outcomes(passed=1, failed=1)
    checks = {c["name"]: c for c in json.loads(suite_project.path.joinpath("r.json").read_text())["checks"]}
    assert checks["from-defaults"]["budget"] == 100 and checks["from-defaults"]["passed"]
    assert checks["own-budget"]["budget"] == 1e-6 and not checks["own-budget"]["passed"]
    # The same prompts, read from the defaults by both: the same measured value.
    assert checks["from-defaults"]["value"] == checks["own-budget"]["value"]


SAMPLED = """
{seed}
models: {{base: {base}, candidate: {candidate}}}
checks:
  - name: {name}
    kl: {{prompts: data/prompts.jsonl, sample_from: base, max_new_tokens: 8, budget: 100}}
"""


def test_suite_seed_applies_unless_an_option_gives_one(suite_project, tiny):
    models = {"base": tiny["base"], "candidate": tiny["candidate"]}
    suite_project.path.joinpath("forgetguard_seeded.yaml").write_text(
        SAMPLED.format(seed="seed: 5", name="seeded", **models)
    )
    suite_project.path.joinpath("forgetguard_plain.yaml").write_text(SAMPLED.format(seed="", name="plain", **models))

    def values(*args):
        result = suite_project.runpytest("--forgetguard", "--fg-no-cache", "--fg-report-json", "r.json", *args)
        result.assert_outcomes(passed=2)
        report = json.loads(suite_project.path.joinpath("r.json").read_text())
        return {c["name"]: c["value"] for c in report["checks"]}

    own = values()
    # Responses are sampled with the suite's seed 5 in one file, the default seed in the other.
    assert own["seeded"] != own["plain"]
    forced = values("--fg-seed", "1234")
    assert forced["seeded"] == forced["plain"] == own["plain"]


LOAD_RECORDER = """
def pytest_forgetguard_load_model(spec, device, dtype):
    # Record how forgetguard asks for each model, then let it load the model itself.
    with open({path!r}, "a") as f:
        f.write(f"{{device}} {{dtype}}\\n")
    return None
"""


def test_suite_device_and_dtype_apply_unless_options_give_them(suite_project, tiny):
    loads = suite_project.path / "loads.txt"
    suite_project.makeconftest(LOAD_RECORDER.format(path=str(loads)))
    suite_project.path.joinpath("forgetguard.yaml").write_text(
        f"""
device: cuda:7
dtype: bfloat16
models: {{base: {tiny["base"]}, candidate: {tiny["candidate"]}}}
checks:
  - name: weights
    drift: {{max_relative_l2: 0.5}}
"""
    )
    # No option: the suite's device is used (cuda:7 exists nowhere here, so loading fails).
    result = suite_project.runpytest("--forgetguard")
    result.assert_outcomes(failed=1)
    assert set(loads.read_text().split("\n")) - {""} == {"cuda:7 bfloat16"}
    loads.unlink()
    # The command line (device) and the ini file (dtype) both win over the suite file.
    suite_project.makeini("[pytest]\nforgetguard_dtype = float32\n")
    result = suite_project.runpytest("--forgetguard", "--fg-device", "cpu")
    result.assert_outcomes(passed=1)
    assert set(loads.read_text().split("\n")) - {""} == {"cpu float32"}


def test_suites_with_different_dtypes_load_their_own_models(suite_project, tiny):
    loads = suite_project.path / "loads.txt"
    suite_project.makeconftest(LOAD_RECORDER.format(path=str(loads)))
    for dtype in ("float32", "bfloat16"):
        suite_project.path.joinpath(f"forgetguard_{dtype}.yaml").write_text(
            f"""
device: cpu
dtype: {dtype}
models: {{base: {tiny["base"]}, candidate: {tiny["candidate"]}}}
checks:
  - name: weights-{dtype}
    drift: {{max_relative_l2: 0.5}}
"""
        )
    result = suite_project.runpytest("--forgetguard")
    result.assert_outcomes(passed=2)
    # Base and candidate, once per dtype.
    assert sorted(loads.read_text().split()) == sorted(["cpu", "bfloat16"] * 2 + ["cpu", "float32"] * 2)
