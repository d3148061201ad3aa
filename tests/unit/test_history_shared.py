"""A history a team shares: locations and their errors, the versioned schema, projects, both backends giving the
same answers, concurrent writers losing nothing, and moving a history between databases — on a real SQLite
file and a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from test_forecast import POINTS
from test_history import kl, ret

from pytest_forgetguard.calibration import PairKey, points
from pytest_forgetguard.cli import main as cli
from pytest_forgetguard.forecast import Calibration
from pytest_forgetguard.history import (
    SCHEMA_VERSION,
    History,
    HistoryError,
    HistoryUnavailable,
    HistoryUnreadable,
    LocationError,
    Run,
    copy_history,
    parse_location,
)

SCHEMA2 = Path(__file__).resolve().parents[1] / "data" / "history-schema2.sqlite"  # made by the release before


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def where(request, tmp_path):
    """A fresh history location of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite")
    return request.getfixturevalue("pg_url")


# -- locations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "shown"),
    [
        ("runs/history.sqlite", "sqlite", "runs/history.sqlite"),
        ("sqlite:///runs/h.sqlite", "sqlite", "runs/h.sqlite"),
        ("sqlite:////abs/h.sqlite", "sqlite", "/abs/h.sqlite"),
        ("postgresql://ci@db:5432/fg", "postgresql", "postgresql://ci@db:5432/fg"),
        ("postgres://ci:s3cr3t@db/fg", "postgresql", "postgresql://ci:***@db/fg"),
        ("postgresql+psycopg://ci:s3cr3t@db/fg", "postgresql", "postgresql://ci:***@db/fg"),
        ("C:/data/h.sqlite", "sqlite", "C:/data/h.sqlite"),
    ],
)
def test_a_location_is_a_path_or_a_url_and_never_shows_its_password(text, kind, shown):
    where = parse_location(text)
    assert (where.kind, where.display, str(where)) == (kind, shown, shown)
    assert "s3cr3t" not in repr(where)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mysql://ci:s3cr3t@db/fg", "unknown run history scheme 'mysql'.*postgresql://user@host:port/database"),
        ("postgresql://ci:s3cr3t@db", "name one database"),
        ("postgresql://ci:s3cr3t@db:notaport/fg", "malformed PostgreSQL URL"),
        ("postgresql://ci:s3cr3t@db:99999/fg", "malformed PostgreSQL URL"),
        ("postgresql://ci:s3cr3t@/fg", "no host"),
        ("postgresql:ci:s3cr3t@db/fg", "not a URL: write postgresql://"),
        ("sqlite://h.sqlite", "not a SQLite URL"),
        ("  ", "empty"),
    ],
)
def test_a_bad_location_is_a_clear_error_without_the_password(text, message):
    with pytest.raises(LocationError, match=message) as err:
        parse_location(text)
    assert "s3cr3t" not in str(err.value)


def test_a_bad_history_url_is_a_usage_error_before_anything_loads(pytester):
    pytester.makeini("[pytest]\n")
    for value, message in [
        ("mysql://ci:s3cr3t@db/fg", "unknown run history scheme 'mysql'"),
        ("postgresql://ci:s3cr3t@db", "malformed PostgreSQL URL postgresql://ci:***@db: name one database"),
    ]:
        result = pytester.runpytest("--forgetguard", f"--fg-history={value}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        err = result.stderr.str()
        assert f"--fg-history: {message}" in err and "s3cr3t" not in err + result.stdout.str()
    result = pytester.runpytest("--forgetguard", "--fg-project=a\tb")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fg-project: 'a\\tb' is not a project name" in result.stderr.str()


# -- the schema's versions ---------------------------------------------------------------------------------


def test_a_history_made_by_the_release_before_upgrades_in_place_and_keeps_every_run(tmp_path):
    path = tmp_path / "history.sqlite"
    shutil.copy(SCHEMA2, path)
    h = History(path, project="team")
    runs = h.runs()
    assert [(r.run_id, r.host, r.complete, r.project) for r in runs] == [
        ("run-0", "ci-host", True, None), ("run-1", "ci-host", True, None), ("run-2", "ci-host", False, None)
    ]  # fmt: skip
    assert [r.value for r in h.rows(kind="kl")] == pytest.approx([0.1, 0.2, 0.3])
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"runs_by_project_time", "checks_by_series", "runs_by_time"} <= indexes
    assert h.add_run(Run.now(), [kl("new", 0.4)])
    assert [r.project for r in h.runs()] == [None, None, None, "team"]  # older runs: shared by every project
    assert len(History(path, project="other").runs()) == 3


def test_a_newer_schema_is_refused_and_never_downgraded(where):
    h = History(where)
    h.add_run(Run.now(), [kl("a", 0.1)])
    _set_schema(h, "9")
    for attempt in (h.rows, h.verify, lambda: h.add_run(Run.now(), [kl("b", 0.2)])):
        with pytest.raises(HistoryError, match=f"schema 9, newer than this release's {SCHEMA_VERSION}") as err:
            attempt()
        assert not isinstance(err.value, (HistoryUnreadable, HistoryUnavailable))
        assert "fgpw" not in str(err.value)
    assert _schema(h) == "9"


def _set_schema(h, value):
    if h.path is not None:
        with sqlite3.connect(h.path) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (value,))
        return
    import psycopg

    with psycopg.connect(h.location.url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema'", (value,))


def _schema(h):
    if h.path is not None:
        with sqlite3.connect(h.path) as conn:
            return conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    import psycopg

    with psycopg.connect(h.location.url) as conn:
        return conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]


# -- projects ----------------------------------------------------------------------------------------------


def test_projects_share_one_history_without_mixing(where, capsys):
    a, b = History(where, project="repo-a"), History(where, project="repo-b")
    a.add_run(Run.now(git_commit="a1"), [kl("x", 0.1)])
    b.add_run(Run.now(git_commit="b1"), [kl("y", 0.2)])
    assert [r.candidate for r in a.rows()] == ["x"] and [r.candidate for r in b.rows()] == ["y"]
    assert len(History(where).runs()) == 2  # no project: every project's runs
    assert History(where).counts() == (2, 2) and a.counts() == (1, 1)
    assert cli(["history", "--history", where, "--project", "repo-b", "--json"]) == 0
    assert [(r["candidate"], r["project"]) for r in json.loads(capsys.readouterr().out)] == [("y", "repo-b")]


# -- both backends, the same answers -----------------------------------------------------------------------


@pytest.mark.postgres
def test_both_backends_give_identical_history_calibrate_and_forecast_outputs(tmp_path, pg_url, capsys):
    source = History(tmp_path / "made.sqlite")
    for i, (k, d) in enumerate(POINTS):
        source.add_run(Run(f"run-{i:02d}", 1.75e9 + i, "ci", f"c{i}"), [kl(f"cand{i}", k), ret(f"cand{i}", d)])
    export = io.StringIO()
    source.export_jsonl(export)
    outputs = {}
    for name, where in (("sqlite", str(tmp_path / "copy.sqlite")), ("postgresql", pg_url)):
        assert History(where).import_jsonl(export.getvalue().splitlines()) == (len(POINTS), 0)
        out = []
        for command in (["history", "--json"], ["history", "--last", "3"], ["calibrate", "--json"], ["calibrate"]):
            assert cli([*command, "--history", where]) == 0
            out.append(capsys.readouterr().out)
        rows = History(where).rows()
        cal = Calibration.fit([(p.kl, p.drop) for p in points(rows, PairKey("kl-s", "ret-s", "b" * 16))])
        out.append(json.dumps(cal.forecast(0.05).to_json(), sort_keys=True))
        again = io.StringIO()
        History(where).export_jsonl(again)
        out.append(again.getvalue())
        outputs[name] = out
    assert outputs["sqlite"] == outputs["postgresql"]
    assert '"n": 20' in outputs["postgresql"][2]


# -- concurrency -------------------------------------------------------------------------------------------

WRITERS, RUNS_EACH, CHECKS_EACH = 6, 25, 4


def _writer(where: str, index: int, start: threading.Event | None = None) -> None:
    h = History(where, project=f"p{index % 2}")
    for i in range(RUNS_EACH):
        run = Run(f"w{index}-r{i}", 1.75e9 + index * 1000 + i, f"host{index}", "c")
        records = [kl(f"cand-{index}-{i}-{j}", 0.01 * j) for j in range(CHECKS_EACH)]
        assert h.add_run(run, records)
        assert not h.add_run(run, records)  # a retried upload adds nothing


def _reader(where: str, stop: threading.Event, torn: list[str]) -> None:
    h = History(where)
    while not stop.is_set():
        try:
            rows = h.rows(records=False)
        except HistoryError:
            continue  # the history may not exist yet
        by_run: dict[str, int] = {}
        for r in rows:
            by_run[r.run_id] = by_run.get(r.run_id, 0) + 1
        torn.extend(run for run, n in by_run.items() if n != CHECKS_EACH)


def test_concurrent_writers_lose_nothing_and_readers_see_whole_runs(where):
    History(where).add_run(Run.now(), [kl(f"seed-{j}", 0.1) for j in range(CHECKS_EACH)])
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(where, i)) for i in range(WRITERS)]
    stop, torn = threading.Event(), []
    reader = threading.Thread(target=_reader, args=(where, stop, torn))
    reader.start()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    stop.set()
    reader.join()
    assert [p.exitcode for p in procs] == [0] * WRITERS
    assert torn == []
    h = History(where)
    assert h.counts() == (1 + WRITERS * RUNS_EACH, (1 + WRITERS * RUNS_EACH) * CHECKS_EACH)
    assert History(where, project="p1").counts() == (1 + 3 * RUNS_EACH, (1 + 3 * RUNS_EACH) * CHECKS_EACH)


# -- moving a history --------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_migrate_copies_a_history_across_backends_with_a_row_count_check(tmp_path, pg_url, capsys):
    source = tmp_path / "old.sqlite"
    shutil.copy(SCHEMA2, source)
    assert cli(["migrate", "--from", str(source), "--to", pg_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"runs": 3, "checks": 6, "added": 3, "already_there": 0}
    assert cli(["migrate", "--from", str(source), "--to", pg_url]) == 0  # again: nothing twice
    out = capsys.readouterr().out
    assert "3 runs and 6 check rows, all there (0 added, 3 already there)" in out and "fgpw" not in out
    back = tmp_path / "back.sqlite"
    assert cli(["migrate", "--from", f"postgres://{pg_url.split('://')[1]}", "--to", f"sqlite:///{back}"]) == 0
    capsys.readouterr()
    original, copied = io.StringIO(), io.StringIO()
    History(source).export_jsonl(original)
    History(back).export_jsonl(copied)
    assert original.getvalue() == copied.getvalue()
    assert cli(["migrate", "--from", str(back), "--to", f"sqlite:///{back}"]) == 1
    assert "the same history" in capsys.readouterr().err


def test_copy_history_says_when_the_target_does_not_hold_the_source(tmp_path):
    source, target = History(tmp_path / "a.sqlite"), History(tmp_path / "b.sqlite")
    source.add_run(Run("r1", 1.75e9, "h", "c"), [kl("a", 0.1), kl("b", 0.2)])
    target.add_run(Run("r1", 1.75e9, "h", "c"), [kl("a", 0.1)])  # the same id, other rows: never overwritten
    with pytest.raises(HistoryError, match="incomplete: .* 1 have other check rows"):
        copy_history(source, target)


# -- a server that is not there, or says no ---------------------------------------------------------------


@pytest.mark.postgres
def test_wrong_credentials_and_a_server_that_is_down_are_clear_and_keep_the_password(pg_server, pg_url):
    wrong = pg_url.replace(pg_url.split(":")[2].split("@")[0], "not-the-password-123")
    with pytest.raises(HistoryUnavailable, match="password authentication failed") as err:
        History(wrong).rows()
    assert "not-the-password-123" not in str(err.value) and "***" in str(err.value)
    down = pg_server.url("nothing", user="fg", password="secret-word-42").replace(f":{pg_server.port}/", ":1/")
    for attempt in (History(down).verify, lambda: History(down).add_run(Run.now(), [kl("a", 0.1)])):
        with pytest.raises(
            HistoryUnavailable, match="cannot connect to the run history postgresql://fg:\\*\\*\\*@"
        ) as e:
            attempt()
        assert "secret-word-42" not in str(e.value)
    assert cli(["history", "--history", down]) == 1


@pytest.mark.postgres
def test_a_database_with_another_programs_meta_table_is_refused(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    with pytest.raises(HistoryError, match="not a forgetguard run history's"):
        History(pg_url).add_run(Run.now(), [kl("a", 0.1)])


@pytest.mark.postgres
def test_the_password_comes_from_pgpassword_or_a_pgpass_file(pg_server, pg_url, tmp_path, monkeypatch):
    bare = pg_url.replace(":" + pg_url.split(":")[2].split("@")[0] + "@", "@")  # the URL without its password
    assert "@" in bare and pg_server.passwords["fg"] not in bare
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(HistoryUnavailable, match="cannot connect"):
        History(bare).rows()
    monkeypatch.setenv("PGPASSWORD", pg_server.passwords["fg"])
    assert History(bare).add_run(Run.now(), [kl("a", 0.1)])
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_server.port}:*:fg:{pg_server.passwords['fg']}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert [r.candidate for r in History(bare).rows()] == ["a"]
