"""Suite parsing: valid suites, and errors that start with file:line: and name the check and key."""

from __future__ import annotations

import math
import time

import pytest
import yaml

from pytest_forgetguard.errors import SuiteError
from pytest_forgetguard.suite import (
    DEFAULT_SKIP_REASON,
    is_suite_file,
    load_suite,
    load_yaml_with_lines,
)


@pytest.fixture
def suite_dir(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "tasks").mkdir()
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
    assert (suite.device, suite.dtype, suite.seed) == (None, None, None)
    kl, drift = suite.checks
    assert (kl.name, kl.kind, kl.line) == ("task-kl", "kl", 4)
    assert kl.options["prompts"] == str(suite_dir / "prompts.jsonl")
    assert drift.options == {"max_relative_l2": 0.05}
    assert (drift.marks, drift.skip, drift.line) == ((), None, 6)


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("checks: []", 1, "'checks' must be a non-empty list"),
        ("models: {base: a}", 1, "missing 'checks'"),
        ("[1, 2]", 1, "a suite is a mapping"),
        ("checks:\n  - kl: {prompts: prompts.jsonl, budget: 1}", 2, "check #1: missing 'name'"),
        ("checks:\n  - {name: '  ', drift: {max_relative_l2: 1}}", 2, "check #1: name: must not be empty"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl}}", 2, "check 'a': kl: missing required key 'budget'"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: -1}}", 2, r"check 'a': kl.budget: must be >= 0"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: -1e-3}}", 2, r"kl.budget: must be >= 0"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: .nan}}", 2, r"kl.budget: must be a finite"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: .inf}}", 2, r"kl.budget: must be a finite"),
        (
            "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1, bugdet: 2}}",
            2,
            r"check 'a': kl: unknown key 'bugdet' \(did you mean 'budget'\?\); expected one of: prompts, budget",
        ),
        (
            "checks:\n  - {name: a, kl: {prompts: missing.jsonl, budget: 1}}",
            2,
            r"check 'a': kl.prompts: file .*missing.jsonl does not exist \(paths are relative to the suite file\)",
        ),
        (
            "checks:\n  - {name: a, retention: {task: t, max_drop: 0.1, include_path: nowhere/}}",
            2,
            r"check 'a': retention.include_path: .*nowhere is not a directory",
        ),
        (
            "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: high}}",
            2,
            r"check 'a': kl.budget: expected a number, got 'high'",
        ),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: true}}", 2, "kl.budget: expected a number"),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1, limit: 2.5}}", 2, "kl.limit: expected an int"),
        (
            "checks:\n  - {name: a, retention: {task: x, max_drop: 1, limit: 1.5}}",
            2,
            r"retention.limit: a whole number of items or a fraction in \(0, 1\], got 1.5",
        ),
        ("checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1, max_new_tokens: 0}}", 2, r"must be >= 1"),
        (
            "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1, temperature: 0}}",
            2,
            r"must be >= 0.01, got 0",
        ),
        (
            "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1, direction: up}}",
            2,
            "check 'a': kl.direction: must be one of forward, reverse, symmetric, got 'up'",
        ),
        ("checks:\n  - {name: a, drift: {}}", 2, "check 'a': drift: give max_relative_l2 and/or max_changed_fraction"),
        ("checks:\n  - {name: a, drift: [1]}", 2, "check 'a': drift: expected a mapping, got a list"),
        ("checks:\n  - {name: a, retention: {task: [], max_drop: 1}}", 2, "retention.task: the list is empty"),
        ("checks:\n  - {name: a, retention: {task: [x, 3], max_drop: 1}}", 2, r"retention.task\[1\]: expected a str"),
        ("checks:\n  - {name: a}\n", 2, "check 'a': needs exactly one of kl, drift, retention"),
        (
            "checks:\n  - {name: a, retention: {task: t, metric: acc, limit: 30, max_drop: 0.05}}",
            2,
            r"retention.limit: 30 items can never pass max_drop 0.05 at alpha 0.05: that needs at least 70 items",
        ),
        (
            "checks:\n  - {name: a, retention: {task: [t, u], metric: acc, limit: 30, max_drop: 0.05}}",
            2,
            r"retention.limit: 60 items can never pass",  # the limit is per task: two tasks pool 60
        ),
        (
            "checks:\n  - {name: a, retention: {task: t, metric: acc, limit: 30, max_drop: 0.05, alpha: 0.6}}",
            2,
            r"retention.alpha: must be < 0.5, got 0.6",
        ),
        (
            "checks:\n  - {name: a, retention: {task: t, max_drop: 0.1, on_inconclusive: maybe}}",
            2,
            r"retention.on_inconclusive: must be one of fail, pass, got 'maybe'",
        ),
        (
            "checks:\n  - {name: a, retention: {task: t, max_drop: 0.1, audit_rate: 1.5}}",
            2,
            r"retention.audit_rate: must be <= 1, got 1.5",
        ),
        (
            "checks:\n  - {name: a, drift: {max_relative_l2: 1}, kl: {prompts: prompts.jsonl, budget: 1}}",
            2,
            r"needs exactly one of kl, drift, retention \(it has kl and drift\)",
        ),
        (
            "checks:\n  - {name: a, drift: {max_relative_l2: 1}}\n  - {name: a, drift: {max_relative_l2: 1}}",
            3,
            r"check 'a': duplicate name \(first on line 2\)",
        ),
        ("checks:\n  - {name: a, drift: {max_relative_l2: 1}, mark: x}", 2, r"unknown key 'mark' \(did you mean"),
        ("checks:\n  - {name: a, drift: {max_relative_l2: 1}, marks: 3}", 2, "check 'a': marks: expected a string"),
        ("checks:\n  - {name: a, drift: {max_relative_l2: 1}, marks: [ok, 'b c']}", 2, r"marks\[1\]: 'b c' is not"),
        ("checks:\n  - {name: a, drift: {max_relative_l2: 1}, marks: skipif}", 2, "marks: 'skipif' is not allowed"),
        ("checks:\n  - {name: a, drift: {max_relative_l2: 1}, skip: ''}", 2, "check 'a': skip: must not be empty"),
        ("checks:\n  - {name: a, drift: {max_relative_l2: 1}, skip: 1}", 2, "skip: expected true or false or a str"),
        ("modles: {}\nchecks: []", 1, r"unknown top-level key 'modles' \(did you mean 'models'\?\)"),
        ("models: {base: a, candidates: b}\nchecks: []", 1, "models: unknown key 'candidates'"),
        ("models: {base: ''}\nchecks: []", 1, "models.base: must not be empty"),
        ("device: gpu\nchecks: []", 1, "device: 'gpu' is not valid; expected auto, cpu, cuda, cuda:N or mps"),
        ("dtype: int8\nchecks: []", 1, "dtype: must be one of auto, float32, bfloat16, float16, got 'int8'"),
        ("seed: -3\nchecks: []", 1, "seed: must be >= 0, got -3"),
        ("seed: '7'\nchecks: []", 1, "seed: expected an integer, got '7'"),
        ("defaults: {kl: {budget: -1}}\nchecks: []", 1, "defaults.kl.budget: must be >= 0"),
        ("defaults: {kl: {bugdet: 1}}\nchecks: []", 1, "defaults.kl: unknown key 'bugdet'"),
        ("defaults: {kll: {}}\nchecks: []", 1, r"defaults: unknown key 'kll' \(did you mean 'kl'\?\)"),
        ("defaults: {kl: {prompts: gone.jsonl}}\nchecks: []", 1, r"defaults.kl.prompts: file .*gone.jsonl does not"),
        ("checks: [\n", 2, r"not valid YAML \(column 1\): while parsing a flow node"),
        ("checks:\n  - name: a\n    kl: {budget: 1\n", 4, r"not valid YAML"),
        ("!!python/object:os.system {}", 1, "not valid YAML.*could not determine a constructor"),
        (
            "checks:\n  - name: a\n    drift:\n      max_relative_l2: 1\n      max_relative_l2: 2\n",
            5,
            r"duplicate key 'max_relative_l2' \(first on line 4\)",
        ),
    ],
)
def test_malformed_suites_name_file_line_check_and_key(suite_dir, body, line, message):
    p = write(suite_dir, body)
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(p)
    assert str(info.value).startswith(f"{p}:{line}: ")


def test_errors_point_at_the_line_of_the_key_in_block_style(suite_dir):
    p = write(
        suite_dir,
        """# a comment
checks:
  - name: fine
    drift:
      max_relative_l2: 0.1
  - name: task-kl
    marks: slow
    kl:
      prompts: prompts.jsonl
      direction: forward

      budget: -1
""",
    )
    with pytest.raises(SuiteError) as info:
        load_suite(p, display="suites/forgetguard_x.yaml")
    assert str(info.value) == "suites/forgetguard_x.yaml:12: check 'task-kl': kl.budget: must be >= 0, got -1"


def test_missing_required_key_points_at_the_kind(suite_dir):
    p = write(suite_dir, "checks:\n  - name: a\n    marks: [x]\n    kl:\n      prompts: prompts.jsonl\n")
    with pytest.raises(SuiteError, match=r":4: check 'a': kl: missing required key 'budget' \(in the check or under"):
        load_suite(p)


def test_marks_and_skip(suite_dir):
    p = write(
        suite_dir,
        """
checks:
  - {name: a, drift: {max_relative_l2: 1}, marks: slow}
  - {name: b, drift: {max_relative_l2: 1}, marks: [slow, nightly], skip: true}
  - {name: c, drift: {max_relative_l2: 1}, skip: flaky until the adapter is merged}
  - {name: d, drift: {max_relative_l2: 1}, skip: false}
""",
    )
    a, b, c, d = load_suite(p).checks
    assert (a.marks, a.skip) == (("slow",), None)
    assert (b.marks, b.skip) == (("slow", "nightly"), DEFAULT_SKIP_REASON)
    assert c.skip == "flaky until the adapter is merged"
    assert d.skip is None


def test_suite_level_device_dtype_seed(suite_dir):
    p = write(
        suite_dir,
        "device: cuda:1\ndtype: bfloat16\nseed: 0\nchecks:\n  - {name: a, drift: {tolerance: 0, max_relative_l2: 1}}\n",
    )
    suite = load_suite(p)
    assert (suite.device, suite.dtype, suite.seed) == ("cuda:1", "bfloat16", 0)


def test_defaults_merge_under_each_checks_options(suite_dir):
    p = write(
        suite_dir,
        """
defaults:
  kl: {prompts: prompts.jsonl, budget: 0.1, max_new_tokens: 16}
  drift: {max_relative_l2: 0.5}
  retention: {include_path: tasks, max_drop: 0.02}
checks:
  - name: uses-defaults
    kl: {}
  - name: overrides
    kl: {budget: 0.2, direction: reverse}
  - name: weights
    drift: {tolerance: 1.0e-3}
  - name: qa
    retention: {task: local_qa}
""",
    )
    suite = load_suite(p)
    prompts = str(suite_dir / "prompts.jsonl")
    plain, overrides, weights, qa = suite.checks
    assert plain.options == {"prompts": prompts, "budget": 0.1, "max_new_tokens": 16}
    assert overrides.options == {"prompts": prompts, "budget": 0.2, "max_new_tokens": 16, "direction": "reverse"}
    assert weights.options == {"max_relative_l2": 0.5, "tolerance": 1e-3}
    assert qa.options == {"include_path": str(suite_dir / "tasks"), "max_drop": 0.02, "task": "local_qa"}
    assert suite.defaults["kl"]["budget"] == 0.1
    # The defaults of one check are not shared with another: a check's options are its own dict.
    assert plain.options is not overrides.options


def test_suite_file_names(tmp_path):
    assert is_suite_file(tmp_path / "forgetguard.yaml")
    assert is_suite_file(tmp_path / "forgetguard_math.yml")
    assert is_suite_file(tmp_path / "math.forgetguard.yaml")
    assert not is_suite_file(tmp_path / "config.yaml")
    assert not is_suite_file(tmp_path / "forgetguard.json")


def test_exponent_numbers_are_numbers(suite_dir):
    # PyYAML reads 1e-6 as a string; a budget written that way must still work.
    p = write(suite_dir, "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 1e-6, temperature: 5E-1}}\n")
    options = load_suite(p).checks[0].options
    assert options["budget"] == 1e-6 and options["temperature"] == 0.5


def test_an_exponent_string_is_not_a_string_option(suite_dir):
    # Only number options read exponent strings; a metric named like one stays a string.
    p = write(suite_dir, "checks:\n  - {name: a, retention: {task: t, metric: 1e5, max_drop: 1}}\n")
    assert load_suite(p).checks[0].options["metric"] == "1e5"


def test_relative_model_paths_resolve_against_the_suite(suite_dir):
    (suite_dir / "models" / "base").mkdir(parents=True)
    (suite_dir / "models" / "base" / "config.json").write_text("{}")  # a model directory, as SPECs are checked
    p = write(
        suite_dir,
        "models: {base: models/base, candidate: org/cand}\nchecks:\n  - {name: a, drift: {max_relative_l2: 1}}\n",
    )
    suite = load_suite(p)
    assert suite.base == str(suite_dir / "models" / "base") and suite.candidates == ("org/cand",)


def test_unreadable_file_is_a_suite_error(tmp_path):
    p = tmp_path / "forgetguard.yaml"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SuiteError, match="cannot read"):
        load_suite(p)


def test_empty_file_is_a_suite_error(suite_dir):
    with pytest.raises(SuiteError, match="a suite is a mapping with a 'checks' list, got an empty value"):
        load_suite(write(suite_dir, "# nothing yet\n"))


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: [x, {c: 2.5, d: null}]\n",
        "on: yes\n2020-01-01: 1e-3\n'1': 1\n1: 2\n",
        "base: &b {x: 1, y: [1, 2]}\nuse:\n  <<: *b\n  y: 3\nagain: *b\n",
        "- &x [1, 2]\n- *x\n",
        "",
        "plain scalar",
    ],
)
def test_loader_reads_exactly_what_safe_load_reads(text):
    data, lines = load_yaml_with_lines(text)
    assert data == yaml.safe_load(text)


def test_loader_maps_key_paths_to_lines():
    text = "top: 1\nnested:\n  list:\n    - a\n    -\n      k: v\nbase: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n"
    _, lines = load_yaml_with_lines(text)
    assert lines[("top",)] == 1
    assert lines[("nested", "list")] == 3
    assert lines[("nested", "list", 0)] == 4
    assert lines[("nested", "list", 1, "k")] == 6
    # A merged key is where its value is written: in the anchored mapping.
    assert lines[("use", "x")] == 7 and lines[("use", "y")] == 10


def test_loader_refuses_python_tags():
    with pytest.raises(SuiteError, match="could not determine a constructor"):
        load_yaml_with_lines("!!python/object/apply:os.system ['true']")


def test_nested_aliases_do_not_take_exponential_time():
    # "Billion laughs": each level refers to the previous one nine times.
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
    )
    started = time.perf_counter()
    data, _ = load_yaml_with_lines(text)
    assert time.perf_counter() - started < 5
    assert len(data["a9"]) == 9 and data["a9"][0] is data["a8"]


def test_booleans_and_numbers_keep_their_yaml_types(suite_dir):
    p = write(
        suite_dir,
        "checks:\n  - {name: a, kl: {prompts: prompts.jsonl, budget: 0, allow_vocab_mismatch: true, limit: 3}}\n",
    )
    options = load_suite(p).checks[0].options
    assert options["budget"] == 0 and options["allow_vocab_mismatch"] is True and options["limit"] == 3
    assert not math.isnan(options["budget"])


@pytest.mark.parametrize(
    "models, line, message",
    [
        ("{base: ./gone}", 1, r"models.base: model SPEC '.*/gone': no such file or directory"),
        ("{base: org/base, candidate: [org/a, ../nowhere.gguf]}", 1, r"models.candidate: model SPEC '.*nowhere.gguf'"),
    ],
)
def test_a_model_that_cannot_exist_is_a_collection_error(suite_dir, models, line, message):
    p = write(suite_dir, f"models: {models}\nchecks:\n  - {{name: a, drift: {{max_relative_l2: 1}}}}\n")
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(p)
    assert str(info.value).startswith(f"{p}:{line}: ") and "relative to the suite file" in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ('{"prompt": "x"}\nnot json\n', r"prompts.jsonl:2: not valid JSON"),
        ('{"text": "x"}\n', "give exactly one of 'prompt'"),
    ],
)
def test_a_bad_prompt_file_is_a_collection_error(suite_dir, content, message):
    (suite_dir / "prompts.jsonl").write_text(content)
    p = write(suite_dir, "checks:\n  - name: k\n    kl: {prompts: prompts.jsonl, budget: 1}\n")
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(p)
    assert str(info.value).startswith(f"{p}:3: check 'k': kl.prompts: ")
