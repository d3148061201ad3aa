"""Run settings: parsed and validated once, then frozen.

Each option may come from the command line, the environment or the ini file
(precedence in that order; a suite file's ``models:``, ``device``, ``dtype``
and ``seed`` come last). This module is pure: the plugin gathers raw values
from pytest and hands them over.

Example::

    >>> s = resolve({"base": "models/base"}, env={}, ini={})
    >>> s.base, s.seed, s.resolved_seed(), s.resolved_seed(suite_seed=7)
    ('models/base', None, 1234, 7)
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ForgetguardError
from .history.location import Location, parse_location
from .options import OPTION, pick

DEFAULT_SEED = 1234
DEVICES_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class SettingsError(ValueError):
    """A bad option value; ``option`` names the command-line flag."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "pytest-forgetguard"


@dataclass(frozen=True)
class Settings:
    """Validated options of one pytest run."""

    enabled: bool = False
    base: str | None = None
    candidates: tuple[str, ...] = ()
    # None = not given, so that a suite file's value (lowest precedence) can apply;
    # read them through resolved_device(), resolved_dtype() and resolved_seed().
    device: str | None = None
    dtype: str | None = None
    report_json: Path | None = None
    report_md: Path | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: caching off
    seed: int | None = None
    trust_remote_code: bool = False
    # The run history (a SQLite file or a PostgreSQL URL), when given explicitly; read it through
    # history_location.
    history: Location | None = None
    # The project the run is recorded under (rows of other projects are not read); None: every project's.
    project: str | None = None
    no_history: bool = False
    # Run every retention check, also those a forecast could decide (nightly, release).
    no_forecast_skip: bool = False
    no_early_stop: bool = False  # every retention item, no early stop (--fg-no-early-stop)
    # Every verdict's error rate (--fg-alpha); None: each check's own (default 0.05).
    alpha: float | None = None

    @property
    def history_location(self) -> Location | None:
        """The run history: the given path or URL, else ``history.sqlite`` in the cache directory; None when off.

        >>> Settings(cache_dir=Path("/c")).history_location.display, Settings(cache_dir=None).history_location
        ('/c/history.sqlite', None)
        """
        if self.no_history:
            return None
        if self.history is not None:
            return self.history
        return None if self.cache_dir is None else parse_location(self.cache_dir / "history.sqlite")

    def resolved_device(self, suite_device: str | None = None) -> str:
        """The device to load on: the option, else the suite file's, else ``auto``.

        ``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``::

            Settings(device="cpu").resolved_device(suite_device="cuda")  # 'cpu': the option wins
        """
        device = self.device or suite_device or "auto"
        if device != "auto":
            return device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def device_map(self, suite_device: str | None = None) -> str | None:
        """``sequential`` when ``auto`` meets several GPUs: a model too large for one spills onto the next.

        One GPU, an explicit device, or CPU: None (each model loads whole onto its device).
        """
        if (self.device or suite_device or "auto") != "auto":
            return None
        import torch

        return "sequential" if torch.cuda.is_available() and torch.cuda.device_count() > 1 else None

    def resolved_dtype(self, device: str, suite_dtype: str | None = None) -> str:
        """The dtype: the option, else the suite file's; ``auto`` is float32 on CPU (exact), bfloat16 on CUDA.

        Example::

            Settings().resolved_dtype("cuda:0", suite_dtype="float16")  # 'float16'
        """
        dtype = self.dtype or suite_dtype or "auto"
        if dtype != "auto":
            return dtype
        return "bfloat16" if device.startswith("cuda") else "float32"

    def resolved_seed(self, suite_seed: int | None = None) -> int:
        """The sampling seed: the option, else the suite file's, else :data:`DEFAULT_SEED`.

        Example::

            Settings(seed=3).resolved_seed(suite_seed=7)  # 3: the option wins
        """
        if self.seed is not None:
            return self.seed
        return DEFAULT_SEED if suite_seed is None else suite_seed


def device_problem(device: str | None) -> str | None:
    """Why ``device`` cannot be used on this machine (None when it can, or when it is ``auto``/``cpu``/unset).

    Asked before any model loads, so a CPU-only machine told ``cuda`` says so
    in one line instead of failing deep inside the first model load.

    >>> device_problem("cpu") is None and device_problem(None) is None
    True
    """
    if device is None or device in ("auto", "cpu"):
        return None
    import torch

    if device == "mps":
        ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        return None if ok else "mps is not available on this machine; use cpu (or auto)"
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "a torch that sees no GPU"
        return (
            f"{device} was asked for, but this is {build} ({torch.__version__}); use --fg-device cpu (or auto), "
            "or install a CUDA build of torch on a machine with a GPU"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    count = torch.cuda.device_count()
    if index >= count:
        return f"{device} was asked for, but this machine has {count} GPU(s) (cuda:0..cuda:{count - 1})"
    return None


def unwritable(path: Path) -> str | None:
    """Why a file could not be written at ``path`` (None when, as far as can be told without writing, it can):
    a parent that is a file, or a folder this process may not write in. Missing folders are fine: the
    writer creates them.

    >>> unwritable(Path(__file__)) is None  # a file that exists, in a folder the tests can write
    True
    """
    folder = Path(os.path.abspath(path)).parent
    for existing in (folder, *folder.parents):
        try:
            mode = os.stat(existing).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there (yet), or below a file: look further up
        except OSError as exc:
            return f"{existing}: {exc.strerror or exc}"
        if not stat.S_ISDIR(mode):
            return f"{existing} is a file, not a folder ({os.strerror(errno.ENOTDIR)})"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"the folder {existing} is not writable ({os.strerror(errno.EACCES)})"
        return None
    return None


def _split_specs(value: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\n]", value) if part.strip()]


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _first(*values: object) -> object:
    for v in values:
        if v not in (None, "", [], ()):
            return v
    return None


def _flag(cli: Mapping[str, object], env: Mapping[str, str], ini: Mapping[str, object], field: str) -> bool:
    """An on/off option: the command line, the environment variable (1/0, true/false, yes/no) or the ini."""
    variable = OPTION[field].env
    raw = env.get(variable, "").strip().lower() if variable else ""
    if raw not in ("", "0", "1", "true", "false", "yes", "no"):
        raise SettingsError(str(variable), f"expected 1/0 or true/false, got {raw!r}")
    return bool(cli.get(field)) or raw in ("1", "true", "yes") or bool(ini.get(field))


def resolve(
    cli: Mapping[str, object],
    env: Mapping[str, str],
    ini: Mapping[str, object],
    ini_dir: Path | None = None,
) -> Settings:
    """Merge raw option values (command line > environment > ini, as :mod:`.options` declares them) and
    validate them.

    ``cli`` and ``ini`` are keyed by the setting's field name; ``env`` is the
    process environment. Ini paths are taken relative to ``ini_dir``.
    """

    def ini_path(v: object) -> object:
        if isinstance(v, str) and v and ini_dir is not None and not os.path.isabs(v):
            candidate = ini_dir / v
            if candidate.exists():
                return str(candidate)
        return v

    paths = {k: ini_path(v) for k, v in ini.items() if k in ("base", "cache_dir", "history")}
    ini = {**ini, **paths, "candidates": [str(ini_path(c)) for c in _as_list(ini.get("candidates"))]}
    base, candidates = _models(cli, env, ini)
    return Settings(
        enabled=bool(cli.get("enabled")),
        base=base,
        candidates=candidates,
        device=_choice(cli, env, ini, "device"),
        dtype=_choice(cli, env, ini, "dtype"),
        report_json=_report(cli, "report_json"),
        report_md=_report(cli, "report_md"),
        cache_dir=_cache_dir(cli, env, ini),
        seed=_seed(cli, env, ini),
        trust_remote_code=bool(cli.get("trust_remote_code")),
        history=_history(*pick("history", cli, env, ini)),
        project=_project(pick("project", cli, env, ini)[0]),
        no_history=bool(cli.get("no_history")),
        no_forecast_skip=_flag(cli, env, ini, "no_forecast_skip"),
        no_early_stop=_flag(cli, env, ini, "no_early_stop"),
        alpha=_alpha(cli, env, ini),
    )


def _models(
    cli: Mapping[str, object], env: Mapping[str, str], ini: Mapping[str, object]
) -> tuple[str | None, tuple[str, ...]]:
    """The base and the candidates; with --forgetguard, a SPEC that cannot name a model is a usage error now,
    before anything is collected or loaded."""
    base, base_from = pick("base", cli, env, ini)
    raw, cand_from = pick("candidates", cli, env, ini)
    candidates = tuple(_split_specs(raw) if isinstance(raw, str) else [str(c) for c in _as_list(raw)])
    if cli.get("enabled"):
        from .models.spec import parse_spec

        for option, spec in [(base_from, base)] * bool(base) + [(cand_from, c) for c in candidates]:
            try:
                parse_spec(str(spec))
            except ForgetguardError as exc:
                raise SettingsError(option, str(exc)) from None
    return (str(base) if base else None), candidates


def _choice(cli: Mapping[str, object], env: Mapping[str, str], ini: Mapping[str, object], field: str) -> str | None:
    """The device or the dtype; None when no option gives it (a suite file may then set it)."""
    raw, where = pick(field, cli, env, ini)
    if raw is None:
        return None
    value = str(raw).strip()
    if field == "device" and not DEVICES_RE.match(value):
        raise SettingsError(where, f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
    if field == "dtype" and value not in DTYPES:
        raise SettingsError(where, f"unknown dtype {value!r}; use one of {', '.join(DTYPES)}")
    return value


def _seed(cli: Mapping[str, object], env: Mapping[str, str], ini: Mapping[str, object]) -> int | None:
    raw, where = pick("seed", cli, env, ini)
    if raw is None:
        return None
    try:
        seed = int(str(raw))
    except ValueError:
        raise SettingsError(where, f"not an integer: {raw!r}") from None
    if seed < 0:
        raise SettingsError(where, f"must be >= 0, got {seed}")
    return seed


def _cache_dir(cli: Mapping[str, object], env: Mapping[str, str], ini: Mapping[str, object]) -> Path | None:
    if cli.get("no_cache"):
        return None
    raw, where = pick("cache_dir", cli, env, ini)
    cache_dir = Path(str(raw)).expanduser() if raw else default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise SettingsError(where, f"{cache_dir} exists and is not a directory")
    return cache_dir


def _alpha(cli: Mapping[str, object], env: Mapping[str, str], ini: Mapping[str, object]) -> float | None:
    """Every verdict's error rate; None: each check's own (default 0.05)."""
    raw, where = pick("alpha", cli, env, ini)
    if raw is None:
        return None
    try:
        alpha = float(str(raw))
    except ValueError:
        raise SettingsError(where, f"not a number: {raw!r}") from None
    if not 0.0 < alpha < 0.5:
        raise SettingsError(where, f"must be in (0, 0.5) (the false-pass rate at the allowance), got {raw}")
    return alpha


def _report(cli: Mapping[str, object], field: str) -> Path | None:
    """A report path: a file in a folder that can be written, checked now (not when the run ends)."""
    raw, flag = cli.get(field), OPTION[field].flag
    if not raw:
        return None
    path = Path(str(raw)).expanduser()
    if path.is_dir():
        raise SettingsError(flag, f"{path} is a directory; give a file path")
    problem = unwritable(path)
    if problem is not None:
        raise SettingsError(flag, f"cannot write the report {path}: {problem}; give a path in a folder you can write")
    return path


def _history(raw: object, flag: str) -> Location | None:
    """The run history named by --fg-history, FORGETGUARD_HISTORY or the ini key: a path or a URL, checked
    now (a typo in a URL, or a PostgreSQL history without its driver, is a usage error before models load)."""
    from .history.location import LocationError

    if not raw:
        return None
    try:
        location = parse_location(str(raw))
    except LocationError as exc:
        raise SettingsError(flag, str(exc)) from None
    if location.path is not None and location.path.is_dir():
        raise SettingsError(flag, f"{location.path} is a directory; give a file path")
    if location.kind == "postgresql":
        import importlib.util

        from .history.postgres import INSTALL_HINT

        if importlib.util.find_spec("psycopg") is None:
            raise SettingsError(flag, f"{location.display} needs the PostgreSQL driver: {INSTALL_HINT}")
    return location


def _project(raw: object) -> str | None:
    """A project name: printable, at most 200 characters (None: the plugin uses the rootdir's name)."""
    if raw is None or raw == "":
        return None
    name = str(raw).strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise SettingsError(
            "--fg-project",
            f"{raw!r} is not a project name: 1 to 200 printable characters (default: the rootdir's name)",
        )
    return name
