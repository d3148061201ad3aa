"""Forecasts in real runs: a history built by measuring twenty tiny candidates, then every branch of the
decision to skip a retention check (through pytester), audits, thin evidence, and the same decisions
serially and under xdist."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from builders import build_tiny_model
from helpers import forgetguard_args, prompts_jsonl
from lmeval_tasks import write_tasks

from pytest_forgetguard.history import History, HistoryError

pytestmark = pytest.mark.slow  # each test runs lm-eval through pytest

SUITE = """
checks:
  - name: task-kl
    kl: {{prompts: prompts.jsonl, sample_from: dataset, budget: {kl_budget}}}
  - name: keeps-bpb
    retention:
      task: tiny_bpb
      include_path: tasks
      metric: bits_per_byte
      max_drop: {max_drop}
      gate: observed          # six items of random tiny models: these tests are about forecasts, not verdicts
      forecast_from: task-kl
      skip_if_forecast_within: true
      audit_rate: {audit_rate}
"""
NOISE = [0.002, 0.003, 0.005, 0.007, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08,
         0.09, 0.1, 0.11, 0.12]  # fmt: skip


def write_project(path, kl_budget=100, max_drop=10, audit_rate=0):
    path.joinpath("pytest.ini").write_text("[pytest]\n")
    tasks = write_tasks(path / "tasks")
    ppl = (tasks / "ppl.yaml").read_text()
    (tasks / "bpb.yaml").write_text(
        ppl.replace("tiny_ppl", "tiny_bpb").replace("word_perplexity", "bits_per_byte").replace(
            "aggregation: weighted_perplexity", "aggregation: bits_per_byte")
    )  # fmt: skip
    path.joinpath("prompts.jsonl").write_text(prompts_jsonl())
    path.joinpath("forgetguard.yaml").write_text(
        SUITE.format(kl_budget=kl_budget, max_drop=max_drop, audit_rate=audit_rate)
    )


@pytest.fixture(scope="module")
def calibrated(tiny, tmp_path_factory):
    """Twenty noisy copies of the tiny base measured once (KL and bits per byte): a history of twenty points,
    one more than a bound at alpha 0.05 needs."""
    root = tmp_path_factory.mktemp("forecast")
    models = {f"c{i}": build_tiny_model(tiny["tokenizer"], root / f"c{i}", seed=100 + i, noise=n, base=tiny["base"])
              for i, n in enumerate(NOISE)}  # fmt: skip
    models["new"] = build_tiny_model(tiny["tokenizer"], root / "new", seed=200, noise=0.025, base=tiny["base"])
    models["tiny"] = build_tiny_model(tiny["tokenizer"], root / "tiny", seed=201, noise=0.0003, base=tiny["base"])
    project = root / "project"
    project.mkdir()
    write_project(project)
    history = root / "history.sqlite"
    cmd = [sys.executable, "-m", "pytest", *forgetguard_args(tiny["base"], *(models[f"c{i}"] for i in range(20))),
           f"--fg-history={history}", f"--fg-cache-dir={root / 'cache'}", "-p", "no:cacheprovider", "-q"]  # fmt: skip
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    # Random tiny models' bits per byte hardly follow their KL (R² about 0: no forecast may decide on
    # that, as test_thin_evidence shows). The decision logic is tested on a history whose drops do: the
    # measured run, imported with each drop set to 0.5 x its candidate's KL (+ a little noise).
    export = io.StringIO()
    History(history).export_jsonl(export)
    [line] = [json.loads(x) for x in export.getvalue().splitlines()]
    kl_of = {c["record"]["candidate"]: c["record"]["value"] for c in line["checks"] if c["record"]["kind"] == "kl"}
    for i, c in enumerate(c for c in line["checks"] if c["record"]["kind"] == "retention"):
        c["record"]["details"]["drop"] = 0.5 * kl_of[c["record"]["candidate"]] * (1 + 0.05 * ((i * 7) % 5 - 2))
    line["run"]["project"] = None  # measured in the folder "project": shared with every project, as older runs are
    related = root / "related.sqlite"
    assert History(related).import_jsonl([json.dumps(line)]) == (1, 0)
    return {"models": models, "history": related, "measured": history, "cache": root / "cache", "base": tiny["base"]}


def run(pytester, calibrated, candidate, *args, kl_budget=100, max_drop=10, history=None, audit_rate=0):
    write_project(pytester.path, kl_budget=kl_budget, max_drop=max_drop, audit_rate=audit_rate)
    copy = pytester.path / "history.sqlite"
    shutil.copy(history or calibrated["history"], copy)
    result = pytester.runpytest(
        *forgetguard_args(calibrated["base"], calibrated["models"][candidate], cache=calibrated["cache"]),
        f"--fg-history={copy}", "--fg-report-json=r.json", "--junitxml=junit.xml", "-p", "no:cacheprovider",
        "--fg-project=project", *args,  # the project the calibrated history was measured in (its folder's name)
    )  # fmt: skip
    rows = {r["name"]: r for r in json.loads((pytester.path / "r.json").read_text())["checks"]}
    return result, rows.get("keeps-bpb"), copy


def test_within_the_allowance_the_forecast_decides_and_says_so_everywhere(pytester, calibrated):
    result, row, history = run(pytester, calibrated, "new", "-v", "--fg-report-md=r.md")
    result.assert_outcomes(passed=2)
    d = row["details"]
    assert d["decided_by"] == "forecast" and row["passed"] is True and row["value"] is None
    f = d["forecast"]
    assert set(f) == {"drop", "low", "high", "n", "r2", "from", "kl", "coverage", "extrapolation", "upper", "alpha"}
    assert f["n"] == 20 and f["from"] == "task-kl" and f["coverage"] == 0.9 and f["extrapolation"] is False
    assert f["low"] <= f["drop"] <= f["upper"] <= row["budget"] == 10 and f["alpha"] == 0.05
    out = result.stdout.str()
    assert "lm-eval tiny_bpb on candidate" not in out  # the candidate's lm-eval never ran
    result.stdout.fnmatch_lines(
        ["*keeps-bpb*PASS (forecast)*", "*keeps-bpb ?new?: forecast drop * decided by forecast (lm-eval not run)*"]
    )
    assert "PASS (forecast)" in (pytester.path / "r.md").read_text()
    assert 'name="forgetguard.keeps-bpb.decided_by" value="forecast"' in (pytester.path / "junit.xml").read_text()
    # The run is in the history; the forecast-decided check adds no calibration point.
    rows = History(history).rows(name="keeps-bpb")
    assert rows[-1].decided_by == "forecast" and rows[-1].drop is None


def test_an_interval_that_straddles_the_allowance_runs_lm_eval(pytester, calibrated):
    _, first, _ = run(pytester, calibrated, "new")
    middle = first["details"]["forecast"]["drop"]  # inside the interval: the interval straddles it
    result, row, _ = run(pytester, calibrated, "new", max_drop=max(middle, 0.0))
    d = row["details"]
    assert d["decided_by"] == "measurement" and isinstance(d["drop"], float)
    assert "over the allowance" in d["forecast_note"] and d["forecast"]["upper"] > row["budget"]
    result.stdout.fnmatch_lines(
        ["*keeps-bpb ?new?: forecast drop *; measured * — the forecast's upper bound at alpha*"]
    )


def test_an_extrapolation_is_shown_and_never_decides(pytester, calibrated):
    _, row, _ = run(pytester, calibrated, "tiny")  # a KL below every KL in the history
    d = row["details"]
    assert d["decided_by"] == "measurement" and d["forecast"]["extrapolation"] is True
    assert "outside the range seen" in d["forecast_note"]


def test_a_failed_kl_check_never_lets_a_forecast_decide(pytester, calibrated):
    result, row, _ = run(pytester, calibrated, "new", kl_budget=1e-9)
    result.assert_outcomes(failed=1, passed=1)
    assert row["details"]["decided_by"] == "measurement" and "failed" in row["details"]["forecast_note"]


def test_too_little_history_says_how_many_more_runs(pytester, calibrated, tmp_path):
    # The same measured run, with three of its twenty candidates only.
    export = io.StringIO()
    History(calibrated["history"]).export_jsonl(export)
    [line] = [json.loads(x) for x in export.getvalue().splitlines()]
    line["checks"] = [c for c in line["checks"] if c["record"]["candidate"].endswith(("/c1", "/c4", "/c8"))]
    short = tmp_path / "short.sqlite"
    assert History(short).import_jsonl([json.dumps(line)]) == (1, 0)
    _, row, _ = run(pytester, calibrated, "new", history=short)
    assert row["details"]["decided_by"] == "measurement" and row["details"]["forecast"] is None
    assert "16 more measured run(s) needed for a 90% forecast (have 3)" in row["details"]["forecast_note"]


@pytest.mark.parametrize("fault", ["measured, R² about 0", "imported drops all 0"])
def test_thin_evidence_shows_a_forecast_and_never_decides(pytester, calibrated, tmp_path, fault):
    """The random tiny models' own history (drops unrelated to KL), and twenty imported rows whose drops
    are all 0: the forecast is shown, the check measured, and the note says why."""
    source = calibrated["measured"]
    if fault == "imported drops all 0":
        export = io.StringIO()
        History(calibrated["history"]).export_jsonl(export)
        [line] = [json.loads(x) for x in export.getvalue().splitlines()]
        for c in line["checks"]:
            if c["record"]["kind"] == "retention":
                c["record"]["details"]["drop"] = 0.0
        source = tmp_path / "flat.sqlite"
        assert History(source).import_jsonl([json.dumps(line)]) == (1, 0)
    _, row, _ = run(pytester, calibrated, "new", history=source)
    d = row["details"]
    assert d["decided_by"] == "measurement" and d["forecast"] is not None
    assert "the history may not decide" in d["forecast_note"] and "includes 0" in d["forecast_note"]


def test_an_audit_measures_a_check_the_forecast_could_decide(pytester, calibrated, capsys):
    result, row, history = run(pytester, calibrated, "new", audit_rate=1.0)
    result.assert_outcomes(passed=2)
    d = row["details"]
    assert d["decided_by"] == "measurement" and d["audit"] is True and d["forecast"]["upper"] <= row["budget"]
    assert "audit" in d["forecast_note"] and isinstance(d["drop"], float)
    from pytest_forgetguard.cli import main

    capsys.readouterr()
    assert main(["calibrate", "--history", str(history), "--json"]) == 0
    [pair] = json.loads(capsys.readouterr().out)
    assert pair["audits"] == 1 and pair["audits_held"] in (0, 1)


def test_no_forecast_skip_runs_everything(pytester, calibrated):
    _, row, _ = run(pytester, calibrated, "new", "--fg-no-forecast-skip")
    assert row["details"]["decided_by"] == "measurement" and row["details"]["forecast"] is not None
    assert "--fg-no-forecast-skip" in row["details"]["forecast_note"]


def test_without_its_kl_item_a_retention_check_measures_the_kl_and_decides_alike(pytester, calibrated):
    _, serial, _ = run(pytester, calibrated, "new")
    _, alone, _ = run(pytester, calibrated, "new", "-k", "keeps-bpb")
    assert alone["details"]["decided_by"] == serial["details"]["decided_by"] == "forecast"
    assert alone["details"]["forecast"] == serial["details"]["forecast"]


def test_under_xdist_the_same_decision_and_the_whole_run_recorded(pytester, calibrated):
    _, serial, _ = run(pytester, calibrated, "new")
    result, row, history = run(pytester, calibrated, "new", "-n", "2")
    result.assert_outcomes(passed=2)
    assert row["details"]["decided_by"] == serial["details"]["decided_by"] == "forecast"
    assert row["details"]["forecast"] == serial["details"]["forecast"]
    before = {r.run_id for r in History(calibrated["history"]).runs()}
    new_runs = [r for r in History(history).runs() if r.run_id not in before]
    assert len(new_runs) == 1
    assert sorted(r.name for r in History(history).rows() if r.run_id == new_runs[0].run_id) == ["keeps-bpb", "task-kl"]


def _damage_a_page(path):
    """Overwrite one page so that the history opens (header, schema, first rows) but reading its rows fails."""
    data = path.read_bytes()
    h = History(path)
    for page in range(len(data) // 4096 - 1, 1, -1):
        damaged = data[: page * 4096] + b"\xff" * 4096 + data[(page + 1) * 4096 :]
        path.write_bytes(damaged)
        try:
            h.verify()
        except HistoryError:
            continue
        try:
            h.rows()
        except HistoryError:
            return
    raise AssertionError("no page damages the rows alone")


@pytest.mark.parametrize("damage", ["truncated", "one damaged page"])
def test_a_damaged_history_never_stops_a_forecast_check_it_is_measured(pytester, calibrated, tmp_path, damage):
    copy = tmp_path / "damaged.sqlite"
    shutil.copy(calibrated["history"], copy)
    if damage == "truncated":  # found when the run starts
        copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    else:  # found by the forecast's read, in the middle of the run
        _damage_a_page(copy)
    before = copy.read_bytes()
    result, row, history = run(pytester, calibrated, "new", history=copy)
    result.assert_outcomes(passed=2)
    assert row["error"] is None and row["details"]["decided_by"] == "measurement"
    [aside] = [p for p in history.parent.iterdir() if p.name.startswith("history.sqlite.unreadable-")]
    assert aside.read_bytes() == before
    assert len(History(history).runs()) == 1  # a fresh history holds this run
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["history"]["moved_aside"] == str(aside) and report["notices"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared(request, tmp_path):
    """One history two machines write to: a SQLite file both can reach, or a PostgreSQL database."""
    return str(tmp_path / "shared.sqlite") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_two_machines_share_one_history_and_the_second_forecasts_from_the_first(calibrated, shared, tmp_path):
    """Two CI-like runs (separate processes, checkouts and caches) on one history: machine A shares the
    evidence it measured and runs its gate; machine B, starting from an empty cache, sees A's runs and its
    check is decided by forecast from A's evidence."""
    export = tmp_path / "a-evidence.jsonl"
    with open(export, "w", encoding="utf-8") as fh:
        History(calibrated["history"]).export_jsonl(fh)
    machines = {}
    for name in ("a", "b"):
        checkout = tmp_path / name / "finetunes"  # the same repository checked out on two machines
        checkout.mkdir(parents=True)
        write_project(checkout)
        machines[name] = checkout

    def on(machine, *cmd):
        env = {**os.environ, "FORGETGUARD_CACHE_DIR": str(tmp_path / machine / "cache")}
        env.pop("FORGETGUARD_HISTORY", None)
        return subprocess.run(cmd, cwd=machines[machine], env=env, capture_output=True, text=True, timeout=900)

    forgetguard = [sys.executable, "-m", "pytest_forgetguard.cli"]
    done = on("a", *forgetguard, "import", "--history", shared, "--project", "finetunes", str(export))
    assert done.returncode == 0, done.stderr
    gate = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--fg-history={shared}",
        "--fg-report-json=r.json",
    ]
    done = on("a", *gate, *forgetguard_args(calibrated["base"], calibrated["models"]["c3"]))
    assert done.returncode == 0, done.stdout[-3000:]
    done = on("b", *gate, *forgetguard_args(calibrated["base"], calibrated["models"]["new"]), "-v")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "PASS (forecast)" in done.stdout and "fgpw" not in done.stdout + done.stderr
    rows = {r["name"]: r for r in json.loads((machines["b"] / "r.json").read_text())["checks"]}
    assert rows["keeps-bpb"]["details"]["decided_by"] == "forecast"
    assert rows["keeps-bpb"]["details"]["forecast"]["n"] >= 20  # A's twenty measured candidates
    assert not (tmp_path / "b" / "cache" / "history.sqlite").exists()  # B kept nothing of its own
    seen = json.loads(on("a", *forgetguard, "history", "--history", shared, "--project", "finetunes", "--json").stdout)
    by_run = {}
    for r in seen:
        by_run.setdefault(r["run_id"], set()).add(r["candidate"])
    assert len(by_run) == 3  # the shared evidence, A's gate run and B's, each seen from A
    assert [str(calibrated["models"]["new"])] in [sorted(c) for c in by_run.values()]
    assert {r["project"] for r in seen} == {"finetunes"}


@pytest.mark.postgres
def test_a_history_server_that_is_down_means_measuring_and_the_verdicts_stand(pytester, calibrated, pg_server):
    write_project(pytester.path)
    down = pg_server.url("nothing", user="fg").replace(f":{pg_server.port}/", ":1/")
    result = pytester.runpytest(
        *forgetguard_args(calibrated["base"], calibrated["models"]["new"], cache=calibrated["cache"]),
        f"--fg-history={down}", "--fg-report-json=r.json", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()[-2000:]
    data = json.loads((pytester.path / "r.json").read_text())
    row = {r["name"]: r for r in data["checks"]}["keeps-bpb"]
    assert row["details"]["decided_by"] == "measurement" and row["passed"] is True
    assert data["history"]["written"] is False and "cannot connect" in data["history"]["reason"]
    assert any("cannot connect to the run history postgresql://fg:***@" in n for n in data["notices"])
