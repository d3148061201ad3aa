"""The plugin is inert without --forgetguard; options are validated once, by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

TEST_FILE = """
def test_uses_models(forgetguard):
    pass

def test_plain():
    assert True
"""


def test_skipped_without_the_flag(pytester):
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*forgetguard is off: run pytest with --forgetguard to enable it*"])


def test_suite_items_skipped_without_the_flag(pytester):
    pytester.path.joinpath("p.jsonl").write_text('{"prompt": "x"}\n')
    pytester.makefile(".yaml", forgetguard="checks:\n  - {name: a, kl: {prompts: p.jsonl, budget: 1}}\n")
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*--forgetguard*"])


def test_help_and_collection_do_not_import_torch(pytester):
    pytester.makepyfile(TEST_FILE)
    code = (
        "import sys, pytest\n"
        "pytest.main(['--help'])\n"
        "pytest.main(['--collect-only', '-q', '--forgetguard'])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'lm_eval', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=pytester.path, capture_output=True, text=True, check=True
    ).stdout
    assert "--fg-base" in out and "forgetguard" in out
    assert "HEAVY []" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fg-device", "gpu"], "--fg-device: unknown device 'gpu'"),
        (["--fg-dtype", "int4"], "--fg-dtype: unknown dtype 'int4'"),
        (["--fg-seed", "x"], "--fg-seed: not an integer"),
    ],
)
def test_bad_option_is_a_usage_error(pytester, args, message):
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("--forgetguard", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_bad_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nforgetguard_dtype = fp8\n")
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("--forgetguard")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*forgetguard_dtype: unknown dtype 'fp8'*"])  # named where it was set


def test_precedence_cli_env_ini(pytester, monkeypatch, tiny):
    pytester.makeini(f"[pytest]\nforgetguard_base = {tiny['twin']}\nforgetguard_seed = 7\n")
    pytester.makepyfile("""
        def test_show(base_model, request):
            print("BASE", base_model.spec.location)
    """)
    result = pytester.runpytest("--forgetguard", "-s")
    result.stdout.fnmatch_lines([f"*BASE {tiny['twin']}"])
    monkeypatch.setenv("FORGETGUARD_BASE", str(tiny["candidate"]))
    result = pytester.runpytest("--forgetguard", "-s")
    result.stdout.fnmatch_lines([f"*BASE {tiny['candidate']}"])
    result = pytester.runpytest("--forgetguard", "-s", "--fg-base", str(tiny["base"]))
    result.stdout.fnmatch_lines([f"*BASE {tiny['base']}"])


def test_missing_base_is_a_clear_error(pytester, monkeypatch):
    monkeypatch.delenv("FORGETGUARD_BASE", raising=False)
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("--forgetguard")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*no base model: pass --fg-base SPEC*"])


def test_missing_model_path_is_a_clear_error(pytester):
    """A SPEC that cannot name a model is one usage error line, before anything is collected or loaded."""
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("--forgetguard", "--fg-base=./nowhere/model", "--fg-candidate=./x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: forgetguard: --fg-base: model SPEC './nowhere/model': no such file or directory*"]
    )
    assert len([line for line in result.stderr.lines if line]) == 1 and result.stdout.str().strip() == ""
    result = pytester.runpytest("--forgetguard", "--fg-base=org/model", "--fg-candidate=./x")
    result.stderr.fnmatch_lines(["ERROR: forgetguard: --fg-candidate: model SPEC './x': no such file or directory*"])


def test_load_model_hook(pytester, tiny):
    pytester.makeconftest(f"""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        LOADED = []

        def pytest_forgetguard_load_model(spec, device, dtype):
            if not spec.startswith("registry://"):
                return None
            name = spec.split("://", 1)[1]
            path = {{"base": r"{tiny["base"]}", "cand": r"{tiny["candidate"]}"}}[name]
            LOADED.append(spec)
            return AutoModelForCausalLM.from_pretrained(path).to(device), AutoTokenizer.from_pretrained(path)
    """)
    pytester.makepyfile("""
        import conftest

        def test_hook(forgetguard, base_model, candidate_model):
            result = forgetguard.kl(["The for statement"], max_new_tokens=4)
            assert result.value > 0
            assert conftest.LOADED == ["registry://base", "registry://cand"]
            assert len(base_model.fingerprint) == 16 and base_model.fingerprint != candidate_model.fingerprint
    """)
    result = pytester.runpytest("--forgetguard", "--fg-base", "registry://base", "--fg-candidate", "registry://cand")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest("--forgetguard", "--fg-base", "other://base", "--fg-candidate", "registry://cand")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no pytest_forgetguard_load_model hook loaded model SPEC 'other://base'*"])
