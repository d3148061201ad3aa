"""Suite files: parse and validate ``forgetguard*.yaml`` into check specs.

Pure: no pytest, no models. A suite is validated against the schema below
before anything loads, and every error starts with ``file:line:`` and names
the check and the key, e.g.
``forgetguard.yaml:12: check 'task-kl': kl.budget: must be >= 0, got -1``.

The schema tables (:data:`TOP_KEYS`, :data:`MODEL_KEYS`, :data:`DEFAULTS_KEYS`,
:data:`CHECK_KEYS` and :data:`KIND_KEYS`) are the single source of truth: the
validator reads them, :func:`json_schema` turns them into the shipped
``suite.schema.json`` and :func:`schema_table_markdown` into the README's
reference table (``scripts/gen_suite_schema.py`` writes both).

Example::

    suite = load_suite(Path("forgetguard.yaml"))
    for check in suite.checks:
        print(check.name, check.kind, check.options, check.marks, check.skip)
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SuiteError
from .settings import DEFAULT_SEED, DEVICES_RE, DTYPES

KINDS = ("kl", "drift", "retention")
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE = Path(__file__).with_name("suite.schema.json")

# PyYAML reads YAML 1.1, where ``1e-6`` (no dot) is a string, while YAML 1.2 (editors) reads a
# number: such strings are accepted wherever a number is. The sign is allowed here so that ``-1e-6``
# gets the "must be >= 0" message rather than a type error.
EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# Marks that need arguments (or, for skip, have their own key) cannot be given by name alone.
RESERVED_MARKS = ("skip", "skipif", "parametrize", "usefixtures", "filterwarnings")
DEFAULT_SKIP_REASON = "skipped in the suite file (skip: true)"

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
    "max_new_tokens": Key(("integer",), "tokens sampled per response", default=64, minimum=1),
    "temperature": Key(
        ("number",), "sampling temperature (1.0: the model's own distribution)", default=1.0, exclusive_minimum=0
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
        ("string",), "directory of your lm-eval task YAMLs (the shipped probes are always found)", path="dir"
    ),
    "metric": Key(("string",), "the metric compared", default_doc="the task's first metric"),
    "max_drop": Key(("number",), "the gate: most absolute drop allowed, in metric units", minimum=0),
    "max_drop_relative": Key(
        ("number",), "the gate: most drop allowed as a fraction of the base's score (with both: the tighter)", minimum=0
    ),
    "gate": Key(
        ("string",),
        "`observed` drop, `significant` (fail only with 95% confidence) or `strict` (pass only with it)",
        default="observed",
        enum=("observed", "significant", "strict"),
    ),
    "num_fewshot": Key(("integer",), "few-shot examples per prompt", default_doc="the task's own", minimum=0),
    "limit": Key(
        ("number",),
        "items per task: a count, or a fraction in (0, 1]",
        default_doc="all items",
        exclusive_minimum=0,
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


@dataclass(frozen=True)
class CheckSpec:
    """One check of a suite: its kind, its options (defaults merged in, paths resolved), marks and skip.

    ``skip`` is the reason to skip it (None: it runs); ``line`` is its 1-based line in the file.
    """

    name: str
    kind: str
    options: dict[str, Any]
    marks: tuple[str, ...] = ()
    skip: str | None = None
    line: int | None = None
    index: int = 0  # position in ``checks``, for :meth:`Suite.line`


Lines = Mapping[tuple[Any, ...], int]


@dataclass(frozen=True)
class Suite:
    """A validated suite file. ``device``, ``dtype`` and ``seed`` are None where the file gives none."""

    path: Path
    checks: tuple[CheckSpec, ...]
    base: str | None = None
    candidates: tuple[str, ...] = field(default_factory=tuple)
    device: str | None = None
    dtype: str | None = None
    seed: int | None = None
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: Lines = field(default_factory=dict, compare=False, repr=False)

    def line(self, *keys: Any) -> int | None:
        """The 1-based line of a key path, or of its nearest enclosing key.

        Example::

            suite.line("checks", 0, "marks")  # where the first check's marks are
        """
        return _line_of(self.lines, keys)


def is_suite_file(path: Path) -> bool:
    name = path.name
    return path.suffix in (".yaml", ".yml") and (name.startswith("forgetguard") or ".forgetguard." in name)


# -- locating errors ---------------------------------------------------------------


def _line_of(lines: Lines, keys: tuple[Any, ...]) -> int | None:
    for n in range(len(keys), -1, -1):
        line = lines.get(tuple(keys[:n]))
        if line is not None:
            return line
    return None


class _Where:
    """Builds errors that start with ``file:line:`` for a key path."""

    def __init__(self, name: str, lines: Lines) -> None:
        self.name = name
        self.lines = lines

    def error(self, keys: tuple[Any, ...], message: str) -> SuiteError:
        line = _line_of(self.lines, keys)
        return SuiteError(f"{self.name}:{line}: {message}" if line else f"{self.name}: {message}")


def _show(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# -- values ------------------------------------------------------------------------


def _value(where: _Where, keys: tuple[Any, ...], label: str, value: Any, key: Key, directory: Path) -> Any:
    """Check one value against its key; return it normalised (number strings read, paths resolved)."""
    types = key.types
    if "number" in types and isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool):
        ok = "boolean" in types
    elif isinstance(value, int):
        ok = "integer" in types or "number" in types
    elif isinstance(value, float):
        ok = "number" in types
    elif isinstance(value, str):
        ok = "string" in types
    elif isinstance(value, list):
        ok = "strings" in types
    else:
        ok = False
    if not ok:
        expected = " or ".join(TYPE_WORDS[t] for t in types)
        raise where.error(keys, f"{label}: expected {expected}, got {_show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number(where, keys, label, value, key)
    if isinstance(value, str):
        return _string(where, keys, label, value, key, directory)
    if isinstance(value, list):
        if not value:
            raise where.error(keys, f"{label}: the list is empty; give at least one value")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise where.error(keys + (i,), f"{label}[{i}]: expected a string, got {_show(item)}")
            out.append(_string(where, keys + (i,), f"{label}[{i}]", item, key, directory))
        return out
    return value


def _number(where: _Where, keys: tuple[Any, ...], label: str, value: float, key: Key) -> float:
    # NaN compares false with everything, so a NaN budget would pass every check.
    if not math.isfinite(value):
        raise where.error(keys, f"{label}: must be a finite number, got {value!r}")
    if key.minimum is not None and value < key.minimum:
        raise where.error(keys, f"{label}: must be >= {key.minimum:g}, got {value!r}")
    if key.exclusive_minimum is not None and value <= key.exclusive_minimum:
        raise where.error(keys, f"{label}: must be > {key.exclusive_minimum:g}, got {value!r}")
    return value


def _string(where: _Where, keys: tuple[Any, ...], label: str, value: str, key: Key, directory: Path) -> str:
    if not value.strip():
        raise where.error(keys, f"{label}: must not be empty")
    if key.enum and value not in key.enum:
        raise where.error(keys, f"{label}: must be one of {', '.join(key.enum)}, got {value!r}")
    if key.pattern and not re.fullmatch(key.pattern, value):
        raise where.error(keys, f"{label}: {value!r} is not valid; expected {key.hint}")
    if value in key.forbidden:
        raise where.error(keys, f"{label}: {value!r} is not allowed here: {key.forbidden_hint}")
    if key.path == "file":
        target = directory / value
        if not target.is_file():
            raise where.error(keys, f"{label}: file {target} does not exist (paths are relative to the suite file)")
        return str(target)
    if key.path == "dir":
        target = directory / value
        if not target.is_dir():
            raise where.error(keys, f"{label}: {target} is not a directory (paths are relative to the suite file)")
        return str(target)
    return value


def _check_keys(
    where: _Where, keys: tuple[Any, ...], label: str, mapping: dict[Any, Any], table: dict[str, Key]
) -> None:
    for name in mapping:
        if name not in table:
            close = difflib.get_close_matches(str(name), list(table), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = f"{label}: unknown key" if label else "unknown top-level key"
            raise where.error(keys + (name,), f"{what} {name!r}{hint}; expected one of: {', '.join(table)}")


def _mapping(where: _Where, keys: tuple[Any, ...], label: str, value: Any) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise where.error(keys, f"{label}: expected a mapping, got {_show(value)}")
    return value


def _options(where: _Where, keys: tuple[Any, ...], label: str, kind: str, raw: Any, directory: Path) -> dict[str, Any]:
    """Validate one kind's options key by key (requirements are checked after defaults merge)."""
    options = _mapping(where, keys, label, raw)
    table = KIND_KEYS[kind]
    _check_keys(where, keys, label, options, table)
    return {
        name: _value(where, keys + (name,), f"{label}.{name}", value, table[name], directory)
        for name, value in options.items()
    }


def _require(where: _Where, keys: tuple[Any, ...], label: str, kind: str, options: dict[str, Any]) -> None:
    for group in REQUIRED[kind]:
        if not any(name in options for name in group):
            what = f"missing required key {group[0]!r}" if len(group) == 1 else f"give {' and/or '.join(group)}"
            raise where.error(keys, f"{label}: {what} (in the check or under defaults.{kind})")


def _resolve_model(where: _Where, keys: tuple[Any, ...], label: str, value: Any, directory: Path) -> list[str]:
    specs = _value(where, keys, label, value, MODEL_KEYS[keys[-1]], directory)
    out = []
    for spec in specs if isinstance(specs, list) else [specs]:
        # A path relative to the suite file wins over a hub id of the same spelling when it exists.
        local = directory / spec
        out.append(str(local) if not Path(spec).is_absolute() and local.exists() else spec)
    return out


# -- the suite ---------------------------------------------------------------------


def parse_suite(data: Any, path: Path, lines: Lines | None = None, display: str | None = None) -> Suite:
    """Validate loaded YAML ``data`` of the suite at ``path`` into a :class:`Suite`.

    ``lines`` maps key paths (``("checks", 0, "kl", "budget")``) to 1-based
    lines, so errors can say where; ``display`` is how messages name the file
    (default: ``path``).

    Example::

        parse_suite({"checks": [{"name": "w", "drift": {"max_relative_l2": 0.1}}]}, Path("forgetguard.yaml"))
    """
    where = _Where(display or str(path), lines or {})
    directory = path.parent
    if not isinstance(data, dict):
        raise where.error((), f"a suite is a mapping with a 'checks' list, got {_show(data)}")
    _check_keys(where, (), "", data, TOP_KEYS)

    scalars: dict[str, Any] = {}
    for name in ("device", "dtype", "seed"):
        if name in data:
            scalars[name] = _value(where, (name,), name, data[name], TOP_KEYS[name], directory)

    base: str | None = None
    candidates: tuple[str, ...] = ()
    if "models" in data:
        models = _mapping(where, ("models",), "models", data["models"])
        _check_keys(where, ("models",), "models", models, MODEL_KEYS)
        if "base" in models:
            base = _resolve_model(where, ("models", "base"), "models.base", models["base"], directory)[0]
        if "candidate" in models:
            candidates = tuple(
                _resolve_model(where, ("models", "candidate"), "models.candidate", models["candidate"], directory)
            )

    defaults: dict[str, dict[str, Any]] = {}
    if "defaults" in data:
        raw_defaults = _mapping(where, ("defaults",), "defaults", data["defaults"])
        _check_keys(where, ("defaults",), "defaults", raw_defaults, DEFAULTS_KEYS)
        for kind, raw in raw_defaults.items():
            defaults[kind] = _options(where, ("defaults", kind), f"defaults.{kind}", kind, raw, directory)

    if "checks" not in data:
        raise where.error((), "missing 'checks': a suite needs a non-empty list of checks")
    checks_raw = data["checks"]
    if not isinstance(checks_raw, list) or not checks_raw:
        raise where.error(("checks",), f"'checks' must be a non-empty list of checks, got {_show(checks_raw)}")
    checks: list[CheckSpec] = []
    seen: dict[str, int | None] = {}
    for i, item in enumerate(checks_raw):
        keys: tuple[Any, ...] = ("checks", i)
        if not isinstance(item, dict):
            raise where.error(
                keys, f"check #{i + 1}: must be a mapping with 'name' and one of {', '.join(KINDS)}, got {_show(item)}"
            )
        if "name" not in item:
            raise where.error(keys, f"check #{i + 1}: missing 'name' (a non-empty string)")
        name = _value(where, keys + ("name",), f"check #{i + 1}: name", item["name"], CHECK_KEYS["name"], directory)
        line = _line_of(where.lines, keys)
        if name in seen:
            first = f" (first on line {seen[name]})" if seen[name] else ""
            raise where.error(keys + ("name",), f"check {name!r}: duplicate name{first}; names must be unique")
        seen[name] = line
        label = f"check {name!r}"
        _check_keys(where, keys, label, item, CHECK_KEYS)
        kinds = [k for k in KINDS if k in item]
        if len(kinds) != 1:
            got = f" (it has {' and '.join(kinds)})" if kinds else ""
            raise where.error(keys, f"{label}: needs exactly one of {', '.join(KINDS)}{got}")
        kind = kinds[0]
        own = _options(where, keys + (kind,), f"{label}: {kind}", kind, item[kind], directory)
        options = {**defaults.get(kind, {}), **own}
        _require(where, keys + (kind,), f"{label}: {kind}", kind, options)

        marks: tuple[str, ...] = ()
        if "marks" in item:
            raw_marks = _value(
                where, keys + ("marks",), f"{label}: marks", item["marks"], CHECK_KEYS["marks"], directory
            )
            marks = tuple(raw_marks) if isinstance(raw_marks, list) else (raw_marks,)
        skip: str | None = None
        if "skip" in item:
            raw_skip = _value(where, keys + ("skip",), f"{label}: skip", item["skip"], CHECK_KEYS["skip"], directory)
            skip = (DEFAULT_SKIP_REASON if raw_skip else None) if isinstance(raw_skip, bool) else raw_skip
        checks.append(CheckSpec(name, kind, options, marks=marks, skip=skip, line=line, index=i))
    return Suite(
        path=path,
        checks=tuple(checks),
        base=base,
        candidates=candidates,
        device=scalars.get("device"),
        dtype=scalars.get("dtype"),
        seed=scalars.get("seed"),
        defaults=defaults,
        lines=dict(where.lines),
    )


# -- YAML with lines ---------------------------------------------------------------


def _yaml_error(display: str, exc: Exception) -> SuiteError:
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        context = exc.context
        if context and exc.context_mark is not None and mark is not None and exc.context_mark.line != mark.line:
            # An unclosed bracket or quote is found lines later: say where it opened.
            context = f"{context} started on line {exc.context_mark.line + 1}"
        what = "; ".join(str(part) for part in (context, exc.problem) if part)
        if mark is not None:
            return SuiteError(f"{display}:{mark.line + 1}: not valid YAML (column {mark.column + 1}): {what}")
        return SuiteError(f"{display}: not valid YAML: {what}")
    return SuiteError(f"{display}: not valid YAML: {exc}")


def _key_id(node: Any) -> tuple[str, str] | None:
    import yaml

    return (node.tag, node.value) if isinstance(node, yaml.ScalarNode) else None


def _reject_duplicate_keys(root: Any, display: str) -> None:
    """YAML keeps the last of two equal keys silently; in a suite that hides a typo, so refuse it."""
    import yaml

    merge = "tag:yaml.org,2002:merge"
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                ident = _key_id(key_node)
                if ident is not None and key_node.tag != merge:
                    line = key_node.start_mark.line + 1
                    if ident in first:
                        raise SuiteError(
                            f"{display}:{line}: duplicate key {key_node.value!r} (first on line {first[ident]}); "
                            "YAML would silently keep only the last one"
                        )
                    first[ident] = line
                stack.append(value_node)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _collect_lines(loader: Any, root: Any) -> dict[tuple[Any, ...], int]:
    """Map each key path of the constructed data to the 1-based line of its key (or sequence item)."""
    import yaml

    lines: dict[tuple[Any, ...], int] = {(): root.start_mark.line + 1}
    visited: set[int] = set()

    def walk(node: Any, keys: tuple[Any, ...]) -> Iterator[tuple[Any, tuple[Any, ...]]]:
        # An aliased node is walked once: walking every path to it could take exponential time.
        if id(node) in visited:
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            # After construction, merge keys (<<) are already flattened into node.value.
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = loader.construct_object(key_node, deep=True)
                lines.setdefault(keys + (key,), key_node.start_mark.line + 1)
                yield value_node, keys + (key,)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(keys + (i,), item.start_mark.line + 1)
                yield item, keys + (i,)

    pending = [(root, ())]
    while pending:
        node, keys = pending.pop()
        pending.extend(walk(node, keys))
    return lines


def load_yaml_with_lines(text: str, display: str = "<suite>") -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Load YAML exactly as ``yaml.safe_load`` does, plus the line of every key path.

    Equal keys in one mapping are refused (YAML would keep the last silently).
    Errors are :class:`SuiteError` starting with ``display:line:``.

    Example::

        data, lines = load_yaml_with_lines("checks:\\n  - name: a\\n")
        lines[("checks", 0, "name")]  # 2
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        _reject_duplicate_keys(root, display)
        data = loader.construct_document(root)
        return data, _collect_lines(loader, root)
    except yaml.YAMLError as exc:
        raise _yaml_error(display, exc) from None
    finally:
        loader.dispose()


def load_suite(path: Path, display: str | None = None) -> Suite:
    """Read and validate a suite file (YAML's safe loader: no arbitrary objects).

    ``display`` is how error messages name the file (default: ``path``).

    Example::

        suite = load_suite(Path("forgetguard.yaml"))
        suite.checks[0].name, suite.checks[0].line
    """
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{name}: cannot read: {exc}") from None
    data, lines = load_yaml_with_lines(text, name)
    return parse_suite(data, path, lines, display=name)


# -- the schema for tools and people ---------------------------------------------


def _number_string_pattern(key: Key) -> str:
    # The YAML 1.1 exponent spelling (see EXPONENT_NUMBER), restricted to the key's range.
    positive = key.exclusive_minimum is not None and key.exclusive_minimum >= 0
    nonzero = r"(?=[^eE]*[1-9])" if positive else ""
    return rf"^\+?{nonzero}(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"


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
    choices: list[dict[str, Any]] = []
    for kind in key.types:
        if kind == "string":
            choices.append(_string_schema(key))
        elif kind == "strings":
            choices.append({"type": "array", "minItems": 1, "items": _string_schema(key)})
        elif kind == "integer":
            choices.append({"type": "integer", **bounds})
        elif kind == "number":
            choices.append({"type": "number", **bounds})
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
