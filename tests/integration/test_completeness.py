"""A run that did not finish says so everywhere: -x, Ctrl-C and SIGTERM after a passing check (tiny models)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import forgetguard_args

from pytest_forgetguard.cli import main
from pytest_forgetguard.history import History

pytestmark = pytest.mark.slow  # real pytest runs loading tiny models

SUITE = """
checks:
  - name: a-weights
    drift: {max_relative_l2: 10}
  - name: b-weights-too-tight
    drift: {max_relative_l2: 0.0}
  - name: c-weights
    drift: {max_relative_l2: 10}
"""


def run(pytester, tiny, *args, subprocess=False):
    history = pytester.path / "history.sqlite"
    # An interrupted run in process would interrupt this session too (pytester re-raises KeyboardInterrupt).
    runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest
    result = runner(
        *forgetguard_args(tiny["base"], tiny["candidate"]), f"--fg-history={history}", "--fg-report-json=r.json",
        "--fg-report-md=r.md", "-p", "no:cacheprovider", *args,
    )  # fmt: skip
    report = json.loads((pytester.path / "r.json").read_text())
    return result, report, history


def test_a_finished_run_is_complete_and_recorded(pytester, tiny):
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE)
    result, report, history = run(pytester, tiny)
    result.assert_outcomes(passed=2, failed=1)
    assert report["complete"] is True and report["incomplete_reason"] is None
    assert report["history"] == {"path": str(history), "written": True, "reason": None, "moved_aside": None}
    assert History(history).runs()[-1].complete is True


def test_stopped_by_x_is_incomplete_everywhere(pytester, tiny, capsys):
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE)
    result, report, history = run(pytester, tiny, "-x")
    result.assert_outcomes(passed=1, failed=1)
    assert report["complete"] is False and "stopped early" in report["incomplete_reason"]
    assert len(report["checks"]) == 2  # the third never ran
    result.stdout.fnmatch_lines(["*INCOMPLETE run (stopped early*): the verdicts below are those of the checks that ran*",
                                 "*forgetguard run recorded in * marked incomplete*"])  # fmt: skip
    md = (pytester.path / "r.md").read_text()
    assert md.startswith("## ⚠️ forgetguard: incomplete run (stopped early") and "all " not in md.splitlines()[0]
    [run_] = History(history).runs()
    assert run_.complete is False and "stopped early" in (run_.incomplete_reason or "")
    capsys.readouterr()
    assert main(["history", "--history", str(history), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["complete"] is False for r in rows)


def test_ctrl_c_after_a_passing_check_is_not_all_passed(pytester, tiny):
    pytester.makepyfile(
        test_stop="""
        def test_weights(forgetguard):
            forgetguard.assert_drift(max_relative_l2=10, name="weights")

        def test_then_ctrl_c():
            raise KeyboardInterrupt
        """
    )
    result, report, history = run(pytester, tiny, subprocess=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert report["complete"] is False and report["incomplete_reason"] == "interrupted (Ctrl-C or SIGTERM)"
    assert [c["passed"] for c in report["checks"]] == [True]
    assert "all 1 checks passed" not in (pytester.path / "r.md").read_text()
    assert History(history).runs()[-1].complete is False


def test_sigterm_is_an_interruption_with_reports(pytester, tiny):
    pytester.makepyfile(
        test_term="""
        import os, signal

        def test_weights(forgetguard):
            forgetguard.assert_drift(max_relative_l2=10, name="weights")

        def test_then_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *forgetguard_args(tiny["base"], tiny["candidate"]), "--fg-no-history",
         "--fg-report-json=r.json", "-p", "no:cacheprovider", "-q"],
        cwd=pytester.path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout[-2000:]
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["complete"] is False and report["checks"][0]["passed"] is True
    assert report["history"]["written"] is False and "no history" in report["history"]["reason"]
