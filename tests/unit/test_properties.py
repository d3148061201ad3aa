"""Property-based tests of the two readers of user files: suites and prompt files.

Whatever bytes or YAML/JSON a user (or an attacker) writes, the reader
either returns a valid result or raises its own error type with a message:
never another exception, never a hang, never a half-valid result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_forgetguard.errors import PromptFileError, SuiteError
from pytest_forgetguard.prompts import load_prompts
from pytest_forgetguard.schema import KIND_KEYS, KINDS, REQUIRED
from pytest_forgetguard.suite import load_suite

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Words a suite is made of, so that generated documents reach deep into the validator (not only
# "unknown top-level key"); plus some that are wrong.
WORDS = sorted(
    {"checks", "models", "defaults", "device", "dtype", "seed", "name", "marks", "skip", "base", "candidate",
     *KINDS, *(k for table in KIND_KEYS.values() for k in table), "prompts.jsonl", "cpu", "float32", "forward",
     "bogus", "tiny_mc"}
)  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(WORDS), inner, max_size=5),
    ),
    max_leaves=30,
)


def check_suite(path: Path) -> None:
    try:
        suite = load_suite(path)
    except SuiteError as exc:
        assert str(exc).startswith(str(path)), exc  # every error names the file
        return
    # A suite that loads is whole: every check has a kind, its required keys, and finite numbers.
    assert suite.checks
    for check in suite.checks:
        assert check.kind in KINDS and check.name.strip()
        for group in REQUIRED[check.kind]:
            assert any(key in check.options for key in group)
        for value in check.options.values():
            if isinstance(value, float):
                assert math.isfinite(value)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_any_bytes_are_a_suite_or_a_suite_error(tmp_path, data):
    path = tmp_path / "forgetguard.yaml"
    path.write_bytes(data)
    check_suite(path)


@SETTINGS
@given(doc=documents)
def test_any_yaml_document_is_a_suite_or_a_suite_error(tmp_path, doc):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "x"}\n')
    path = tmp_path / "forgetguard.yaml"
    path.write_text(yaml.safe_dump(doc))
    check_suite(path)


@SETTINGS
@given(checks=st.lists(st.dictionaries(st.sampled_from(WORDS), documents, max_size=4), min_size=1, max_size=3))
def test_any_list_of_checks_is_a_suite_or_a_suite_error(tmp_path, checks):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "x"}\n')
    path = tmp_path / "forgetguard.yaml"
    path.write_text(yaml.safe_dump({"checks": checks}))
    check_suite(path)


def check_prompts(path: Path) -> None:
    try:
        records = load_prompts(path)
    except PromptFileError as exc:
        assert str(path) in str(exc), exc
        return
    assert records
    for i, rec in enumerate(records):
        assert rec.index == i and rec.source.startswith(f"{path}:")
        assert (rec.prompt is None) != (rec.messages is None)
        assert rec.prompt is None or rec.prompt.strip()
        assert rec.response is None or (isinstance(rec.response, str) and rec.response)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_any_bytes_are_prompts_or_a_prompt_file_error(tmp_path, data):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(data)
    check_prompts(path)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.sampled_from(["prompt", "messages", "response", "role", "content", "user"]),
    ),  # fmt: skip
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["prompt", "messages", "response", "role", "content"]), inner, max_size=3),
    ),
    max_leaves=12,
)


@SETTINGS
@given(lines=st.lists(json_values, max_size=5))
def test_any_json_lines_are_prompts_or_a_prompt_file_error(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in lines))
    check_prompts(path)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"\xef\xbb\xbf" + b'{"prompt": "bom"}\n', None),  # a UTF-8 byte-order mark is fine
        ("\u2028".join(['{"prompt": "a', 'b"}']).encode(), None),  # U+2028 inside a JSON string: one line
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"prompt": "x"}\r\n{"prompt": "y"}\r\n', None),
    ],
)
def test_edge_cases_of_prompt_files(tmp_path, data, message):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(data)
    if message is None:
        assert load_prompts(path)
    else:
        with pytest.raises(PromptFileError, match=message):
            load_prompts(path)
