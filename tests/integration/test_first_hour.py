"""The first hour of a new user: quiet output, messages that stand alone, reports in one unit per row,
bad usage caught at the start. Real pytest runs on tiny models."""

from __future__ import annotations

import re

import pytest
from helpers import DOC_PAIRS, forgetguard_args, prompts_jsonl
from lmeval_tasks import write_tasks

SUITE = """
checks:
  - name: task-kl
    kl: {prompts: prompts.jsonl, sample_from: dataset, budget: 0.001}
  - name: keeps-mc
    retention: {task: tiny_mc, include_path: tasks, max_drop: 0.5, gate: significant}
"""


@pytest.fixture
def project(pytester):
    pytester.makefile(".ini", pytest="[pytest]\n")
    write_tasks(pytester.path / "tasks")
    pytester.path.joinpath("prompts.jsonl").write_text(prompts_jsonl())
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE)
    return pytester


def args(tiny, cand="candidate", *more):
    return [*forgetguard_args(tiny["base"], tiny[cand]), "-p", "no:cacheprovider", *more]


@pytest.mark.slow  # pytest in a subprocess, lm-eval
def test_third_party_progress_bars_and_harmless_warnings_are_not_shown(project, tiny):
    # A subprocess: pytest captures test output as in a user's run, and failures show what was captured.
    result = project.runpytest_subprocess(*args(tiny, "lora"))
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str() + result.stderr.str()
    assert not re.search(r"\d+%\|", out), "a third-party progress bar reached the output"
    assert "Loading weights" not in out and "Running loglikelihood requests" not in out
    assert "is_gradient_checkpointing" not in out  # peft's FutureWarning about transformers
    # Everything on demand: -vv shows third-party output again.
    loud = project.runpytest_subprocess(*args(tiny, "lora", "-vv"))
    assert re.search(r"\d+%\|", loud.stdout.str() + loud.stderr.str())


def test_a_failure_names_its_check_and_candidate_and_says_its_headline_once(project, tiny):
    result = project.runpytest(*args(tiny), "-k", "task-kl")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*_ forgetguard kl check task-kl on candidate _*"])
    out = result.stdout.str()
    failure, summary = out.split("short test summary info")
    assert failure.count("kl_forward_mean = ") == 1, "the value and CI are said once"
    assert "KL budget exceeded for candidate 'candidate' vs base 'base'" in out  # short labels
    # The short summary is one line, also on CI where pytest would otherwise repeat the whole message.
    line = [s for s in summary.splitlines() if s.startswith("FAILED")]
    assert len(line) == 1 and "95% CI" not in summary, summary


def test_on_ci_the_short_summary_is_the_headline_for_suites_and_tests(project, tiny, monkeypatch):
    monkeypatch.setenv("CI", "true")  # pytest prints whole messages in the summary on CI
    project.makepyfile(
        test_gate="""
        def test_gate(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", 0.001, sample_from="dataset")
        """
    )
    result = project.runpytest(*args(tiny), "-k", "task-kl or test_gate", "--junitxml=j.xml")
    result.assert_outcomes(failed=2)
    summary = result.stdout.str().split("short test summary info")[1]
    failed = [s for s in summary.splitlines() if s.startswith("FAILED")]
    assert len(failed) == 2 and "95% CI" not in summary, summary
    for s in failed:
        assert re.search(
            r"KLBudgetExceeded: KL budget exceeded .*: kl_forward_mean = [0-9.]+ nats/token > budget", s
        ), s
    junit = (project.path / "j.xml").read_text()
    assert junit.count('message="KLBudgetExceeded: KL budget exceeded') == 2, junit


def test_retention_rows_compare_the_drop_with_the_allowed_drop(project, tiny):
    result = project.runpytest(
        *forgetguard_args(tiny["base"], tiny["candidate"], tiny["twin"]), "-k", "keeps-mc", "--fg-report-md=r.md",
        "-W", "ignore::pytest_forgetguard.errors.ForgetguardWarning",
    )  # fmt: skip
    result.assert_outcomes(passed=2)
    # Side by side: the drop (positive = worse) against the allowed drop, not the score against it.
    result.stdout.re_match_lines([r"^keeps-mc +drop ≤ 0\.5 +[+-][0-9.e-]+ PASS +[+-]?0 PASS"])
    md = (project.path / "r.md").read_text()
    assert re.search(r"\| keeps-mc \| drop ≤ 0\.5 \| [+-][0-9.e-]+ PASS \| [+-]?0 PASS \|", md)


def test_an_argument_error_is_in_the_summary_too(pytester, tiny):
    pytester.makepyfile(
        """
        def test_bad(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=-1, name="bad-budget")
        """
    )
    pytester.path.joinpath("prompts.jsonl").write_text(prompts_jsonl(DOC_PAIRS[:1]))
    result = pytester.runpytest(*forgetguard_args(tiny["base"], tiny["candidate"]))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*= forgetguard =*", "bad-budget *ERROR"])


def test_an_empty_prompt_file_fails_before_any_model_loads(pytester, tiny):
    pytester.makepyfile(
        """
        def test_empty(forgetguard, base_model, candidate_model):
            try:
                forgetguard.assert_kl_budget("empty.jsonl", budget=1.0)
            finally:
                assert not base_model.loaded and not candidate_model.loaded
        """
    )
    pytester.path.joinpath("empty.jsonl").write_text("")
    result = pytester.runpytest(*forgetguard_args(tiny["base"], tiny["candidate"]))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*PromptFileError: prompt file empty.jsonl is empty*"])


def test_a_missing_prompt_file_in_a_suite_is_a_collection_error_naming_where_it_looked(pytester, tiny):
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "forgetguard.yaml").write_text(
        "checks:\n  - name: k\n    kl: {prompts: prompt.jsonl, budget: 1}\n"
    )
    result = pytester.runpytest(*forgetguard_args(tiny["base"], tiny["candidate"]))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*forgetguard.yaml:3: check 'k': kl.prompts: file */suites/prompt.jsonl does not exist*"]
    )


def test_the_rootdir_trap_is_named_with_its_fix(pytester, tiny):
    """A model path given as a separate argument, inside another project: pytest would take that project's
    configuration. forgetguard says so, and the one-argument form works."""
    other = pytester.path / "other"
    (other / "model").mkdir(parents=True)
    (other / "model" / "config.json").write_text("{}")
    (other / "pyproject.toml").write_text("[tool.pytest.ini_options]\nfilterwarnings = ['error']\n")
    project = pytester.path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_x.py").write_text("def test_x():\n    pass\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        trapped = pytester.runpytest("--forgetguard", "--fg-base", "../other/model", "--fg-candidate=../other/model")
        assert trapped.ret == pytest.ExitCode.USAGE_ERROR
        trapped.stderr.fnmatch_lines(
            ["*pytest took */other as its rootdir and */other/pyproject.toml as its configuration because "
             "--fg-base ../other/model is written as two arguments*Write --fg-base=../other/model*"]
        )  # fmt: skip
        fine = pytester.runpytest("--forgetguard", "--fg-base=../other/model", "--fg-candidate=../other/model")
        fine.stdout.fnmatch_lines(["rootdir: */project*"])
        fine.assert_outcomes(passed=1)


def test_markdown_report_renders_as_tables(project, tiny):
    """The Markdown report, rendered by the Markdown library MkDocs uses: every table is a table, with the
    side-by-side drop column and short candidate names."""
    markdown = pytest.importorskip("markdown")
    project.runpytest(
        *forgetguard_args(tiny["base"], tiny["candidate"], tiny["twin"]), "--fg-report-md=r.md",
        "-W", "ignore::pytest_forgetguard.errors.ForgetguardWarning",
    )  # fmt: skip
    html = markdown.markdown((project.path / "r.md").read_text(), extensions=["tables"])
    tables = re.findall(r"<table>.*?</table>", html, flags=re.S)
    assert len(tables) == 3  # models, side by side, all checks
    headers = [re.findall(r"<th>(.*?)</th>", t) for t in tables]
    assert headers[0] == ["model", "SPEC", "fingerprint"]
    assert headers[1] == ["check", "budget", "candidate", "twin"]
    assert "<td>drop ≤ 0.5</td>" in tables[1]
    assert re.search(r"<td>keeps-mc</td>\s*<td>candidate</td>", tables[2])
