"""Suite parsing: valid suites and errors that name the file, check and key."""

from __future__ import annotations

import pytest

from pytest_forgetguard.errors import SuiteError
from pytest_forgetguard.suite import is_suite_file, load_suite


@pytest.fixture
def suite_dir(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    return tmp_path


def write(d, text, name="forgetguard.yaml"):
    p = d / name
    p.write_text(text)
    return p


def test_minimal_suite(suite_dir):
    p = write(
        suite_dir,
        """
models: {base: org/base, candidate: [org/a, org/b]}
checks:
  - name: task-kl
    kl: {prompts: prompts.jsonl, budget: 0.05, direction: reverse, max_new_tokens: 8}
  - name: weights
    drift: {max_relative_l2: 0.05}
""",
    )
    suite = load_suite(p)
    assert suite.base == "org/base" and suite.candidates == ("org/a", "org/b")
    kl, drift = suite.checks
    assert (kl.name, kl.kind) == ("task-kl", "kl")
    assert kl.options["prompts"] == str(suite_dir / "prompts.jsonl")
    assert drift.options == {"max_relative_l2": 0.05}


@pytest.mark.parametrize(
    "body, message",
    [
        ("checks: []", "'checks' must be a non-empty list"),
        ("[1, 2]", "a suite is a mapping"),
        ("checks:\n  - kl: {prompts: prompts.jsonl, budget: 1}", "check #1: missing 'name'"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl}}", "check 'a': kl: missing required key 'budget'"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: -1}}", r"check 'a': kl.budget: must be >= 0"),
        (
            "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1, bugdet: 2}}",
            "check 'a': kl: unknown key 'bugdet'",
        ),
        (
            "checks:\n  - {name: a, kl: {prompts: missing.jsonl, budget: 1}}",
            r"check 'a': kl.prompts: file .*missing.jsonl does not exist",
        ),
        (
            "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: high}}",
            r"kl.budget: expected int or float, got 'high'",
        ),
        (
            "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1, direction: up}}",
            "kl.direction: must be one of forward, reverse, symmetric",
        ),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: true}}", "kl.budget: expected int or float"),
        ("checks:\n  - {name: a, drift: {}}", "give max_relative_l2 and/or max_changed_fraction"),
        ("checks:\n  - {name: a}\n", "needs exactly one of kl, drift, retention"),
        (
            "checks:\n  - {name: a, drift: {max_relative_l2: 1}}\n  - {name: a, drift: {max_relative_l2: 1}}",
            "check 'a': duplicate name",
        ),
        ("checks:\n  - {name: a, drift: {max_relative_l2: 1}, marks: x}", "check 'a': unknown key 'marks'"),
        ("modles: {}\nchecks: []", "unknown top-level key 'modles'"),
        ("checks: [\n", "not valid YAML"),
        ("!!python/object:os.system {}", "not valid YAML"),
    ],
)
def test_malformed_suites_name_file_check_and_key(suite_dir, body, message):
    p = write(suite_dir, body)
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(p)
    assert str(p) in str(info.value)


def test_suite_file_names(tmp_path):
    assert is_suite_file(tmp_path / "forgetguard.yaml")
    assert is_suite_file(tmp_path / "forgetguard_math.yml")
    assert is_suite_file(tmp_path / "math.forgetguard.yaml")
    assert not is_suite_file(tmp_path / "config.yaml")
    assert not is_suite_file(tmp_path / "forgetguard.json")


def test_exponent_numbers_are_numbers(suite_dir):
    # PyYAML reads 1e-6 as a string; a budget written that way must still work.
    p = write(suite_dir, "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1e-6}}\n")
    assert load_suite(p).checks[0].options["budget"] == 1e-6
