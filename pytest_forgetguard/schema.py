"""The suite schema: every key a suite file may hold, what it accepts and what it means.

These tables are the single source of truth: :mod:`.suite` validates files
against them, :func:`json_schema` turns them into the shipped
``suite.schema.json`` (for editors) and :func:`schema_table_markdown` into the
README's reference table; ``scripts/gen_suite_schema.py`` writes both, and a
test fails when either is stale.

Example::

    from pytest_forgetguard.schema import KL_KEYS, json_schema
    KL_KEYS["budget"].meaning        # 'the gate: most mean KL allowed, ...'
    json_schema()["$schema"]         # 'https://json-schema.org/draft/2020-12/schema'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import DEFAULT_SEED, DEVICES_RE, DTYPES

KINDS = ("kl", "drift", "retention")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE = Path(__file__).with_name("suite.schema.json")


# Marks that need arguments (or, for skip, have their own key) cannot be given by name alone.
RESERVED_MARKS = ("skip", "skipif", "parametrize", "usefixtures", "filterwarnings")

TYPE_WORDS = {
    "string": "a string",
    "strings": "a list of strings",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "mapping": "a mapping",
    "list": "a list",
}


@dataclass(frozen=True)
class Key:
    """One key of the suite schema: the values it accepts, and its documentation.

    ``types`` are words of :data:`TYPE_WORDS` (``strings`` is a non-empty list
    of strings). ``mapping`` and ``list`` keys hold nested structure that the
    parser walks itself; the other fields describe leaf values.

    Example::

        Key(("integer",), "tokens sampled per prompt", default=64, minimum=1)
    """

    types: tuple[str, ...]
    meaning: str
    default: Any = None  # the value used when the key is absent; None: none (see default_doc)
    default_doc: str = ""  # what the reference table says instead of a literal default
    minimum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    maximum: float | None = None
    count_or_fraction: bool = False  # a fraction in (0, 1] or a whole number (lm-eval's ``limit``)
    enum: tuple[str, ...] = ()
    pattern: str | None = None  # anchored (^...$): Python's re and ECMA-262 (JSON Schema) read it alike
    hint: str = ""  # how to write a value that does not match ``pattern``
    forbidden: tuple[str, ...] = ()  # values that match the pattern and are still refused
    forbidden_hint: str = ""
    path: str | None = None  # "file" or "dir": relative to the suite file, must exist


_NONNEG = {"minimum": 0}
_POSITIVE_INT = {"minimum": 1}

TOP_KEYS: dict[str, Key] = {
    "models": Key(
        ("mapping",),
        "the models to compare, used when the command line, environment and ini file name none",
        default_doc="none",
    ),
    "device": Key(
        ("string",),
        "device for this suite's models; `--fg-device` / `forgetguard_device` win",
        default_doc="`auto`: cuda if available",
        pattern=DEVICES_RE.pattern,
        hint="auto, cpu, cuda, cuda:N or mps",
    ),
    "dtype": Key(
        ("string",),
        "dtype for this suite's models; `--fg-dtype` / `forgetguard_dtype` win",
        default_doc="`auto`: float32 on CPU, bfloat16 on CUDA",
        enum=DTYPES,
    ),
    "seed": Key(
        ("integer",),
        "seed for all sampling in this suite; `--fg-seed` / `forgetguard_seed` win",
        default=DEFAULT_SEED,
        minimum=0,
    ),
    "defaults": Key(
        ("mapping",),
        "option defaults per check kind, merged under each check's own options",
        default_doc="none",
    ),
    "checks": Key(("list",), "the checks, each one pytest item", default_doc="required"),
}
MODEL_KEYS: dict[str, Key] = {
    "base": Key(("string",), "the reference model SPEC (directory, PEFT adapter, `.gguf` file or hub id)"),
    "candidate": Key(("string", "strings"), "the model(s) under test; several make one item per check each"),
}
DEFAULTS_KEYS: dict[str, Key] = {
    "kl": Key(("mapping",), "defaults for every `kl` check (any `kl` option)"),
    "retention": Key(("mapping",), "defaults for every `retention` check (any `retention` option)"),
    "drift": Key(("mapping",), "defaults for every `drift` check (any `drift` option)"),
}
CHECK_KEYS: dict[str, Key] = {
    "name": Key(("string",), "the item's name (unique in the file), so `-k` selects it", default_doc="required"),
    "marks": Key(
        ("string", "strings"),
        "pytest mark name(s) for `-m`; unregistered marks error under `--strict-markers`",
        default_doc="none",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        hint="a mark name: a Python identifier such as slow",
        forbidden=RESERVED_MARKS,
        forbidden_hint="it needs arguments a suite cannot give (to skip a check use its skip: key)",
    ),
    "skip": Key(
        ("boolean", "string"),
        "`true` or a reason string skips the check (the reason is shown with `-rs`)",
        default=False,
    ),
    "kl": Key(("mapping",), "a KL check: its options (exactly one of `kl`, `retention`, `drift`)"),
    "retention": Key(("mapping",), "a retention check: its options (exactly one of `kl`, `retention`, `drift`)"),
    "drift": Key(("mapping",), "a weight-drift check: its options (exactly one of `kl`, `retention`, `drift`)"),
}
KL_KEYS: dict[str, Key] = {
    "prompts": Key(
        ("string",),
        'JSONL file: `{"prompt": ...}` or `{"messages": [...]}`, optional `"response"`',
        path="file",
    ),
    "budget": Key(("number",), "the gate: most mean KL allowed, in nats per response token", minimum=0),
    "direction": Key(
        ("string",),
        "`forward` = KL(base ‖ candidate), `reverse` = KL(candidate ‖ base), `symmetric` = their mean",
        default="forward",
        enum=("forward", "reverse", "symmetric"),
    ),
    "sample_from": Key(
        ("string",),
        "who writes the responses: `base`, `candidate`, or `dataset` (teacher-forced on `response`)",
        default_doc="`base` (`candidate` when reverse)",
        enum=("base", "candidate", "dataset"),
    ),
    # Beyond this a KL check is a long-generation benchmark, and a typo (64000) costs hours before it says so.
    "max_new_tokens": Key(("integer",), "tokens sampled per response", default=64, minimum=1, maximum=8192),
    # Sampling divides logits by the temperature: below 0.01 it is greedy decoding in all but name (and 1e-320
    # overflows to inf); above 100 it is uniform noise. Greedy (0) is not sampling: use sample_from: dataset.
    "temperature": Key(
        ("number",),
        "sampling temperature (1.0: the model's own distribution; for fixed responses use `sample_from: dataset`)",
        default=1.0,
        minimum=0.01,
        maximum=100,
    ),
    "batch_size": Key(("integer",), "prompts per forward pass", default=8, minimum=1),
    "limit": Key(("integer",), "use only the first N prompts", default_doc="all prompts", minimum=1),
    "allow_vocab_mismatch": Key(
        ("boolean",), "compare over the shared vocabulary when the sizes differ (same tokenizer)", default=False
    ),
}
RETENTION_KEYS: dict[str, Key] = {
    "task": Key(
        ("string", "strings"),
        "lm-eval task or group name(s); several are pooled over their items",
    ),
    "include_path": Key(
        ("string",),
        "directory of your lm-eval task YAMLs (the shipped probes are always found)",
        default_doc="the shipped probes and lm-eval's own tasks",
        path="dir",
    ),
    "metric": Key(("string",), "the metric compared", default_doc="the task's first metric"),
    "max_drop": Key(("number",), "the gate: most absolute drop allowed, in metric units", minimum=0),
    "max_drop_relative": Key(
        ("number",), "the gate: most drop allowed as a fraction of the base's score (with both: the tighter)", minimum=0
    ),
    "gate": Key(
        ("string",),
        "`strict`: the verdict at `alpha` (pass on evidence); `significant`: the same, an inconclusive "
        "verdict passes; `observed`: the point estimate against the allowance (no error rate)",
        default="strict",
        enum=("strict", "significant", "observed"),
    ),
    "alpha": Key(
        ("number",),
        "the verdict's error rate: a candidate whose true drop is at the allowance passes with at most this "
        "probability; `--fg-alpha` / `forgetguard_alpha` / `FORGETGUARD_ALPHA` win over it",
        default_doc="`0.05`",
        exclusive_minimum=0,
        exclusive_maximum=0.5,
    ),
    "on_inconclusive": Key(
        ("string",),
        "what an inconclusive verdict (the items cannot decide) does to the build: `fail` or `pass` with a warning",
        default="fail",
        enum=("fail", "pass"),
    ),
    "stop_early": Key(
        ("boolean",),
        "evaluate the candidate on a seeded random order of the items in growing chunks and stop as soon as an "
        "anytime-valid test decides (the error rate stays `alpha`); `--fg-no-early-stop` runs every item",
        default=True,
    ),
    "min_items": Key(
        ("integer",),
        "items the candidate is evaluated on before the first look (later looks at 1.5x as many, and so on); "
        "given above the task's size, every item is evaluated, with a note",
        default_doc="`50`",
        minimum=1,
    ),
    "num_fewshot": Key(("integer",), "few-shot examples per prompt", default_doc="the task's own", minimum=0),
    "limit": Key(
        ("number",),
        "items per task: a count, or a fraction in (0, 1]",
        default_doc="all items",
        exclusive_minimum=0,
        count_or_fraction=True,
    ),
    "filter": Key(("string",), "the lm-eval filter whose scores are compared", default_doc="the task's first filter"),
    "batch_size": Key(("integer",), "lm-eval batch size", default=8, minimum=1),
    "apply_chat_template": Key(("boolean",), "format prompts with the tokenizer's chat template", default=False),
    "backend": Key(
        ("string",),
        "lm-eval backend: `hf` (the loaded model) or `vllm` (CUDA with vLLM installed, else a warning and `hf`)",
        default="hf",
        enum=("hf", "vllm"),
    ),
    "forecast_from": Key(
        ("string",),
        "name of a KL check of the same suite: forecast this check's drop from that KL, calibrated on the run history",
        default_doc="no forecast",
    ),
    "forecast_coverage": Key(
        ("number",),
        "coverage of the forecast's prediction interval shown (conformal); the skip uses the upper bound at `alpha`",
        default=0.9,
        exclusive_minimum=0,
        exclusive_maximum=1,
    ),
    "skip_if_forecast_within": Key(
        ("boolean",),
        "when the forecast's upper bound at `alpha` lies within the allowance (on enough evidence), decide by "
        "forecast without running lm-eval",
        default=False,
    ),
    "audit_rate": Key(
        ("number",),
        "the seeded share of checks a forecast could decide that are measured anyway, so the history learns "
        "how often forecasts hold",
        default=0.1,
        minimum=0,
        maximum=1,
    ),
}
DRIFT_KEYS: dict[str, Key] = {
    "max_relative_l2": Key(
        ("number",), "the gate: most ‖W_cand − W_base‖ / ‖W_base‖ allowed over all weights", minimum=0
    ),
    "max_changed_fraction": Key(("number",), "the gate: most fraction of weights allowed to change", minimum=0),
    "tolerance": Key(("number",), "a weight counts as changed when it moved more than this", default=1e-5, minimum=0),
}
KIND_KEYS: dict[str, dict[str, Key]] = {"kl": KL_KEYS, "retention": RETENTION_KEYS, "drift": DRIFT_KEYS}

# Per kind, groups of keys of which at least one must be given, in the check or in ``defaults``.
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "kl": (("prompts",), ("budget",)),
    "retention": (("task",), ("max_drop", "max_drop_relative")),
    "drift": (("max_relative_l2", "max_changed_fraction"),),
}

# Where each table's keys live, as the README's reference table says it.
SECTIONS: tuple[tuple[str, dict[str, Key]], ...] = (
    ("top level", TOP_KEYS),
    ("`models`", MODEL_KEYS),
    ("`defaults`", DEFAULTS_KEYS),
    ("`checks` item", CHECK_KEYS),
    ("`kl`", KL_KEYS),
    ("`retention`", RETENTION_KEYS),
    ("`drift`", DRIFT_KEYS),
)


# -- the schema for tools and people ---------------------------------------------


def _number_string_pattern(key: Key) -> str:
    # The YAML 1.1 exponent spelling (see EXPONENT_NUMBER), restricted to the key's range: PyYAML reads
    # `temperature: 1e-320` as the string "1e-320", which the parser takes for a number.
    decades = _decades(key)
    if decades is not None:
        # Between two powers of ten: one leading digit, an exponent from the lower bound's up to the upper
        # bound's, and the upper bound itself (an unusual spelling such as 0.5e-1 is refused here only).
        low, high = decades
        exponents = "|".join(_exponent(e) for e in range(low, high))
        return rf"^\+?(?:[1-9](?:\.\d*)?[eE](?:{exponents})|1(?:\.0*)?[eE]{_exponent(high)})$"
    positive = (key.exclusive_minimum is not None and key.exclusive_minimum >= 0) or (key.minimum or 0) > 0
    nonzero = r"(?=[^eE]*[1-9])" if positive else ""
    return rf"^\+?{nonzero}(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"


def _exponent(e: int) -> str:
    return rf"-0*{-e}" if e < 0 else rf"\+?0*{e}"


def _decades(key: Key) -> tuple[int, int] | None:
    """(m, n) when the key's range is exactly [10**m, 10**n], else None."""
    if key.minimum is None or key.maximum is None or key.minimum <= 0:
        return None
    low, high = math.log10(key.minimum), math.log10(key.maximum)
    if not (low.is_integer() and high.is_integer()):
        return None
    return int(low), int(high)


def range_text(key: Key) -> str | None:
    """The key's range as an interval (``[0.01, 100]``, ``(0, 0.5)``) when it has both bounds, else None.

    >>> range_text(KL_KEYS["temperature"]), range_text(KL_KEYS["budget"])
    ('[0.01, 100]', None)
    """
    low = key.minimum if key.minimum is not None else key.exclusive_minimum
    high = key.maximum if key.maximum is not None else key.exclusive_maximum
    if low is None or high is None:
        return None
    return f"{'[' if key.minimum is not None else '('}{low:g}, {high:g}{']' if key.maximum is not None else ')'}"


def _string_schema(key: Key) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if key.enum:
        out["enum"] = list(key.enum)
    else:
        out["pattern"] = key.pattern or r"\S"  # JSON Schema patterns search: at least one non-space
    if key.forbidden:
        out["not"] = {"enum": list(key.forbidden)}
    return out


def _key_schema(key: Key) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if key.minimum is not None:
        bounds["minimum"] = key.minimum
    if key.exclusive_minimum is not None:
        bounds["exclusiveMinimum"] = key.exclusive_minimum
    if key.exclusive_maximum is not None:
        bounds["exclusiveMaximum"] = key.exclusive_maximum
    if key.maximum is not None:
        bounds["maximum"] = key.maximum
    choices: list[dict[str, Any]] = []
    for kind in key.types:
        if kind == "string":
            choices.append(_string_schema(key))
        elif kind == "strings":
            choices.append({"type": "array", "minItems": 1, "items": _string_schema(key)})
        elif kind == "integer":
            choices.append({"type": "integer", **bounds})
        elif kind == "number":
            whole: dict[str, Any] = {"anyOf": [{"maximum": 1}, {"multipleOf": 1}]} if key.count_or_fraction else {}
            choices.append({"type": "number", **bounds, **whole})
            choices.append({"type": "string", "pattern": _number_string_pattern(key)})
        elif kind == "boolean":
            choices.append({"type": "boolean"})
        else:
            raise ValueError(f"no JSON Schema for the structural type {kind!r}")
    out: dict[str, Any] = {"description": key.meaning}
    out.update(choices[0] if len(choices) == 1 else {"anyOf": choices})
    if key.default is not None:
        out["default"] = key.default
    return out


def _at_least_one(group: tuple[str, ...]) -> dict[str, Any]:
    if len(group) == 1:
        return {"required": list(group)}
    return {"anyOf": [{"required": [name]} for name in group]}


def json_schema() -> dict[str, Any]:
    """The suite schema as JSON Schema (draft 2020-12), built from the schema tables.

    Shipped as ``pytest_forgetguard/suite.schema.json`` (``scripts/gen_suite_schema.py``
    writes it) for editors and other tools. It says everything the parser checks
    except what JSON Schema cannot: unique check names, existing files, and the
    check-level marks registry.

    Example::

        import jsonschema, yaml
        jsonschema.validate(yaml.safe_load(open("forgetguard.yaml")), json_schema())
    """
    kinds = {
        kind: {
            "type": "object",
            "description": f"options of a {kind} check (or their defaults)",
            "additionalProperties": False,
            "properties": {name: _key_schema(key) for name, key in table.items()},
        }
        for kind, table in KIND_KEYS.items()
    }
    check_props: dict[str, Any] = {}
    for name, key in CHECK_KEYS.items():
        if name in KIND_KEYS:
            check_props[name] = {"description": key.meaning, "$ref": f"#/$defs/{name}"}
        else:
            check_props[name] = _key_schema(key)
    check = {
        "type": "object",
        "description": "one check: a pytest item",
        "additionalProperties": False,
        "required": ["name"],
        "properties": check_props,
        "oneOf": [{"required": [kind]} for kind in KIND_KEYS],
    }
    top: dict[str, Any] = {}
    for name, key in TOP_KEYS.items():
        if name == "models":
            top[name] = {
                "description": key.meaning,
                "type": "object",
                "additionalProperties": False,
                "properties": {n: _key_schema(k) for n, k in MODEL_KEYS.items()},
            }
        elif name == "defaults":
            top[name] = {
                "description": key.meaning,
                "type": "object",
                "additionalProperties": False,
                "properties": {n: {"description": k.meaning, "$ref": f"#/$defs/{n}"} for n, k in DEFAULTS_KEYS.items()},
            }
        elif name == "checks":
            top[name] = {
                "description": key.meaning + " (names unique in the file)",
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/$defs/check"},
            }
        else:
            top[name] = _key_schema(key)
    # A required option may come from ``defaults``: where the defaults lack it, every check needs it.
    rules = []
    for kind, groups in REQUIRED.items():
        for group in groups:
            rules.append(
                {
                    "if": {
                        "required": ["defaults"],
                        "properties": {"defaults": {"required": [kind], "properties": {kind: _at_least_one(group)}}},
                    },
                    "else": {
                        "properties": {
                            "checks": {
                                "items": {
                                    "if": {"required": [kind]},
                                    "then": {"properties": {kind: _at_least_one(group)}},
                                }
                            }
                        }
                    },
                }
            )
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "pytest-forgetguard suite",
        "description": "A forgetguard*.yaml suite file: checks of a fine-tuned model against its base. "
        "Generated from pytest_forgetguard/suite.py by scripts/gen_suite_schema.py.",
        "type": "object",
        "additionalProperties": False,
        "required": ["checks"],
        "properties": top,
        "allOf": rules,
        "$defs": {**kinds, "check": check},
    }


def _type_text(key: Key) -> str:
    words = {
        "string": "string",
        "strings": "list of strings",
        "integer": "integer",
        "number": "number",
        "boolean": "boolean",
        "mapping": "mapping",
        "list": "list",
    }
    text = " or ".join(words[t] for t in key.types)
    if key.enum:
        text = "one of " + ", ".join(f"`{v}`" for v in key.enum)
    if key.minimum is not None:
        text += f" ≥ {key.minimum:g}"
    if key.exclusive_minimum is not None:
        text += f" > {key.exclusive_minimum:g}"
    if key.exclusive_maximum is not None:
        text += f", < {key.exclusive_maximum:g}"
    if key.maximum is not None:
        text += f", ≤ {key.maximum:g}"
    if key.count_or_fraction:
        text += ", whole above 1"
    if key.pattern and key.hint:
        text += f" ({key.hint})"
    if key.path:
        text += f" ({key.path} path)"
    return text


def _default_text(table: dict[str, Key], kind: str | None, name: str, key: Key) -> str:
    for group in REQUIRED.get(kind or "", ()):
        if name in group:
            others = [f"`{n}`" for n in group if n != name]
            return "required" + (f" (or {', '.join(others)})" if others else "")
    if key.default_doc:
        return key.default_doc
    if key.default is None:
        return "none"
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, float):
        return f"`{key.default!r}`".replace("e-0", "e-")  # 1e-05 reads better as 1e-5
    return f"`{key.default}`"


def schema_rows() -> list[tuple[str, str, str, str, str]]:
    """The reference table of every suite key: ``(key, where, type, default, meaning)`` rows.

    Example::

        for key, where, type_, default, meaning in schema_rows():
            print(f"{where}.{key}: {type_}")
    """
    rows = []
    for where, table in SECTIONS:
        kind = next((k for k, t in KIND_KEYS.items() if t is table), None)
        for name, key in table.items():
            rows.append((f"`{name}`", where, _type_text(key), _default_text(table, kind, name, key), key.meaning))
    return rows


def schema_table_markdown() -> str:
    """:func:`schema_rows` as a Markdown table (the README's suite reference).

    Example::

        print(schema_table_markdown())
    """
    lines = ["| key | where | type | default | meaning |", "|---|---|---|---|---|"]
    for row in schema_rows():
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"
