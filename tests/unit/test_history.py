"""The run history in SQLite, and calibrations built from it: a real file, real processes."""

from __future__ import annotations

import io
import json
import multiprocessing
import sqlite3

import pytest
from helpers import fill

from pytest_forgetguard.calibration import PairKey, points, summarize
from pytest_forgetguard.cli import main as cli
from pytest_forgetguard.history import History, HistoryError, HistoryUnreadable, Run
from pytest_forgetguard.records import CheckRecord

BASE = {"spec": "models/base", "fingerprint": "b" * 16}


def kl(candidate, value, series="kl-s", error=None, passed=True):
    return CheckRecord(name="task-kl", kind="kl", candidate=candidate, metric="kl_forward_mean", value=value,
                       budget=1.0, passed=passed, error=error, details={"series": series}, base_info=BASE,
                       candidate_info={"spec": candidate, "fingerprint": f"fp-{candidate}"})  # fmt: skip


def ret(candidate, drop, series="ret-s", decided_by="measurement", forecast=None):
    details = {"series": series, "drop": drop, "decided_by": decided_by, "forecast": forecast}
    return CheckRecord(name="code", kind="retention", candidate=candidate, metric="bits_per_byte",
                       value=0.73 + (drop or 0), budget=0.0219, passed=True, details=details, base_info=BASE,
                       candidate_info={"spec": candidate, "fingerprint": f"fp-{candidate}"})  # fmt: skip


def test_a_run_round_trips_and_a_non_finite_value_is_no_point(tmp_path):
    h = History(tmp_path / "h.sqlite")
    run = Run.now(git_commit="abc")
    assert h.add_run(run, [kl("a", 0.1), ret("a", 0.002), kl("b", float("nan"))])
    assert not h.add_run(run, [kl("a", 0.1)])  # the same run again adds nothing
    rows = h.rows()
    assert [(r.name, r.candidate, r.value, r.drop) for r in rows] == [
        ("task-kl", "a", 0.1, None), ("code", "a", pytest.approx(0.732), 0.002), ("task-kl", "b", None, None)
    ]  # fmt: skip
    assert rows[0].series == "kl-s" and rows[0].base_fingerprint == "b" * 16 and rows[0].candidate_fingerprint == "fp-a"
    assert h.runs()[0].git_commit == "abc" and len(h.runs()) == 1


def test_calibration_points_pair_one_candidate_in_one_run_and_never_mix_series(tmp_path):
    h = History(tmp_path / "h.sqlite")
    h.add_run(Run.now(), [kl("a", 0.1), ret("a", 0.002), kl("b", 0.5), ret("b", 0.011)])
    h.add_run(Run.now(), [kl("a", 0.2), ret("a", 0.004)])  # a rerun of a: its latest run counts, once
    h.add_run(Run.now(), [kl("c", 0.9, series="other-prompts"), ret("c", 0.02)])  # another KL series
    h.add_run(Run.now(), [kl("d", 0.3), ret("d", None, decided_by="forecast")])  # nothing measured: no point
    h.add_run(Run.now(), [kl("e", 0.3, error="NonFiniteError: boom"), ret("e", 0.01)])  # errored KL: no point
    rows = h.rows()
    key = PairKey("kl-s", "ret-s", "b" * 16)
    assert sorted((p.candidate, p.kl, p.drop) for p in points(rows, key)) == [
        ("fp-a", 0.2, 0.004),
        ("fp-b", 0.5, 0.011),
    ]
    assert [p.candidate for p in points(rows, key, exclude_candidate="fp-a")] == ["fp-b"]
    assert points(rows, PairKey("kl-s", "ret-s", "another-base")) == []
    [pair] = summarize(rows)  # the other series has one point: no pair to fit
    assert (pair.kl_check, pair.retention_check, pair.calibration.n, pair.allowance) == ("task-kl", "code", 2, 0.0219)


def test_observed_coverage_counts_the_forecasts_that_held(tmp_path):
    h = History(tmp_path / "h.sqlite")
    held = {"drop": 0.01, "low": 0.0, "high": 0.02}
    missed = {"drop": 0.01, "low": 0.0, "high": 0.005}
    h.add_run(Run.now(), [kl("a", 0.1), ret("a", 0.01, forecast=held), kl("b", 0.2), ret("b", 0.01, forecast=missed),
                          kl("c", 0.3), ret("c", 0.02)])  # fmt: skip
    [pair] = summarize(h.rows())
    assert pair.coverage_observed() == (1, 2)


def test_export_then_import_merges_and_importing_twice_adds_nothing(tmp_path):
    a = History(tmp_path / "a.sqlite")
    a.add_run(Run.now(git_commit="1"), [kl("x", 0.1), ret("x", 0.003)])
    a.add_run(Run.now(git_commit="2"), [kl("y", 0.4), ret("y", 0.009)])
    out = io.StringIO()
    assert a.export_jsonl(out) == 2
    b = History(tmp_path / "b.sqlite")
    b.add_run(Run.now(git_commit="3"), [kl("z", 0.7), ret("z", 0.015)])
    lines = out.getvalue().splitlines()
    assert b.import_jsonl(lines) == (2, 0)
    assert b.import_jsonl(lines) == (0, 2)
    assert sorted(r.git_commit for r in b.runs()) == ["1", "2", "3"]
    assert sorted((r.candidate, r.value) for r in b.rows(kind="kl")) == [("x", 0.1), ("y", 0.4), ("z", 0.7)]
    assert len(b.rows()) == 6 and summarize(b.rows())[0].calibration.n == 3
    with pytest.raises(HistoryError, match=r"import:1: not a pytest-forgetguard history export line"):
        b.import_jsonl(['{"some": "json"}'])


def _writer(path: str, worker: int, runs: int) -> None:
    h = History(path)
    for i in range(runs):
        h.add_run(
            Run.now(git_commit=f"{worker}-{i}"), [kl(f"c{worker}-{i}", 0.1 * i), ret(f"c{worker}-{i}", 0.001 * i)]
        )


def test_concurrent_writers_share_one_file(tmp_path):
    path = str(tmp_path / "h.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    h = History(tmp_path / "h.sqlite")
    assert len(h.runs()) == 45 and len(h.rows()) == 90
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_file_that_is_not_a_history_or_of_another_schema_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("not a database")
    with pytest.raises(HistoryError, match="is not a forgetguard run history"):
        History(bad).rows()
    old = tmp_path / "old.sqlite"
    History(old).add_run(Run.now(), [kl("a", 0.1)])
    with sqlite3.connect(old) as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema'")
    with pytest.raises(HistoryError, match="schema 0, which no release wrote"):
        History(old).rows()
    with pytest.raises(HistoryError, match="no run history at .* yet"):
        History(tmp_path / "missing.sqlite").rows()


def test_the_command_line(tmp_path, capsys):
    path = tmp_path / "h.sqlite"
    h = History(path)
    from test_forecast import POINTS  # twenty candidates: enough for a bound at alpha 0.05

    for i, (k, d) in enumerate(POINTS):
        h.add_run(Run.now(git_commit=f"c{i}"), [kl(f"cand{i}", k), ret(f"cand{i}", d)])
    assert cli(["calibrate", "--history", str(path), "--json"]) == 0
    [pair] = json.loads(capsys.readouterr().out)
    assert {"kl_check", "retention_check", "n", "slope", "r2", "alpha", "evidence_problems", "audits"} <= set(pair)
    assert (pair["kl_check"], pair["retention_check"], pair["n"], pair["runs_needed"]) == ("task-kl", "code", 20, 0)
    assert 0 < pair["kl_budget"] < 1.9 and pair["r2"] > 0.9 and pair["evidence_problems"] == []
    assert cli(["calibrate", "--history", str(path)]) == 0
    table = capsys.readouterr().out
    assert "task-kl" in table and "KL budget" in table
    assert cli(["history", "--history", str(path), "--check", "code", "--last", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["candidate"] for r in rows] == ["cand18", "cand19"] and rows[0]["drop"] == 0.0402
    export = tmp_path / "h.jsonl"
    assert cli(["export", "--history", str(path), "-o", str(export)]) == 0
    capsys.readouterr()
    assert cli(["import", "--history", str(tmp_path / "copy.sqlite"), str(export), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"added": 20, "already_there": 0}
    assert cli(["history", "--history", str(tmp_path / "nowhere.sqlite")]) == 1
    assert "no run history at" in capsys.readouterr().err
    for i in range(2):  # a young series beside it: its budget cell holds words, the column is mixed
        h.add_run(Run.now(git_commit=f"y{i}"), [kl(f"young{i}", 0.1 * i, series="kl-y"), ret(f"young{i}", 0.001)])
    assert cli(["calibrate", "--history", str(path)]) == 0
    table = capsys.readouterr().out
    assert "more runs" in table
    assert format(pair["kl_budget"], ".4g") in table and repr(pair["kl_budget"]) not in table  # 4 digits, not 17


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, time REAL NOT NULL, host TEXT, git_commit TEXT, source TEXT);
CREATE TABLE checks (
    run_id TEXT NOT NULL REFERENCES runs(run_id), seq INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    series TEXT, base_fingerprint TEXT, candidate TEXT NOT NULL, candidate_fingerprint TEXT, metric TEXT,
    value REAL, drop_value REAL, budget REAL, passed INTEGER NOT NULL, error TEXT, decided_by TEXT,
    record TEXT NOT NULL, PRIMARY KEY (run_id, seq)
);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO runs VALUES ('old-run', 1000.0, 'ci-7', 'abc', '');
"""


def test_a_schema_1_history_upgrades_in_place_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1)
        conn.execute(
            "INSERT INTO checks VALUES ('old-run', 0, 'task-kl', 'kl', 'kl-s', ?, 'a', 'fp-a', 'kl_forward_mean', "
            "0.1, NULL, 1.0, 1, NULL, NULL, ?)",
            ("b" * 16, json.dumps(kl("a", 0.1).to_json())),
        )
    h = History(path)
    [run] = h.runs()
    assert (run.run_id, run.host, run.complete, run.incomplete_reason) == ("old-run", "ci-7", True, None)
    assert [r.value for r in h.rows()] == [0.1]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
    assert h.add_run(Run.now(complete=False, reason="interrupted"), [kl("b", 0.2)])
    assert [r.complete for r in h.runs()] == [True, False]


def test_an_incomplete_run_is_shown_and_never_calibrated_on(tmp_path, capsys):
    h = History(tmp_path / "h.sqlite")
    for i in range(3):
        h.add_run(Run.now(), [kl(f"c{i}", 0.1 * (i + 1)), ret(f"c{i}", 0.01 * (i + 1))])
    h.add_run(Run.now(complete=False, reason="stopped early: stopping after 1 failures"), [kl("x", 0.5), ret("x", 9.0)])
    key = PairKey("kl-s", "ret-s", "b" * 16)
    assert sorted(p.candidate for p in points(h.rows(), key)) == ["fp-c0", "fp-c1", "fp-c2"]
    assert cli(["history", "--history", str(h.path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["complete"] for r in rows] == [True] * 6 + [False] * 2
    assert rows[-1]["incomplete_reason"] == "stopped early: stopping after 1 failures"
    assert cli(["history", "--history", str(h.path)]) == 0
    assert "(run incomplete)" in capsys.readouterr().out
    export = io.StringIO()
    h.export_jsonl(export)
    copy = History(tmp_path / "copy.sqlite")
    assert copy.import_jsonl(export.getvalue().splitlines()) == (4, 0)
    assert [r.complete for r in copy.runs()] == [True, True, True, False]


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda d: d["run"].update(time=float("nan")), "time must be a Unix time between 2001 and 2096, got nan"),
        (lambda d: d["run"].update(time=float("inf")), "got inf"),
        (
            lambda d: d["checks"][0]["record"].update(passed="false"),
            "check 0: passed must be true or false, got 'false'",
        ),
        (lambda d: d["checks"][0]["record"].update(kind="vibes"), "check 0: unknown kind 'vibes'"),
        (
            lambda d: d["checks"][0]["record"].update(value=[0.1, 0.2]),
            "check 0: value must be a number, got [0.1, 0.2]",
        ),
        (
            lambda d: d["checks"][1]["record"]["details"].update(drop=1e308),
            "check 1: details.drop = 1e+308 is not a plausible",
        ),
        (lambda d: d["checks"][0]["record"].update(error="boom"), "a check with an error cannot have passed"),
        (lambda d: d["run"].update(complete="yes"), "complete must be true or false, got 'yes'"),
    ],
)
def test_an_import_is_validated_row_by_row_and_all_or_nothing(tmp_path, edit, reason):
    h = History(tmp_path / "h.sqlite")
    h.add_run(Run.now(), [kl("a", 0.1), ret("a", 0.002)])
    out = io.StringIO()
    h.export_jsonl(out)
    good = out.getvalue().strip()
    bad = json.loads(good)
    bad["run"]["run_id"] = "other"
    edit(bad)
    target = History(tmp_path / "t.sqlite")
    with pytest.raises(HistoryError) as info:
        target.import_jsonl([good, json.dumps(bad)], source="runs.jsonl")
    message = str(info.value)
    assert "1 line(s) refused, nothing imported" in message and "runs.jsonl:2: " in message and reason in message
    assert not target.path.exists() or target.runs() == []  # nothing half-imported


def _history_with(path, n=30):
    h = History(path)
    for i in range(n):
        h.add_run(Run(f"run{i}", 1.7e9 + i, "host"), [kl(f"c{i}", 0.01 * i), ret(f"c{i}", 0.001 * i)])
    return h


def _damage(path, how):
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif how == "another program's database":
        path.unlink()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (x)")
    return path.read_bytes()


@pytest.mark.parametrize("how", ["empty", "truncated", "garbage", "another program's database"])
def test_an_unreadable_history_is_named_and_moved_aside_whole(tmp_path, how):
    path = tmp_path / "history.sqlite"
    _history_with(path)
    before = _damage(path, how)
    with pytest.raises(HistoryUnreadable, match=f"{path.name}"):
        History(path).verify()
    aside = History(path).move_aside()
    assert not path.exists() and aside.read_bytes() == before  # never overwritten, never deleted
    assert aside.name.startswith("history.sqlite.unreadable-")
    History(path).add_run(Run.now(), [kl("a", 0.1)])  # a fresh one starts
    assert len(History(path).runs()) == 1


def test_a_history_of_another_schema_is_not_unreadable_it_is_left_alone(tmp_path):
    path = tmp_path / "history.sqlite"
    _history_with(path, 2)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema'")
    with pytest.raises(HistoryError, match="schema 9") as err:
        History(path).verify()
    assert not isinstance(err.value, HistoryUnreadable)


def test_a_new_history_on_a_full_disk_leaves_no_file_and_an_old_one_stays_whole(full_disk):
    fill(full_disk, leave=0)
    with pytest.raises(HistoryError, match="cannot create the run history .*disk is full .free space there"):
        History(full_disk / "new.sqlite").add_run(Run.now(), [kl("a", 0.1)])
    assert sorted(p.name for p in full_disk.iterdir()) == ["ballast"]  # no 0-byte history, no temporary file
    (full_disk / "ballast").unlink()
    old = _history_with(full_disk / "old.sqlite", 3)
    fill(full_disk, leave=0)
    big = [kl(f"x{i}", 0.1) for i in range(300)]
    with pytest.raises(HistoryError, match="is its disk full.*the file is as it was") as err:
        old.add_run(Run.now(), big)
    assert not isinstance(err.value, HistoryUnreadable)  # a full disk is no reason to move a history aside
    (full_disk / "ballast").unlink()
    assert len(old.runs()) == 3  # the transaction rolled back: the file is whole and readable
    with sqlite3.connect(old.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_same_run_under_another_id_is_found_by_content(tmp_path):
    a = _history_with(tmp_path / "a.sqlite", 3)
    out = io.StringIO()
    a.export_jsonl(out)
    lines = out.getvalue().splitlines()
    renamed = [json.dumps({**json.loads(x), "run": {**json.loads(x)["run"], "run_id": "copy" + str(i)}})
               for i, x in enumerate(lines)]  # fmt: skip
    assert a.import_jsonl(renamed) == (0, 3)
    b = History(tmp_path / "b.sqlite")
    assert b.import_jsonl(lines) == (3, 0) and b.import_jsonl(renamed) == (0, 3)
    assert len(b.runs()) == 3


def test_last_runs_and_series_are_read_from_indexes(tmp_path):
    h = _history_with(tmp_path / "h.sqlite", 30)
    assert [r.run_id for r in h.runs(last=2)] == ["run28", "run29"]
    assert {r.run_id for r in h.rows(run_ids=["run3", "run5"])} == {"run3", "run5"}
    assert len(h.rows(series=["kl-s"])) == 30 and len(h.rows(series=["kl-s", "ret-s"])) == 60
    assert h.rows(series=[]) == [] and h.rows(run_ids=[]) == []
    with sqlite3.connect(h.path) as conn:
        plan = " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM runs ORDER BY time DESC LIMIT 2"))
        assert "runs_by_time" in plan
