"""The fault matrix, through real pytest runs: hostile inputs and faults give a clear error or warning, never a pass.

Tiny models built in fixtures (tests/conftest.py: ``tiny`` and ``faulty``);
lm-eval on the tiny tasks of tests/lmeval_tasks.py. Each test is one row of
the matrix on the Reliability page (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from helpers import DOC_PAIRS, forgetguard_args, prompts_jsonl
from lmeval_tasks import write_tasks

PROMPTS = prompts_jsonl(DOC_PAIRS[:2])

SUITE = """
checks:
  - name: task-kl
    kl: {prompts: prompts.jsonl, sample_from: dataset, budget: 1.0e9}
  - name: keeps-mc
    retention: {task: tiny_mc, include_path: tasks, max_drop: 1.0, gate: significant}
  - name: weights
    drift: {max_relative_l2: 1.0e30}
"""


@pytest.fixture
def project(pytester):
    pytester.makefile(".ini", pytest="[pytest]\n")  # the rootdir: node ids relative to the project
    write_tasks(pytester.path / "tasks")
    pytester.path.joinpath("prompts.jsonl").write_text(PROMPTS)
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE)
    return pytester


def run(pytester, base, cand, *args):
    return pytester.runpytest(
        *forgetguard_args(base, cand, cache=pytester.path / "cache"), "-p", "no:cacheprovider", *args
    )


def checks(path):
    return {c["name"]: c for c in json.loads(path.read_text())["checks"]}


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
@pytest.mark.parametrize("cand", ["nan", "overflow", "nan_lora", "overflow_lora"])
def test_a_broken_candidate_fails_every_check_of_a_suite(project, tiny, faulty, cand):
    """The issue's case: KL errors, then retention (gate: significant) and drift must error too, not pass."""
    result = run(project, tiny["base"], {**tiny, **faulty}[cand], "--fg-report-json", "r.json")
    result.assert_outcomes(failed=3)
    rows = checks(project.path / "r.json")
    assert [r["passed"] for r in rows.values()] == [False, False, False]
    assert all("NonFiniteError" in r["error"] for r in rows.values())
    assert (
        "failed in check 'task-kl'" in rows["keeps-mc"]["error"]
        and "failed in check 'task-kl'" in rows["weights"]["error"]
    )
    result.stdout.fnmatch_lines(["*keeps-mc*ERROR*", "*weights*ERROR*"])


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_a_broken_base_fails_every_check(project, tiny):
    result = run(project, tiny["nan"], tiny["candidate"], "--fg-report-json", "r.json")
    result.assert_outcomes(failed=3)
    assert all(r["error"] and "NaN" in r["error"] for r in checks(project.path / "r.json").values())


def test_rows_name_their_file_and_node(project, tiny):
    """Two suites with checks of the same name can be told apart in the report."""
    sub = project.path / "more"
    sub.mkdir()
    (sub / "prompts.jsonl").write_text(PROMPTS)
    (sub / "forgetguard.yaml").write_text(
        "checks:\n  - name: task-kl\n    kl: {prompts: prompts.jsonl, sample_from: dataset, budget: 1.0e9}\n"
    )
    result = run(project, tiny["base"], tiny["candidate"], "--fg-report-json", "r.json", "-k", "task-kl")
    result.assert_outcomes(passed=2)
    rows = json.loads((project.path / "r.json").read_text())["checks"]
    assert [(r["name"], r["file"], r["nodeid"]) for r in rows] == [
        ("task-kl", "forgetguard.yaml", "forgetguard.yaml::task-kl"),
        ("task-kl", "more/forgetguard.yaml", "more/forgetguard.yaml::task-kl"),
    ]


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_reports_are_readable_by_the_group_and_removed_when_a_run_starts(project, tiny):
    old = os.umask(0o022)
    try:
        result = run(project, tiny["base"], tiny["candidate"], "--fg-report-json", "r.json", "--fg-report-md", "r.md")
    finally:
        os.umask(old)
    result.assert_outcomes(passed=3)
    for name in ("r.json", "r.md"):
        assert stat.S_IMODE((project.path / name).stat().st_mode) == 0o644
    cache_files = list((project.path / "cache").rglob("*.json"))
    assert cache_files and all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in cache_files)


KILLER = """
import os, signal

def pytest_runtest_call(item):
    if item.name == "keeps-mc":
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the run
"""


def subprocess_run(project, base, cand, *args, timeout=600):
    cmd = [sys.executable, "-m", "pytest", "--forgetguard", "--fg-base", str(base), "--fg-candidate", str(cand),
           "--fg-cache-dir", str(project.path / "cache"), "-p", "no:cacheprovider", "-q", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=project.path, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_a_run_killed_with_sigkill_leaves_no_stale_report_and_no_broken_cache(project, tiny):
    # A finished run of another candidate leaves a PASS report behind ...
    from pytest_forgetguard.history import History

    history = History(project.path / "history.sqlite")
    first = subprocess_run(
        project, tiny["base"], tiny["twin"], "--fg-report-json", "r.json", f"--fg-history={history.path}"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert all(r["passed"] for r in checks(project.path / "r.json").values())
    # ... which a killed run of the next candidate must not leave in place.
    project.path.joinpath("conftest.py").write_text(KILLER)
    killed = subprocess_run(
        project, tiny["base"], tiny["candidate"], "--fg-report-json", "r.json", f"--fg-history={history.path}"
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (project.path / "r.json").exists()
    assert len(history.runs()) == 1  # the killed run added nothing to the history: a run is one transaction
    # The cache the killed run was writing serves the next run as if nothing happened.
    project.path.joinpath("conftest.py").unlink()
    again = subprocess_run(
        project, tiny["base"], tiny["candidate"], "--fg-report-json", "r.json", "-W", "error",
        f"--fg-history={history.path}",
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(history.runs()) == 2 and len(history.rows()) == 6
    fresh = subprocess_run(
        project, tiny["base"], tiny["candidate"], "--fg-report-json", "fresh.json", "--fg-cache-dir", "cache2"
    )
    assert fresh.returncode == 0
    for name, row in checks(project.path / "r.json").items():
        assert row["value"] == checks(project.path / "fresh.json")[name]["value"]


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_concurrent_runs_share_one_cache(project, tiny):
    cmd = [sys.executable, "-m", "pytest", "--forgetguard", f"--fg-base={tiny['base']}",
           f"--fg-candidate={tiny['candidate']}", "--fg-cache-dir=cache", "--fg-history=cache/history.sqlite",
           "-p", "no:cacheprovider", "-q"]  # fmt: skip
    procs = [
        subprocess.Popen([*cmd, "--fg-report-json", f"r{i}.json"], cwd=project.path, stdout=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    from pytest_forgetguard.history import History

    shared = History(project.path / "cache" / "history.sqlite")
    assert len(shared.runs()) == 3 and len(shared.rows()) == 9  # three runs, one history, nothing lost
    reports = [checks(project.path / f"r{i}.json") for i in range(3)]
    for report in reports:  # whether a run found the base in the cache depends on who finished first
        for check in report.values():
            check["details"].pop("base_cached", None)
    assert reports[0] == reports[1] == reports[2]
    for entry in (project.path / "cache").rglob("*.json"):
        json.loads(entry.read_text())  # every entry whole
    # A fourth run is served by the cache, without a warning.
    again = subprocess.run([*cmd, "-W", "error::UserWarning"], cwd=project.path, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout


# Two checks of each kind that need the same base results: sampled responses, base passes, lm-eval runs.
SHARED_BASE_TESTS = """
import pytest

@pytest.mark.parametrize("name", ["kl-a", "kl-b"])
def test_kl(forgetguard, name):
    forgetguard.assert_kl_budget("prompts.jsonl", budget=1e9, name=name, max_new_tokens=4)

@pytest.mark.parametrize("name", ["mc-a", "mc-b"])
def test_retained(forgetguard, name):
    forgetguard.assert_retained("tiny_mc", include_path="tasks", max_drop=1.0, name=name)
"""


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_xdist_workers_write_the_cache_and_history_one_process_writes(pytester, tiny):
    from pytest_forgetguard.history import History

    pytester.makefile(".ini", pytest="[pytest]\n")
    write_tasks(pytester.path / "tasks")
    pytester.path.joinpath("prompts.jsonl").write_text(PROMPTS)
    pytester.makepyfile(test_shared=SHARED_BASE_TESTS)

    def run_into(name, *args):
        result = pytester.runpytest(
            *forgetguard_args(tiny["base"], tiny["candidate"], cache=pytester.path / name),
            f"--fg-history={name}.sqlite", "-p", "no:cacheprovider", *args,
        )  # fmt: skip
        result.assert_outcomes(passed=4)
        root = pytester.path / name
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

    serial = run_into("serial")
    workers = run_into("xdist", "-n", "2")
    # Workers that both computed an entry wrote the one file a single process writes: no copy, no leftover.
    assert workers == serial and {p.parts[1] for p in serial} == {"samples", "base-states", "retention-base"}
    # The history: one run with every check, written by the controller (the workers write none).
    history = History(pytester.path / "xdist.sqlite")
    assert len(history.runs()) == 1 and sorted(r.name for r in history.rows()) == ["kl-a", "kl-b", "mc-a", "mc-b"]


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_warnings_reach_every_surface(project, tiny):
    """A candidate identical to its base: terminal (pytest's warnings and forgetguard's summary), JSON, Markdown."""
    result = run(project, tiny["base"], tiny["twin"], "--fg-report-json", "r.json", "--fg-report-md", "r.md")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*ForgetguardWarning: candidate * is identical to the base*"])
    result.stdout.fnmatch_lines(
        [
            "warnings:",
            "  candidate * is identical to the base * (checks: task-kl ?twin?, keeps-mc ?twin?, weights ?twin?)",
        ]
    )
    assert all("identical to the base" in r["details"]["warnings"][0] for r in checks(project.path / "r.json").values())
    md = (project.path / "r.md").read_text()
    assert "**Warnings**" in md and "- ⚠️ candidate" in md and "is identical to the base" in md


def test_a_missing_device_is_one_usage_error_before_anything_loads(project, tiny):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run(project, tiny["base"], tiny["candidate"], "--fg-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: forgetguard: --fg-device: cuda was asked for, but this is a CPU-only build*"])
    assert len(result.stderr.lines) <= 2 and "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    "content, message",
    [
        ("checks: !!python/object/apply:os.system ['touch PWNED']\n", "*could not determine a constructor*"),
        ("checks:\n  - &a {name: x, drift: {max_relative_l2: 1}}\n  - *a\n", "*check 'x': duplicate name*"),
        (
            'a: &a ["lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
            "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
            "*unknown top-level key 'a'*",
        ),
        ("[" * 5000 + "]" * 5000 + "\n", "*nested too deeply*"),
    ],
    ids=["python-tag", "alias-duplicate", "billion-laughs", "deep-nesting"],
)
def test_hostile_yaml_is_a_collection_error_and_runs_nothing(pytester, tiny, content, message):
    pytester.path.joinpath("forgetguard.yaml").write_text(content)
    result = pytester.runpytest(
        "--forgetguard", "--fg-base", str(tiny["base"]), "--fg-candidate", str(tiny["candidate"])
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    result.stdout.fnmatch_lines([message])
    assert not (pytester.path / "PWNED").exists()


def test_wrong_encodings_name_the_file_and_line(project, tiny):
    project.path.joinpath("prompts.jsonl").write_bytes(
        json.dumps({"prompt": "ok", "response": " yes"}).encode() + b'\n{"prompt": "caf\xe9", "response": " x"}\n'
    )
    project.path.joinpath("forgetguard.yaml").write_text(SUITE.split("  - name: keeps-mc")[0])
    (project.path / "other.forgetguard.yaml").write_bytes("checks: []\n".encode("utf-16"))
    result = run(project, tiny["base"], tiny["candidate"])
    result.stdout.fnmatch_lines(
        ["*other.forgetguard.yaml: cannot read: the file is UTF-16, not UTF-8; save it as UTF-8*"]
    )
    # The suite's prompt file is read at collection: the error comes before any model loads.
    result = run(project, tiny["base"], tiny["candidate"], "forgetguard.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*forgetguard.yaml:4: check 'task-kl': kl.prompts: *prompts.jsonl:2: not UTF-8 (byte 0xe9 at column 16); "
         "save the file as UTF-8*"]
    )  # fmt: skip


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_a_task_yaml_that_does_not_parse_is_named_with_its_error(project, tiny):
    (project.path / "tasks" / "broken.yaml").write_text("task: tiny_broken\ndataset_path: json\n  bad: [indent\n")
    project.path.joinpath("forgetguard.yaml").write_text(
        "checks:\n  - name: keeps\n    retention: {task: tiny_broken, include_path: tasks, max_drop: 1.0}\n"
    )
    result = run(project, tiny["base"], tiny["candidate"])
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*task YAML */tasks/broken.yaml (which names task 'tiny_broken') could not be read: *"]
    )


def test_a_path_typo_is_not_reported_as_a_hub_lookup(project, tiny):
    (project.path / "models").mkdir()
    result = run(project, tiny["base"], "models/candidat")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # before anything is collected
    result.stderr.fnmatch_lines(
        ["*--fg-candidate: model SPEC 'models/candidat': no such file or directory*models/ is a local directory*"]
    )


@pytest.mark.slow  # runs lm-eval, or pytest in subprocesses
def test_the_function_tag_of_a_task_yaml_is_the_task_authors_code(project, tiny):
    """lm-eval's ``!function`` runs Python next to the task YAML, like a conftest.py: documented, not a model's code.

    Model repositories are what --fg-trust-remote-code guards (tests/unit/test_faults.py)."""
    tasks = project.path / "tasks"
    (tasks / "utils.py").write_text(
        textwrap.dedent("""
        import pathlib
        pathlib.Path(__file__).with_name("RAN").write_text("task code ran")
        def process(dataset):
            return dataset
        """)
    )
    yaml = (tasks / "mc.yaml").read_text().replace(
        "task: tiny_mc", "task: tiny_fn"
    ) + "process_docs: !function utils.process\n"
    (tasks / "fn.yaml").write_text(yaml)
    project.path.joinpath("forgetguard.yaml").write_text(
        "checks:\n  - name: keeps\n    retention: {task: tiny_fn, include_path: tasks, max_drop: 1.0}\n"
    )
    run(project, tiny["base"], tiny["candidate"]).assert_outcomes(passed=1)
    assert (tasks / "RAN").exists()


# -- messages name the file, the value and the fix ------------------------------------------------------


def test_an_unwritable_report_folder_is_one_usage_error_before_anything_loads(project, tiny):
    """Once an internal error at the end (or the start) of the run; as root, only a file in the way stops a
    write, so the parent here is a file."""
    project.path.joinpath("reports").write_text("a file where the report folder should be\n")
    result = run(project, tiny["base"], tiny["candidate"], "--fg-report-json", "reports/run/r.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: forgetguard: --fg-report-json: cannot write the report reports/run/r.json: */reports is a file, "
         "not a folder (Not a directory); give a path in a folder you can write"]
    )  # fmt: skip
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


TEST_MODULE = """
def test_weights_moved(forgetguard):
    forgetguard.assert_drift(max_relative_l2=1e30)
"""


def test_unreadable_weights_are_one_error_line_in_the_output(project, tiny, tmp_path):
    """A download cut short: the error names the file and the fix, in a suite (one line) and in a test module
    (the test's own frame), without the hundreds of lines of safetensors' and transformers' traceback."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny["base"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    project.path.joinpath("forgetguard.yaml").write_text(
        "checks:\n  - name: weights\n    drift: {max_relative_l2: 1.0e30}\n"
    )
    project.path.joinpath("test_module.py").write_text(TEST_MODULE)
    message = f"could not load model '{broken}': weights file {weights} cannot be read: it is truncated: *"
    for target, line in (("forgetguard.yaml", f"ModelLoadError: {message}"), ("test_module.py", f"E * {message}")):
        result = run(project, tiny["base"], broken, target)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*= FAILURES =*", line])
        out = result.stdout.str()
        assert "The above exception was the direct cause" not in out and "safetensors_rust" not in out
        assert "transformers/" not in out and "models/loaders.py" not in out  # no frame of the loading machinery


def test_the_rootdir_trap_is_caught_through_a_symbolic_link(pytester):
    """pytest places its rootdir by a path as written: ``shared/model`` given as two arguments, ``shared`` a link
    to another project, makes that project's pytest.ini the run's configuration (and its conftest.py run)."""
    other = pytester.path / "other"
    (other / "model").mkdir(parents=True)
    (other / "model" / "config.json").write_text("{}")
    (other / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    (other / "conftest.py").write_text("")
    project = pytester.path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_x.py").write_text("def test_x():\n    pass\n")
    (project / "shared").symlink_to(other, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        trapped = pytester.runpytest("--forgetguard", "--fg-base", "shared/model", "--fg-candidate=shared/model")
        assert trapped.ret == pytest.ExitCode.USAGE_ERROR
        trapped.stderr.fnmatch_lines(
            ["ERROR: forgetguard: pytest took */project/shared (a symbolic link to */other) as its rootdir and "
             "*/project/shared/pytest.ini as its configuration because --fg-base shared/model is written as two "
             "arguments*Write --fg-base=shared/model (one argument)*"]
        )  # fmt: skip
        fine = pytester.runpytest("--forgetguard", "--fg-base=shared/model", "--fg-candidate=shared/model")
        fine.stdout.fnmatch_lines(["rootdir: */project"])
        fine.assert_outcomes(passed=1)
