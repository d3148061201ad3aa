"""Suite files: parse and validate ``forgetguard*.yaml`` into check specs.

Pure: no pytest, no models. A suite is validated against the schema below
before anything loads, and every error starts with ``file:line:`` and names
the check and the key, e.g.
``forgetguard.yaml:12: check 'task-kl': kl.budget: must be >= 0, got -1``.

The keys, their types and ranges come from the tables in :mod:`.schema`
(also the source of the shipped JSON Schema and the README's reference).

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
from .files import TextFileError, decode_utf8
from .schema import (
    CHECK_KEYS,
    DEFAULTS_KEYS,
    KIND_KEYS,
    KINDS,
    MODEL_KEYS,
    REQUIRED,
    TOP_KEYS,
    TYPE_WORDS,
    Key,
    range_text,
)

# PyYAML reads YAML 1.1, where ``1e-6`` (no dot) is a string, while YAML 1.2 (editors) reads a
# number: such strings are accepted wherever a number is. The sign is allowed here so that ``-1e-6``
# gets the "must be >= 0" message rather than a type error.
EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

DEFAULT_SKIP_REASON = "skipped in the suite file (skip: true)"


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
    interval = range_text(key)
    within = "" if interval is None else f" (the range is {interval})"
    if key.minimum is not None and value < key.minimum:
        raise where.error(keys, f"{label}: must be >= {key.minimum:g}, got {value!r}{within}")
    if key.exclusive_minimum is not None and value <= key.exclusive_minimum:
        raise where.error(keys, f"{label}: must be > {key.exclusive_minimum:g}, got {value!r}{within}")
    if key.exclusive_maximum is not None and value >= key.exclusive_maximum:
        raise where.error(keys, f"{label}: must be < {key.exclusive_maximum:g}, got {value!r}{within}")
    if key.maximum is not None and value > key.maximum:
        raise where.error(keys, f"{label}: must be <= {key.maximum:g}, got {value!r}{within}")
    if key.count_or_fraction and value > 1 and not float(value).is_integer():
        raise where.error(keys, f"{label}: a whole number of items or a fraction in (0, 1], got {value!r}")
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
        if target.is_dir():
            from .prompts import directory_given  # the one kind of file a suite names

            raise where.error(
                keys, f"{label}: {target} {directory_given(target)} (paths are relative to the suite file)"
            )
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


def _resolve_model(
    where: _Where, keys: tuple[Any, ...], label: str, value: Any, directory: Path
) -> list[tuple[tuple[Any, ...], str]]:
    """Each model SPEC with where it is written; a path relative to the suite file is made absolute.

    A relative path that exists wins over a hub id of the same spelling; one that does not exist is
    kept as where the suite would have found it, so :func:`_check_models` reports that place.
    """
    specs = _value(where, keys, label, value, MODEL_KEYS[keys[-1]], directory)
    out = []
    for i, spec in enumerate(specs if isinstance(specs, list) else [specs]):
        local = directory / Path(spec).expanduser()
        first = spec.split("/", 1)[0]
        relative_path = spec.startswith(".") or spec.lower().endswith(".gguf") or (directory / first).is_dir()
        resolved = str(local) if local.exists() or (relative_path and not Path(spec).is_absolute()) else spec
        out.append((keys + (i,) if isinstance(specs, list) else keys, resolved))
    return out


def _check_models(where: _Where, entries: list[tuple[tuple[Any, ...], str]]) -> None:
    """A model SPEC that cannot name a model is a collection error, before anything loads."""
    from .errors import ForgetguardError
    from .models.spec import parse_spec

    for keys, spec in entries:
        try:
            parse_spec(spec)
        except ForgetguardError as exc:
            label = ".".join(str(k) for k in keys if not isinstance(k, int))
            raise where.error(keys, f"{label}: {exc} (paths are relative to the suite file)") from None


def _check_forecast(
    where: _Where, keys: tuple[Any, ...], label: str, options: dict[str, Any], earlier: list[CheckSpec]
) -> None:
    """``forecast_from`` names a KL check above this one (it must have run when this one forecasts)."""
    source = options.get("forecast_from")
    if source is None:
        if options.get("skip_if_forecast_within"):
            raise where.error(keys + ("skip_if_forecast_within",), f"{label}: retention.skip_if_forecast_within "
                              "needs forecast_from (the KL check to forecast from)")  # fmt: skip
        return
    kls = [c.name for c in earlier if c.kind == "kl"]
    if source not in kls:
        close = difflib.get_close_matches(source, kls, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; KL checks above it: {', '.join(kls) or 'none'}"
        raise where.error(
            keys + ("forecast_from",),
            f"{label}: retention.forecast_from: {source!r} is not a KL check above this one in the suite{hint}",
        )


# Per-item 0/1 metrics (by name): a check of one can be planned before any task loads.
BINARY_METRICS = ("acc", "acc_norm", "exact_match")


def _check_items(where: _Where, keys: tuple[Any, ...], label: str, options: dict[str, Any]) -> None:
    """A whole-number ``limit`` too small for a 0/1 metric's absolute allowance to ever pass (even with
    no item flipped, under the default gate) is an error now; other cases are checked when the task's
    items are known, before the candidate runs."""
    from .evidence.planning import minimum_items

    limit, max_drop = options.get("limit"), options.get("max_drop")
    if options.get("metric") not in BINARY_METRICS or max_drop is None or not isinstance(limit, int) or limit <= 1:
        return
    tasks = options.get("task")
    if isinstance(tasks, list):
        limit *= len(tasks)  # the limit is per task; the verdict pools the tasks' items (a group: checked later)
    if options.get("gate", "strict") != "strict" or options.get("on_inconclusive", "fail") != "fail":
        return
    needed = minimum_items(float(max_drop), float(options.get("alpha", 0.05)))
    if needed is None or limit < needed:
        at_least = "no number of items proves a drop of 0" if needed is None else f"at least {needed} items"
        raise where.error(
            keys + ("limit",),
            f"{label}: retention.limit: {limit} items can never pass max_drop {max_drop} at alpha "
            f"{options.get('alpha', 0.05)}: that needs {at_least} even when no item flips (forgetguard plan "
            f"--max-drop {max_drop}); raise limit, raise max_drop, or set on_inconclusive: pass",
        )


def _check_prompts(where: _Where, keys: tuple[Any, ...], label: str, path: str) -> None:
    """A prompt file is read whole at collection (cheap): empty, not JSON or not UTF-8 is an error now,
    not after two models loaded."""
    from .errors import PromptFileError
    from .prompts import load_prompts

    try:
        load_prompts(path)
    except PromptFileError as exc:
        raise where.error(keys, f"{label}: {exc}") from None


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
    scalars = {
        name: _value(where, (name,), name, data[name], TOP_KEYS[name], directory)
        for name in ("device", "dtype", "seed")
        if name in data
    }
    base, candidates, model_specs = _models(where, data, directory)
    defaults = _defaults(where, data, directory)
    checks = _checks(where, data, defaults, directory)
    _check_models(where, model_specs)
    return Suite(
        path=path,
        checks=checks,
        base=base,
        candidates=candidates,
        device=scalars.get("device"),
        dtype=scalars.get("dtype"),
        seed=scalars.get("seed"),
        defaults=defaults,
        lines=dict(where.lines),
    )


def _models(
    where: _Where, data: dict[Any, Any], directory: Path
) -> tuple[str | None, tuple[str, ...], list[tuple[tuple[Any, ...], str]]]:
    """``models``: the base, the candidates, and every SPEC with where it is written (checked last)."""
    base: str | None = None
    candidates: tuple[str, ...] = ()
    model_specs: list[tuple[tuple[Any, ...], str]] = []
    if "models" not in data:
        return base, candidates, model_specs
    models = _mapping(where, ("models",), "models", data["models"])
    _check_keys(where, ("models",), "models", models, MODEL_KEYS)
    if "base" in models:
        model_specs += _resolve_model(where, ("models", "base"), "models.base", models["base"], directory)
        base = model_specs[-1][1]
    if "candidate" in models:
        found = _resolve_model(where, ("models", "candidate"), "models.candidate", models["candidate"], directory)
        model_specs += found
        candidates = tuple(spec for _, spec in found)
    return base, candidates, model_specs


def _defaults(where: _Where, data: dict[Any, Any], directory: Path) -> dict[str, dict[str, Any]]:
    """``defaults``: per kind, options merged under each check of that kind (validated on their own)."""
    defaults: dict[str, dict[str, Any]] = {}
    if "defaults" in data:
        raw_defaults = _mapping(where, ("defaults",), "defaults", data["defaults"])
        _check_keys(where, ("defaults",), "defaults", raw_defaults, DEFAULTS_KEYS)
        for kind, raw in raw_defaults.items():
            defaults[kind] = _options(where, ("defaults", kind), f"defaults.{kind}", kind, raw, directory)
    return defaults


def _checks(
    where: _Where, data: dict[Any, Any], defaults: dict[str, dict[str, Any]], directory: Path
) -> tuple[CheckSpec, ...]:
    """``checks``: each one in order, since names must be unique and a forecast names a check above it."""
    if "checks" not in data:
        raise where.error((), "missing 'checks': a suite needs a non-empty list of checks")
    checks_raw = data["checks"]
    if not isinstance(checks_raw, list) or not checks_raw:
        raise where.error(("checks",), f"'checks' must be a non-empty list of checks, got {_show(checks_raw)}")
    checks: list[CheckSpec] = []
    seen: dict[str, int | None] = {}
    for i, item in enumerate(checks_raw):
        checks.append(_check(where, i, item, defaults, checks, seen, directory))
    return tuple(checks)


def _check(
    where: _Where,
    i: int,
    item: Any,
    defaults: dict[str, dict[str, Any]],
    earlier: list[CheckSpec],
    seen: dict[str, int | None],
    directory: Path,
) -> CheckSpec:
    """One check: its name (recorded in ``seen``), its one kind's options over the defaults, marks and skip."""
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
    if kind == "kl":
        at = keys + (kind, "prompts") if "prompts" in own else ("defaults", "kl", "prompts")
        _check_prompts(where, at, f"{label}: kl.prompts", options["prompts"])
    marks, skip = _marks_and_skip(where, keys, label, item, directory)
    if kind == "retention":
        _check_forecast(where, keys + (kind,), label, options, earlier)
        _check_items(where, keys + (kind,), label, options)
    return CheckSpec(name, kind, options, marks=marks, skip=skip, line=line, index=i)


def _marks_and_skip(
    where: _Where, keys: tuple[Any, ...], label: str, item: dict[Any, Any], directory: Path
) -> tuple[tuple[str, ...], str | None]:
    """A check's pytest marks (one or a list) and its skip reason (``skip: true`` gets a default one)."""
    marks: tuple[str, ...] = ()
    if "marks" in item:
        raw_marks = _value(where, keys + ("marks",), f"{label}: marks", item["marks"], CHECK_KEYS["marks"], directory)
        marks = tuple(raw_marks) if isinstance(raw_marks, list) else (raw_marks,)
    skip: str | None = None
    if "skip" in item:
        raw_skip = _value(where, keys + ("skip",), f"{label}: skip", item["skip"], CHECK_KEYS["skip"], directory)
        skip = (DEFAULT_SKIP_REASON if raw_skip else None) if isinstance(raw_skip, bool) else raw_skip
    return marks, skip


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

    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character: YAML refuses the text before parsing it
        line = text.count("\n", 0, exc.position) + 1
        raise SuiteError(
            f"{display}:{line}: not valid YAML: character #x{exc.character:04x} is not allowed in YAML "
            "(a binary file, or a stray control character)"
        ) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        _reject_duplicate_keys(root, display)
        data = loader.construct_document(root)
        return data, _collect_lines(loader, root)
    except yaml.YAMLError as exc:
        raise _yaml_error(display, exc) from None
    except RecursionError:
        raise SuiteError(f"{display}: not a suite: the YAML is nested too deeply") from None
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
        text = decode_utf8(path.read_bytes(), name)
    except OSError as exc:
        raise SuiteError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except TextFileError as exc:
        raise SuiteError(f"{name}{f':{exc.line}' if exc.line else ''}: cannot read: {exc.reason}") from None
    data, lines = load_yaml_with_lines(text, name)
    return parse_suite(data, path, lines, display=name)
