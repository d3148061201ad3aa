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


# -- history imports: whatever a file holds, an import is whole and valid, or nothing and one error -----------


def _valid_export_line() -> dict:
    import io
    import tempfile

    from pytest_forgetguard.history import History, Run
    from pytest_forgetguard.records import CheckRecord

    base = {"spec": "models/base", "fingerprint": "b" * 16}
    records = [
        CheckRecord(name="task-kl", kind="kl", candidate="c", metric="kl_forward_mean", value=0.1, budget=1.0,
                    passed=True, details={"series": "kl-s"}, base_info=base, candidate_info={"fingerprint": "fc"}),
        CheckRecord(name="code", kind="retention", candidate="c", metric="acc", value=0.7, budget=0.02,
                    passed=True, details={"series": "r-s", "drop": 0.01, "decided_by": "measurement"},
                    base_info=base, candidate_info={"fingerprint": "fc"}),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        h = History(Path(tmp) / "h.sqlite")
        h.add_run(Run("run-1", 1.7e9, "host", "abc"), records)
        out = io.StringIO()
        h.export_jsonl(out)
    return json.loads(out.getvalue())


VALID_LINE = _valid_export_line()


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p in _paths(VALID_LINE) if p]
IMPORTS = settings(SETTINGS, max_examples=120)  # each example is a real import into a new SQLite file
odd_values = st.one_of(json_values, st.sampled_from([1e308, -1e308, 1e9, 4.1e9, "NaN", "nan", "Infinity", "", " "]))


def _set(doc, path, value):
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def check_import(tmp_path: Path, data: bytes, capsys) -> None:
    from pytest_forgetguard.cli import main as cli
    from pytest_forgetguard.history import History

    export, history = tmp_path / "in.jsonl", tmp_path / "h.sqlite"
    history.unlink(missing_ok=True)
    export.write_bytes(data)
    code = cli(["import", str(export), "--history", str(history), "--json"])
    out, err = capsys.readouterr()
    if code != 0:
        assert code == 1 and err.startswith("forgetguard: ") and "Traceback" not in err, err
        assert not history.exists() or History(history).runs() == []  # all or nothing
        return
    # Imported: every stored number is finite and plausible, and every reader of the history works.
    for row in History(history).rows():
        for x in (row.value, row.drop, row.budget):
            assert x is None or (math.isfinite(x) and abs(x) <= 1e100)
        assert isinstance(row.passed, bool) and not (row.passed and row.error)
    for command in (["history", "--json"], ["calibrate", "--json"], ["export"]):
        assert cli([*command, "--history", str(history)]) in (0, 1), command
        _, err = capsys.readouterr()
        assert "Traceback" not in err


@IMPORTS
@given(data=st.binary(max_size=300))
def test_any_bytes_are_an_import_or_one_history_error(tmp_path, data, capsys):
    check_import(tmp_path, data, capsys)


@IMPORTS
@given(path=st.sampled_from(PATHS), value=odd_values, copies=st.integers(1, 3))
def test_any_edit_of_an_export_is_imported_whole_and_valid_or_refused(tmp_path, path, value, copies, capsys):
    line = json.dumps(_set(VALID_LINE, path, value))
    check_import(tmp_path, ("\n".join([line] * copies) + "\n").encode(), capsys)
