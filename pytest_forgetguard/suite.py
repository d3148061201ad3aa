"""Suite files: parse and validate ``forgetguard*.yaml`` into check specs.

Pure: no pytest, no models. Validation happens before anything loads, and
every error names the file, the check and the key.

Example::

    suite = load_suite(Path("forgetguard.yaml"))
    for check in suite.checks:
        print(check.name, check.kind, check.options)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SuiteError

KINDS = ("kl", "drift", "retention")
SUITE_KEYS = {"models", "checks"}
MODEL_KEYS = {"base", "candidate"}

# key -> (accepted types, required)
KL_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "prompts": ((str,), True),
    "budget": ((int, float), True),
    "direction": ((str,), False),
    "sample_from": ((str,), False),
    "max_new_tokens": ((int,), False),
    "temperature": ((int, float), False),
    "batch_size": ((int,), False),
    "limit": ((int,), False),
    "allow_vocab_mismatch": ((bool,), False),
}
DRIFT_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "max_relative_l2": ((int, float), False),
    "max_changed_fraction": ((int, float), False),
    "tolerance": ((int, float), False),
}
RETENTION_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "task": ((str, list), True),
    "include_path": ((str,), False),
    "metric": ((str,), False),
    "max_drop": ((int, float), False),
    "max_drop_relative": ((int, float), False),
    "num_fewshot": ((int,), False),
    "limit": ((int, float), False),
    "gate": ((str,), False),
    "filter": ((str,), False),
    "batch_size": ((int,), False),
    "apply_chat_template": ((bool,), False),
}
SCHEMAS = {"kl": KL_KEYS, "drift": DRIFT_KEYS, "retention": RETENTION_KEYS}
ENUMS = {
    "direction": ("forward", "reverse", "symmetric"),
    "sample_from": ("base", "candidate", "dataset"),
    "gate": ("observed", "significant", "strict"),
}


@dataclass(frozen=True)
class CheckSpec:
    name: str
    kind: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Suite:
    path: Path
    checks: tuple[CheckSpec, ...]
    base: str | None = None
    candidates: tuple[str, ...] = field(default_factory=tuple)


def is_suite_file(path: Path) -> bool:
    name = path.name
    return path.suffix in (".yaml", ".yml") and (name.startswith("forgetguard") or ".forgetguard." in name)


def _resolve_model(value: Any, where: str, directory: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(f"{where}: must be a model SPEC string (directory, .gguf file or hub id)")
    local = directory / value
    return str(local) if not Path(value).is_absolute() and local.exists() else value


def _check_options(path: Path, name: str, kind: str, options: Any) -> dict[str, Any]:
    where = f"{path}: check {name!r}: {kind}"
    if not isinstance(options, dict):
        raise SuiteError(f"{where}: must be a mapping of options")
    schema = SCHEMAS[kind]
    for key, value in list(options.items()):
        if key not in schema:
            raise SuiteError(f"{where}: unknown key {key!r}; expected one of {', '.join(sorted(schema))}")
        types, _ = schema[key]
        if float in types and isinstance(value, str):
            # PyYAML (YAML 1.1) reads 1e-6 as a string; 1.0e-6 as a float. Accept both.
            try:
                value = options[key] = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise SuiteError(f"{where}.{key}: expected {names}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise SuiteError(f"{where}.{key}: must be >= 0, got {value!r}")
        if key in ENUMS and value not in ENUMS[key]:
            raise SuiteError(f"{where}.{key}: must be one of {', '.join(ENUMS[key])}, got {value!r}")
    for key, (_, required) in schema.items():
        if required and key not in options:
            raise SuiteError(f"{where}: missing required key {key!r}")
    out = dict(options)
    if kind == "kl":
        prompts = path.parent / out["prompts"]
        if not prompts.is_file():
            raise SuiteError(f"{where}.prompts: file {prompts} does not exist (paths are relative to the suite file)")
        out["prompts"] = str(prompts)
    if kind == "drift" and not ({"max_relative_l2", "max_changed_fraction"} & set(out)):
        raise SuiteError(f"{where}: give max_relative_l2 and/or max_changed_fraction")
    if kind == "retention":
        if not ({"max_drop", "max_drop_relative"} & set(out)):
            raise SuiteError(f"{where}: give max_drop (absolute) and/or max_drop_relative")
        tasks = out["task"] if isinstance(out["task"], list) else [out["task"]]
        if not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise SuiteError(f"{where}.task: a task name or a non-empty list of task names")
        if "include_path" in out:
            include = path.parent / out["include_path"]
            if not include.is_dir():
                raise SuiteError(
                    f"{where}.include_path: {include} is not a directory (paths are relative to the suite file)"
                )
            out["include_path"] = str(include)
    return out


def parse_suite(data: Any, path: Path) -> Suite:
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite is a mapping with a 'checks' list")
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise SuiteError(f"{path}: unknown top-level key {sorted(unknown)[0]!r}; expected models, checks")
    base: str | None = None
    candidates: tuple[str, ...] = ()
    models = data.get("models")
    if models is not None:
        if not isinstance(models, dict) or set(models) - MODEL_KEYS:
            raise SuiteError(f"{path}: models: a mapping with 'base' and/or 'candidate'")
        if "base" in models:
            base = _resolve_model(models["base"], f"{path}: models.base", path.parent)
        if "candidate" in models:
            raw = models["candidate"]
            raw_list = raw if isinstance(raw, list) else [raw]
            candidates = tuple(_resolve_model(c, f"{path}: models.candidate", path.parent) for c in raw_list)
    checks_raw = data.get("checks")
    if not isinstance(checks_raw, list) or not checks_raw:
        raise SuiteError(f"{path}: 'checks' must be a non-empty list")
    checks: list[CheckSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(checks_raw):
        if not isinstance(item, dict):
            raise SuiteError(f"{path}: check #{i + 1}: must be a mapping with 'name' and one of {', '.join(KINDS)}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SuiteError(f"{path}: check #{i + 1}: missing 'name' (a non-empty string)")
        if name in seen:
            raise SuiteError(f"{path}: check {name!r}: duplicate name; names must be unique")
        seen.add(name)
        kinds = [k for k in KINDS if k in item]
        extra = set(item) - set(KINDS) - {"name"}
        if extra:
            raise SuiteError(f"{path}: check {name!r}: unknown key {sorted(extra)[0]!r}")
        if len(kinds) != 1:
            raise SuiteError(f"{path}: check {name!r}: needs exactly one of {', '.join(KINDS)}")
        kind = kinds[0]
        checks.append(CheckSpec(name, kind, _check_options(path, name, kind, item[kind])))
    return Suite(path=path, checks=tuple(checks), base=base, candidates=candidates)


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file (``yaml.safe_load``: no arbitrary objects)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc}") from None
    return parse_suite(data, path)
