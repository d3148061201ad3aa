"""What a run writes when it cannot: an unreadable history is moved aside and the gate goes on; a history or
report asked for by name that cannot be written (a full disk, a file in the way) fails the run after its checks,
naming the path and the OS error; nothing is left half-written (tiny models, real pytest runs)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from helpers import fill, forgetguard_args

from pytest_forgetguard.history import History, Run

pytestmark = pytest.mark.slow  # real pytest runs loading tiny models

SUITE = """
checks:
  - name: weights-ünïcode
    drift: {max_relative_l2: 10}
"""


def run(pytester, tiny, *args):
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE, encoding="utf-8")
    return pytester.runpytest(*forgetguard_args(tiny["base"], tiny["candidate"]), "-p", "no:cacheprovider", *args)


def report(pytester):
    return json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_an_unreadable_history_is_moved_aside_and_said_everywhere(pytester, tiny, damage):
    path = pytester.path / "history.sqlite"
    h = History(path)
    for i in range(20):
        h.add_run(Run(f"old{i}", 1.7e9 + i, "host"), [])
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x01" * 5000}[damage])
    before = path.read_bytes()
    result = run(pytester, tiny, f"--fg-history={path}", "--fg-report-json=r.json", "--fg-report-md=r.md",
                 "-W", "error")  # fmt: skip
    assert result.ret == 0, result.stdout.str()[-2000:]
    [aside] = [p for p in pytester.path.iterdir() if p.name.startswith("history.sqlite.unreadable-")]
    assert aside.read_bytes() == before  # kept whole, for whoever wants to look
    assert len(History(path).runs()) == 1  # a fresh history, with this run in it
    data = report(pytester)
    assert data["history"]["written"] is True and data["history"]["moved_aside"] == str(aside)
    [notice] = data["notices"]
    assert f"moved aside to {aside}" in notice and "measure instead of forecasting" in notice
    result.stdout.fnmatch_lines(["*forgetguard: the run history could not be read (*): moved aside to *"])
    assert "> ⚠️ the run history could not be read" in (pytester.path / "r.md").read_text(encoding="utf-8")


def test_a_history_of_another_schema_is_left_alone_and_the_gate_runs(pytester, tiny):
    path = pytester.path / "history.sqlite"
    History(path).add_run(Run.now(), [])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    before = path.read_bytes()
    result = run(pytester, tiny, f"--fg-history={path}", "--fg-report-json=r.json")
    result.assert_outcomes(passed=1)
    assert result.ret == 1 and path.read_bytes() == before  # asked for by name and not written: the run fails
    result.stdout.fnmatch_lines(["*the run history was not written: *schema 9, newer than this release*the run fails*"])
    assert report(pytester)["history"]["written"] is False and "schema 9" in report(pytester)["notices"][0]


def test_a_history_asked_for_that_cannot_be_written_fails_the_run_after_its_checks(pytester, tiny):
    blocker = pytester.path / "not-a-folder"
    blocker.write_text("a file where the history's folder should be")
    result = run(pytester, tiny, f"--fg-history={blocker / 'history.sqlite'}", "--fg-report-json=r.json",
                 "-W", "error")  # fmt: skip
    result.assert_outcomes(passed=1)  # the checks ran and their verdicts stand
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            f"*the run history was not written: cannot create the run history {blocker}/history.sqlite: a file is in the way*the run fails*"
        ]
    )
    history = report(pytester)["history"]
    assert history["written"] is False and "a file is in the way" in history["reason"]


def test_the_default_history_that_cannot_be_written_only_warns(pytester, tiny, monkeypatch):
    monkeypatch.delenv("FORGETGUARD_HISTORY", raising=False)  # the default: history.sqlite in the cache folder
    cache = pytester.path / "cache"
    cache.mkdir()
    (cache / "history.sqlite").mkdir()  # a folder where the file should be
    result = run(pytester, tiny, f"--fg-cache-dir={cache}", "--fg-report-json=r.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*the run history was not written: *history.sqlite*"])
    assert "the run fails" not in result.stdout.str()


def test_reports_on_a_full_disk_fail_the_run_and_name_the_path_and_the_error(pytester, tiny, full_disk):
    fill(full_disk, leave=0)
    target = full_disk / "r.json"
    result = run(pytester, tiny, f"--fg-report-json={target}", "--fg-report-md=r.md", "--fg-no-history")
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"*the JSON report {target} could not be written: No space left on device*"])
    assert not target.exists() and not list(full_disk.glob(".r.json*"))  # no half-written or temporary file
    assert "✅ forgetguard: all 1 checks passed" in (pytester.path / "r.md").read_text(encoding="utf-8")


def test_a_history_on_a_full_disk_stays_whole_and_the_run_fails(pytester, tiny, full_disk):
    path = full_disk / "history.sqlite"
    h = History(path)
    h.add_run(Run("old", 1.7e9, "host"), [])
    fill(full_disk, leave=0)
    result = run(pytester, tiny, f"--fg-history={path}", "--fg-report-json=r.json")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*the run history was not written: *disk*the run fails*"])
    (full_disk / "ballast").unlink()
    assert [r.run_id for r in History(path).runs()] == ["old"]
    assert not [p for p in full_disk.iterdir() if "unreadable" in p.name]  # a full disk is not damage
