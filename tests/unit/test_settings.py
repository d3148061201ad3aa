"""Option resolution: precedence and validation (pure, no pytest config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_forgetguard.settings import DEFAULT_SEED, Settings, SettingsError, resolve


def test_defaults():
    s = resolve({}, env={}, ini={})
    assert s == Settings(cache_dir=s.cache_dir)
    # Not given: None, so that a suite file may set them; the resolved values are the defaults.
    assert s.seed is None and s.device is None and s.dtype is None
    assert s.resolved_seed() == DEFAULT_SEED and s.resolved_dtype("cpu") == "float32"
    assert s.cache_dir is not None and s.cache_dir.name == "pytest-forgetguard"


def test_precedence_cli_over_env_over_ini(tmp_path):
    ini = {"base": "ini-org/base", "candidates": ["ini-org/cand"], "cache_dir": str(tmp_path / "ini")}
    env = {
        "FORGETGUARD_BASE": "env-org/base",
        "FORGETGUARD_CANDIDATE": "env-org/a, env-org/b",
        "FORGETGUARD_CACHE_DIR": str(tmp_path / "env"),
    }
    s = resolve({}, env=env, ini=ini)
    assert s.base == "env-org/base" and s.candidates == ("env-org/a", "env-org/b")
    assert s.cache_dir == tmp_path / "env"
    s = resolve(
        {"base": "cli-org/base", "candidates": ["cli-org/c"], "cache_dir": str(tmp_path / "cli")}, env=env, ini=ini
    )
    assert s.base == "cli-org/base" and s.candidates == ("cli-org/c",) and s.cache_dir == tmp_path / "cli"
    s = resolve({}, env={}, ini=ini)
    assert s.base == "ini-org/base" and s.candidates == ("ini-org/cand",)


def test_ini_paths_are_relative_to_the_ini_file(tmp_path):
    (tmp_path / "models" / "base").mkdir(parents=True)
    s = resolve({}, env={}, ini={"base": "models/base"}, ini_dir=tmp_path)
    assert s.base == str(tmp_path / "models" / "base")


def test_no_cache_wins():
    assert resolve({"no_cache": True, "cache_dir": "/x"}, env={}, ini={}).cache_dir is None


def test_auto_dtype_and_device():
    s = resolve({"device": "cpu"}, env={}, ini={})
    assert s.resolved_device() == "cpu" and s.resolved_dtype("cpu") == "float32"
    assert s.resolved_dtype("cuda:0") == "bfloat16"
    assert resolve({"dtype": "float16"}, env={}, ini={}).resolved_dtype("cpu") == "float16"


def test_options_win_over_the_suite_file():
    given = resolve({"device": "cpu", "seed": "3"}, env={}, ini={"dtype": "float16"})
    assert given.resolved_device(suite_device="cuda:1") == "cpu"
    assert given.resolved_dtype("cpu", suite_dtype="bfloat16") == "float16"
    assert given.resolved_seed(suite_seed=7) == 3
    # An explicit `auto` is a value too: it wins over the suite's device.
    assert resolve({"device": "auto"}, env={}, ini={}).device == "auto"


def test_suite_file_applies_when_no_option_is_given():
    s = resolve({}, env={}, ini={})
    assert s.resolved_device(suite_device="cuda:1") == "cuda:1"
    assert s.resolved_dtype("cuda:1", suite_dtype="float32") == "float32"
    assert s.resolved_seed(suite_seed=7) == 7 and s.resolved_seed(suite_seed=0) == 0


@pytest.mark.parametrize(
    "cli, ini, option",
    [
        ({"device": "gpu"}, {}, "--fg-device"),
        ({}, {"device": "cuda:x"}, "forgetguard_device"),  # named where the value was given
        ({"dtype": "int8"}, {}, "--fg-dtype"),
        ({"seed": "abc"}, {}, "--fg-seed"),
        ({}, {"seed": "-3"}, "forgetguard_seed"),
    ],
)
def test_bad_values_name_the_option(cli, ini, option):
    with pytest.raises(SettingsError) as info:
        resolve(cli, env={}, ini=ini)
    assert info.value.option == option
    assert option in str(info.value)


def test_report_path_must_not_be_a_directory(tmp_path):
    with pytest.raises(SettingsError, match="--fg-report-json"):
        resolve({"report_json": str(tmp_path)}, env={}, ini={})


def test_cache_dir_must_not_be_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SettingsError, match="--fg-cache-dir"):
        resolve({"cache_dir": str(f)}, env={}, ini={})


def test_settings_are_frozen():
    s = resolve({}, env={}, ini={})
    with pytest.raises(AttributeError):
        s.seed = 3  # type: ignore[misc]
    assert isinstance(s.cache_dir, Path)


def test_alpha_comes_from_the_command_line_environment_or_ini_and_is_checked():
    assert resolve({}, env={}, ini={}).alpha is None  # each check's own (0.05 by default)
    assert resolve({"alpha": "0.1"}, env={"FORGETGUARD_ALPHA": "0.2"}, ini={"alpha": "0.3"}).alpha == 0.1
    assert resolve({}, env={"FORGETGUARD_ALPHA": "0.2"}, ini={"alpha": "0.3"}).alpha == 0.2
    assert resolve({}, env={}, ini={"alpha": "0.3"}).alpha == 0.3
    for cli, env, ini, option in [
        ({"alpha": "0.5"}, {}, {}, "--fg-alpha"),
        ({"alpha": "nan"}, {}, {}, "--fg-alpha"),
        ({}, {"FORGETGUARD_ALPHA": "five percent"}, {}, "FORGETGUARD_ALPHA"),
        ({}, {}, {"alpha": "0"}, "forgetguard_alpha"),
    ]:
        with pytest.raises(SettingsError) as info:
            resolve(cli, env=env, ini=ini)
        assert info.value.option == option


def test_every_option_is_declared_once_and_the_docs_table_is_generated_from_it(pytester):
    """One table (pytest_forgetguard.options): pytest's --help, the ini keys and docs/options.md agree with it."""
    from pathlib import Path

    from pytest_forgetguard.options import OPTIONS, markdown_table

    assert len({o.flag for o in OPTIONS}) == len({o.field for o in OPTIONS}) == len(OPTIONS)
    page = (Path(__file__).resolve().parents[2] / "docs" / "options.md").read_text(encoding="utf-8")
    assert markdown_table() in page, "docs/options.md: run python scripts/gen_options_table.py"
    help_text = pytester.runpytest("--help").stdout.str()
    for o in OPTIONS:
        assert o.flag in help_text and (o.ini is None or o.ini in help_text) and (o.env is None or o.env in help_text)


@pytest.mark.parametrize("option", [o for o in __import__("pytest_forgetguard.options").options.OPTIONS if o.env])
def test_each_variable_sits_between_the_command_line_and_the_ini(option):
    from pytest_forgetguard.options import pick

    values = {"flag": ("1", "0", "1"), "list": ("a", "b", ["c"])}.get(option.kind, ("x", "y", "z"))
    cli, env, ini = {option.field: values[0]}, {option.env: values[1]}, {option.field: values[2]}
    assert pick(option.field, cli, env, ini) == (values[0], option.flag)
    assert pick(option.field, {}, env, ini) == (values[1], option.env)
    assert pick(option.field, {}, {}, ini) == (values[2], option.ini)
