"""Gates writing to one shared history (tiny models, real pytest processes, a real PostgreSQL server): many at
once lose nothing; a server that is down or refuses the credentials leaves the verdicts standing and every
report saying the run was not recorded, and why, without the password."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import forgetguard_args

from pytest_forgetguard.history import History

pytestmark = pytest.mark.slow  # real pytest runs loading tiny models

SUITE = """
checks:
  - name: weights
    drift: {max_relative_l2: 10}
  - name: weights-strict
    drift: {max_relative_l2: 1.0e-12}
"""
GATES = 4


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared(request, tmp_path):
    return str(tmp_path / "shared.sqlite") if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_concurrent_gates_on_one_history_lose_nothing(tiny, shared, tmp_path):
    procs = []
    for i in range(GATES):
        checkout = tmp_path / f"runner{i}" / "repo"
        checkout.mkdir(parents=True)
        checkout.joinpath("pytest.ini").write_text("[pytest]\n")
        checkout.joinpath("forgetguard.yaml").write_text(SUITE)
        env = {**os.environ, "FORGETGUARD_CACHE_DIR": str(tmp_path / f"runner{i}" / "cache")}
        cmd = [sys.executable, "-m", "pytest", *forgetguard_args(tiny["base"], tiny["candidate"]),
               f"--fg-history={shared}", "-p", "no:cacheprovider", "-q"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=900)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [1] * GATES, outs[0][-2000:]  # the strict check fails everywhere
    history = History(shared, project="repo")
    assert history.counts() == (GATES, 2 * GATES)
    assert all(len({r.seq for r in history.rows() if r.run_id == run.run_id}) == 2 for run in history.runs())
    assert sorted(r.passed for r in history.rows()) == [False] * GATES + [True] * GATES


@pytest.mark.postgres
@pytest.mark.parametrize("problem", ["down", "wrong password"])
def test_a_history_server_that_cannot_be_used_leaves_the_verdicts_standing(pytester, tiny, pg_server, pg_url, problem):
    secret = "not-the-password-77" if problem == "wrong password" else pg_url.split(":")[2].split("@")[0]
    url = pg_url.replace(pg_url.split(":")[2].split("@")[0], secret)
    if problem == "down":
        url = url.replace(f":{pg_server.port}/", ":1/")
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE.split("  - name: weights-strict")[0])
    result = pytester.runpytest(
        *forgetguard_args(tiny["base"], tiny["candidate"]), f"--fg-history={url}", "--fg-report-json=r.json",
        "--fg-report-md=r.md", "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()[-2000:]  # the check passed: the verdict decides the exit status
    result.assert_outcomes(passed=1)
    out = result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*the run history was not written: cannot connect to the run history postgresql://*"])
    data = json.loads((pytester.path / "r.json").read_text())
    assert data["history"]["written"] is False and "cannot connect" in data["history"]["reason"]
    assert data["history"]["path"].startswith("postgresql://fg:***@")
    markdown = (pytester.path / "r.md").read_text()
    for text in (out, json.dumps(data), markdown):
        assert secret not in text
