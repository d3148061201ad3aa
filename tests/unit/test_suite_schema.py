"""The suite schema's generated forms: the shipped JSON Schema and the reference table cannot drift from schema.py.

The JSON Schema is checked the way an editor or CI tool uses it: on ``yaml.safe_load`` data, with
``jsonschema`` (an independent validator), against the example suites, the README's example and
suites our own parser refuses.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from pytest_forgetguard.schema import SCHEMA_FILE, SECTIONS, json_schema, schema_table_markdown
from pytest_forgetguard.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
# The suite reference page of the docs site holds the generated table and the full example.
README = ROOT / "docs" / "suites.md"
# The generator is a script, not part of the package: load it from its file.
_spec = importlib.util.spec_from_file_location("gen_suite_schema", ROOT / "scripts" / "gen_suite_schema.py")
assert _spec is not None and _spec.loader is not None
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)
TABLE_START, TABLE_END = gen.TABLE_START, gen.TABLE_END

VALIDATOR = jsonschema.Draft202012Validator(json_schema())


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    assert text.startswith(f"# {title}\n"), f"{README} is not the {title} page"
    return text


def readme_table_rows() -> set[tuple[str, str]]:
    """(key, where) of every row of the README's suite reference table."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index(TABLE_START) + len(TABLE_START) : text.index(TABLE_END)]
    rows = set()
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows.add((cells[0].strip("`"), cells[1]))
    return rows


def errors(data: object) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(data)]


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(json_schema())
    assert json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_shipped_schema_file_is_the_generated_schema():
    assert SCHEMA_FILE.is_file(), f"{SCHEMA_FILE} is missing: run python scripts/gen_suite_schema.py"
    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == json_schema(), (
        "pytest_forgetguard/suite.schema.json is stale: run python scripts/gen_suite_schema.py"
    )
    assert SCHEMA_FILE.read_text(encoding="utf-8") == gen.schema_text()


def test_every_schema_key_is_in_the_readme_table():
    expected = {(key, where) for where, table in SECTIONS for key in table}
    documented = readme_table_rows()
    assert not expected - documented, f"keys missing from the README table: {sorted(expected - documented)}"
    assert not documented - expected, f"README rows for keys the schema lacks: {sorted(documented - expected)}"


def test_readme_table_is_the_generated_table():
    text = README.read_text(encoding="utf-8")
    table = text[text.index(TABLE_START) + len(TABLE_START) : text.index(TABLE_END)]
    assert table.strip() == schema_table_markdown().strip(), "README table is stale: run scripts/gen_suite_schema.py"


def test_readme_names_the_schema_file_and_editor_modeline():
    section = readme_section("Suite files")
    assert "suite.schema.json" in section and "yaml-language-server: $schema=" in section


@pytest.mark.parametrize("path", sorted((ROOT / "example_suites").glob("*.yaml")), ids=lambda p: p.name)
def test_example_suites_validate(path):
    assert errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []
    load_suite(path)  # and our own parser agrees


def test_readme_full_example_validates():
    section = readme_section("Suite files")
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example, "the README's Suite files section lost its YAML example"
    data = yaml.safe_load(example.group(1))
    assert errors(data) == []
    # It shows every part of the schema: suite-level keys, defaults, marks and skip, all kinds.
    assert {"models", "device", "dtype", "seed", "defaults", "checks"} <= set(data)
    assert {k for check in data["checks"] for k in check} >= {"name", "marks", "skip", "kl", "retention", "drift"}


GOOD_CHECK = {"name": "w", "drift": {"max_relative_l2": 0.1}}


@pytest.mark.parametrize(
    "data",
    [
        {"checks": [GOOD_CHECK]},
        {"checks": [{**GOOD_CHECK, "marks": "slow", "skip": "reason"}]},
        {"checks": [{**GOOD_CHECK, "marks": ["slow", "gpu"], "skip": False}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": "1e-6"}}]},  # PyYAML's 1e-6
        {"defaults": {"kl": {"budget": 0.1}}, "checks": [{"name": "k", "kl": {"prompts": "p.jsonl"}}]},
        {"defaults": {"drift": {"max_changed_fraction": 0.1}}, "checks": [{"name": "w", "drift": {}}]},
        {"device": "cuda:1", "dtype": "bfloat16", "seed": 0, "checks": [GOOD_CHECK]},
        {"models": {"base": "org/b", "candidate": ["a", "b"]}, "checks": [GOOD_CHECK]},
        {"checks": [{"name": "r", "retention": {"task": ["a", "b"], "max_drop_relative": 0.05, "limit": 0.5}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": "1e-2"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": "1e2"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": 0.7}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "max_new_tokens": 8192}}]},
    ],
)
def test_valid_suites_pass(data):
    assert errors(data) == []


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"checks": []},
        {"modles": {}, "checks": [GOOD_CHECK]},
        {"checks": [{"drift": {"max_relative_l2": 0.1}}]},  # no name
        {"checks": [{"name": "w"}]},  # no kind
        {"checks": [{**GOOD_CHECK, "kl": {"prompts": "p", "budget": 1}}]},  # two kinds
        {"checks": [{"name": "w", "drift": {"max_relative_l2": -1}}]},
        {"checks": [{"name": "w", "drift": {"max_relative_l2": "-1e-3"}}]},
        {"checks": [{"name": "w", "drift": {"max_relative_l2": "high"}}]},
        {"checks": [{"name": "w", "drift": {"tolerance": 0.1}}]},  # neither gate
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl"}}]},  # no budget, no default
        {"defaults": {"kl": {"limit": 3}}, "checks": [{"name": "k", "kl": {"prompts": "p.jsonl"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "bugdet": 1}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "direction": "up"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": 0}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": "0e5"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "max_new_tokens": 0}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": 1e-320}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": "1e-320"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": "5e-3"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "temperature": "1.5e2"}}]},
        {"checks": [{"name": "k", "kl": {"prompts": "p.jsonl", "budget": 1, "max_new_tokens": 64000}}]},
        {"checks": [{**GOOD_CHECK, "marks": "not an identifier"}]},
        {"checks": [{**GOOD_CHECK, "marks": ["skipif"]}]},
        {"checks": [{**GOOD_CHECK, "marks": []}]},
        {"checks": [{**GOOD_CHECK, "skip": 1}]},
        {"checks": [{**GOOD_CHECK, "skip": " "}]},
        {"device": "gpu", "checks": [GOOD_CHECK]},
        {"dtype": "int8", "checks": [GOOD_CHECK]},
        {"seed": -1, "checks": [GOOD_CHECK]},
        {"defaults": {"lk": {}}, "checks": [GOOD_CHECK]},
        {"models": {"base": 3}, "checks": [GOOD_CHECK]},
        {"checks": [{"name": "r", "retention": {"task": [], "max_drop": 0.1}}]},
        {"checks": [{"name": "r", "retention": {"task": "a", "max_drop": 0.1, "limit": 1.5}}]},
    ],
)
def test_malformed_suites_fail(data):
    assert errors(data), f"the schema accepted {data}"


def test_gen_script_check_mode_passes():
    assert gen.main(["--check"]) == 0
