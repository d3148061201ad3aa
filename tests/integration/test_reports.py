"""Reports for people and machines: several candidates side by side, colour, Markdown, progress, xdist.

The models are tiny random ones loaded through the ``pytest_forgetguard_load_model`` hook by a conftest
that logs every load with its process id, so a test can see how often each process loaded each model.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
from helpers import prompts_jsonl

PROMPTS = prompts_jsonl()

SUITE = """
models:
  base: counted://base
checks:
  - name: task-kl
    kl:
      prompts: prompts.jsonl
      sample_from: dataset
      budget: 0.05
  - name: weights
    drift:
      max_relative_l2: 0.01
"""

CANDIDATES = ("counted://twin", "counted://candidate")


@pytest.fixture
def project(pytester, tiny):
    pytester.makeconftest(f"""
        import os
        from transformers import AutoModelForCausalLM, AutoTokenizer

        PATHS = {{"base": r"{tiny["base"]}", "twin": r"{tiny["twin"]}", "candidate": r"{tiny["candidate"]}"}}

        def pytest_forgetguard_load_model(spec, device, dtype):
            if not spec.startswith("counted://"):
                return None
            path = PATHS[spec.split("://", 1)[1]]
            with open(os.path.join(r"{pytester.path}", "loads.log"), "a") as fh:
                fh.write(f"{{os.getpid()}} {{spec}}\\n")
            return AutoModelForCausalLM.from_pretrained(path).to(device), AutoTokenizer.from_pretrained(path)
    """)
    pytester.path.joinpath("prompts.jsonl").write_text(PROMPTS)
    pytester.path.joinpath("forgetguard_suite.yaml").write_text(SUITE)
    pytester.makepyfile(
        test_fixture_checks="""
        def test_fixture_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=0.05, sample_from="dataset", name="fixture-kl")
    """
    )
    return pytester


def candidate_args(*specs: str) -> list[str]:
    return ["--fg-base", "counted://base", *(arg for spec in specs for arg in ("--fg-candidate", spec))]


def loads(pytester) -> Counter:
    path = pytester.path / "loads.log"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


def test_several_candidates_side_by_side(project):
    result = project.runpytest(
        "--forgetguard", *candidate_args(*CANDIDATES), "--fg-report-json=out/r.json", "--fg-report-md=out/r.md"
    )
    # twin is identical to the base; candidate has noise 0.05 x std: over both budgets.
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*candidates side by side (value, verdict):*",
            "*check*budget*twin*candidate*",  # short ids, as in the test ids
            "*task-kl*0.05*0 PASS*FAIL*",
            "*weights*0.01*0 PASS*FAIL*",
            "*fixture-kl*0.05*0 PASS*FAIL*",
            "*all checks*3/3 passed*0/3 passed*",
        ]
    )
    # Base work is done once: each model loaded once in this process.
    assert loads(project) == Counter({f"{_pid(project)} {s}": 1 for s in ("counted://base", *CANDIDATES)})

    report = json.loads((project.path / "out/r.json").read_text())
    assert [c["spec"] for c in report["candidates"]] == list(CANDIDATES)
    assert all(c["fingerprint"] for c in report["candidates"]) and report["base"]["spec"] == "counted://base"
    assert [(c["name"], c["candidate"], c["passed"]) for c in report["checks"]] == [
        ("task-kl", "counted://twin", True),
        ("task-kl", "counted://candidate", False),
        ("weights", "counted://twin", True),
        ("weights", "counted://candidate", False),
        ("fixture-kl", "counted://twin", True),
        ("fixture-kl", "counted://candidate", False),
    ]

    md = (project.path / "out/r.md").read_text().splitlines()
    assert md[0] == "## ❌ forgetguard: 3 of 6 checks failed"  # the verdict first
    assert "Candidates passing every check: `twin`." in md  # short ids; the full SPECs once, in the models table
    assert any(line.startswith("| candidate `twin` | `counted://twin` | `") for line in md)
    side = md.index("| check | budget | twin | candidate |")
    assert md[side + 2].startswith("| task-kl | 0.05 | 0 PASS | ")
    assert md[-1] != "" and any(line.startswith("<details><summary>FAIL: weights (candidate)") for line in md)


def _pid(pytester) -> str:
    return next(iter(loads(pytester))).split()[0]


def test_table_rows_are_coloured_by_verdict(project):
    result = project.runpytest("--forgetguard", *candidate_args(*CANDIDATES), "--color=yes", "-k", "task-kl")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    green, red = "\x1b[32m", "\x1b[31m"
    # Candidates by their short ids, as in the test ids.
    assert re.search(re.escape(green) + r"task-kl +twin .*PASS", out)
    assert re.search(re.escape(red) + r"task-kl +candidate .*FAIL", out)
    plain = project.runpytest("--forgetguard", *candidate_args(*CANDIDATES), "--color=no", "-k", "task-kl")
    assert "\x1b[" not in plain.stdout.str()


@pytest.mark.slow  # pytest in subprocesses
def test_progress_of_model_work_is_shown(project):
    project.makepyfile(
        test_sampled="""
        def test_sampled(forgetguard):
            forgetguard.kl("prompts.jsonl", sample_from="base", max_new_tokens=4)
    """
    )
    # No cache: a cached sample would (rightly) skip the sampling step.
    args = ("--forgetguard", "--fg-no-cache", *candidate_args("counted://candidate"))
    # A subprocess: pytest's capture of test output is on, as in a user's run. -v: every step, a line.
    result = project.runpytest_subprocess(*args, "-k", "task-kl or sampled", "-v")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "forgetguard: loading base base (* s)",
            "forgetguard: loading candidate candidate (* s)",
            "forgetguard: scoring KL 4/4 prompts (* s)",
            "forgetguard: sampling from base base 4/4 prompts (* s)",
        ]
    )
    # By default, in a log, a step shorter than 30 s prints nothing: the dots stay on their line.
    default = project.runpytest_subprocess(*args, "-k", "task-kl or sampled")
    default.stdout.re_match_lines([r"^test_sampled\.py \. +\["])  # the dot on the file's line, not below it
    default.stdout.re_match_lines([r"^forgetguard_suite\.yaml F +\["])
    assert "forgetguard: " not in default.stdout.str().split("= FAILURES =")[0]
    quiet = project.runpytest_subprocess("--forgetguard", *candidate_args("counted://candidate"), "-k", "task-kl", "-q")
    assert "forgetguard: loading" not in quiet.stdout.str()


@pytest.mark.slow  # pytest in subprocesses
@pytest.mark.skipif(sys.platform == "win32", reason="xdist subprocess workers")
def test_xdist_report_equals_serial(project):
    common = ["--forgetguard", *candidate_args(*CANDIDATES), "-p", "no:cacheprovider"]
    serial = project.runpytest_subprocess(
        *common, "--fg-report-json=serial/r.json", "--fg-report-md=serial/r.md", "--junitxml=serial.xml"
    )
    serial.assert_outcomes(passed=3, failed=3)
    serial_loads = loads(project)
    (project.path / "loads.log").unlink()

    dist = project.runpytest_subprocess(
        *common, "-n", "2", "--fg-report-json=dist/r.json", "--fg-report-md=dist/r.md", "--junitxml=dist.xml"
    )
    dist.assert_outcomes(passed=3, failed=3)
    assert json.loads((project.path / "dist/r.json").read_text()) == json.loads(
        (project.path / "serial/r.json").read_text()
    )
    assert (project.path / "dist/r.md").read_text() == (project.path / "serial/r.md").read_text()
    assert sorted(p.name for p in (project.path / "dist").iterdir()) == sorted(
        p.name for p in (project.path / "serial").iterdir()
    )
    # The controller prints the complete summary.
    dist.stdout.fnmatch_lines(["*= forgetguard =*", "*all checks*3/3 passed*0/3 passed*"])

    def props(path):
        return sorted((p.get("name"), p.get("value")) for p in ET.parse(project.path / path).iter("property"))

    assert props("dist.xml") == props("serial.xml") and props("dist.xml")
    # Each worker loads a model at most once, whatever number of tests it ran.
    per_worker = loads(project)
    assert max(per_worker.values()) == 1, per_worker
    assert len({line.split()[0] for line in per_worker}) == 2  # both workers did work
    assert max(serial_loads.values()) == 1
