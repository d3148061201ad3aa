"""Every pytest option of forgetguard, declared once: its flag, ini key, environment variable, kind and help.

The plugin's ``addoption``, the gathering of raw values, their precedence (command line > environment >
ini > suite file, in :func:`pick`) and the options table in docs/options.md (:func:`markdown_table`,
checked by a test) all come from :data:`OPTIONS`. Validation of each value lives in
:mod:`pytest_forgetguard.settings`, which names an option by where its value came from.

Example::

    >>> OPTION["alpha"].env, OPTION["alpha"].ini
    ('FORGETGUARD_ALPHA', 'forgetguard_alpha')
    >>> pick("alpha", cli={}, env={"FORGETGUARD_ALPHA": "0.1"}, ini={"alpha": "0.2"})
    ('0.1', 'FORGETGUARD_ALPHA')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_EMPTY: tuple[Any, ...] = (None, "", [], ())


@dataclass(frozen=True)
class Option:
    """One option. ``kind``: ``value`` (takes an argument), ``flag`` (on/off; its variable takes 1/0,
    true/false, yes/no; its ini key a bool) or ``list`` (repeatable; its ini key one per line, its variable
    comma-separated)."""

    field: str  # the Settings field, and the key of the raw values (cli/ini mappings)
    flag: str
    help: str
    kind: str = "value"
    ini: str | None = None
    env: str | None = None
    metavar: str | None = None
    docs: str | None = None  # the docs table's meaning (Markdown), when it says more than the help

    @property
    def dest(self) -> str:
        return f"fg_{self.field}"

    def full_help(self) -> str:
        """The ``--help`` text: the help, and the variable that also sets it."""
        return self.help + (f"; env {self.env}" if self.env else "")


OPTIONS: tuple[Option, ...] = (
    Option("enabled", "--forgetguard", "enable forgetguard checks", kind="flag",
           docs="enable the plugin (without it, forgetguard tests are skipped and nothing heavy is imported)"),
    Option("base", "--fg-base", "reference model SPEC (directory, PEFT adapter, .gguf, hub id)",
           ini="forgetguard_base", env="FORGETGUARD_BASE", metavar="SPEC", docs="the reference model"),
    Option("candidates", "--fg-candidate", "model under test (repeatable: several candidates parametrize every "
           "check)", kind="list", ini="forgetguard_candidate", env="FORGETGUARD_CANDIDATE", metavar="SPEC",
           docs="the model(s) under test (ini: one per line; env: comma-separated)"),
    Option("device", "--fg-device", "cpu, cuda, cuda:N, mps or auto (default: cuda if available)",
           ini="forgetguard_device", metavar="DEVICE"),
    Option("dtype", "--fg-dtype", "float32, bfloat16, float16 or auto (float32 on CPU, bfloat16 on CUDA)",
           ini="forgetguard_dtype", metavar="DTYPE"),
    Option("report_json", "--fg-report-json", "write the JSON report here", metavar="PATH",
           docs="machine-readable report: see [Reports](reports.md)"),
    Option("report_md", "--fg-report-md", "write a Markdown report (pull-request comment) here", metavar="PATH"),
    Option("cache_dir", "--fg-cache-dir", "where base results and converted models are cached",
           ini="forgetguard_cache_dir", env="FORGETGUARD_CACHE_DIR", metavar="DIR",
           docs="the cache: base results, base samples, converted GGUF models (default "
           "`~/.cache/pytest-forgetguard`): see [Caches](caches.md)"),
    Option("no_cache", "--fg-no-cache", "do not read or write the cache", kind="flag"),
    Option("seed", "--fg-seed", "seed for all sampling (default 1234, so runs repeat)", ini="forgetguard_seed",
           metavar="N"),
    Option("alpha", "--fg-alpha", "retention verdicts' error rate: at most this share of candidates whose drop is "
           "at the allowance pass (default 0.05; over each check's own alpha)", ini="forgetguard_alpha",
           env="FORGETGUARD_ALPHA", metavar="ALPHA",
           docs="every retention verdict's error rate, in (0, 0.5), over each check's own `alpha` (default "
           "0.05): see [Verdicts](verdicts.md)"),
    Option("trust_remote_code", "--fg-trust-remote-code", "allow models to run code from their repository (off by "
           "default)", kind="flag"),
    Option("history", "--fg-history", "the run history: a SQLite file (default history.sqlite in the cache "
           "directory), sqlite:///path or postgresql://user@host:port/db (password from PGPASSWORD or ~/.pgpass)",
           ini="forgetguard_history", env="FORGETGUARD_HISTORY", metavar="PATH|URL",
           docs="the run history: a SQLite file (default `history.sqlite` in the cache directory; on by default), "
           "`sqlite:///path` or `postgresql://user@host:port/db` (password from `PGPASSWORD` or `~/.pgpass`, "
           "never printed): see [Budgets from evidence](forecasts.md#the-run-history)"),
    Option("project", "--fg-project", "the project this run is recorded under in a shared history (default: the "
           "rootdir's name)", ini="forgetguard_project", env="FORGETGUARD_PROJECT", metavar="NAME"),
    Option("no_history", "--fg-no-history", "do not record this run", kind="flag"),
    Option("no_forecast_skip", "--fg-no-forecast-skip", "run every retention check, also those a forecast could "
           "decide", kind="flag", ini="forgetguard_no_forecast_skip", env="FORGETGUARD_NO_FORECAST_SKIP"),
    Option("no_early_stop", "--fg-no-early-stop", "evaluate every item of every retention check (no early stop; "
           "for audits and benchmarks)", kind="flag", ini="forgetguard_no_early_stop",
           env="FORGETGUARD_NO_EARLY_STOP"),
)  # fmt: skip
OPTION: dict[str, Option] = {o.field: o for o in OPTIONS}


def pick(field: str, cli: Mapping[str, Any], env: Mapping[str, str], ini: Mapping[str, Any]) -> tuple[Any, str]:
    """The raw value of an option by precedence — command line, environment, ini — and where it came from
    (the flag, the variable or the ini key: what an error message names). Nothing given: (None, the flag)."""
    option = OPTION[field]
    if cli.get(field) not in _EMPTY:
        return cli[field], option.flag
    if option.env and env.get(option.env, "").strip():
        return env[option.env], option.env
    if option.ini and ini.get(field) not in _EMPTY:
        return ini[field], option.ini
    return None, option.flag


def markdown_table() -> str:
    """The options table of docs/options.md (a test checks the page holds exactly this)."""
    rows = ["| option | ini key | env var | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        flag = f"`{o.flag}{' ' + o.metavar if o.metavar else ''}`" + (" (repeatable)" if o.kind == "list" else "")
        ini = f"`{o.ini}`" if o.ini else ""
        env = f"`{o.env}`" if o.env else ""
        meaning = (o.docs or o.help).replace("|", "\\|")
        rows.append(f"| {flag.replace('|', chr(92) + '|')} | {ini} | {env} | {meaning} |")
    return "\n".join(rows) + "\n"
