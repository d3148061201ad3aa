"""pytest under torchrun: two CPU ranks (gloo) reach the single-process verdicts, and rank 0 alone reports.

Each run is a real ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m pytest`` in a
subprocess, with every rank's output in its own log file (``--redirects 3 --log-dir``), bounded by a
timeout so that a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from lmeval_tasks import write_tasks

# Every test launches torchrun with two processes.
pytestmark = pytest.mark.slow

# Five prompts, so rank 0 scores 0, 2, 4 and rank 1 scores 1, 3. Prompt 1 holds the token the
# poisoned candidate turns into NaN: only rank 1's shard can fail.
PROMPTS = [
    ("The for statement", " executes the suite once for each item."),
    ("A class <|im_start|> definition", " defines a class object."),
    ("Identifiers", " are unlimited in length."),
    ("Boolean operations", " are or, and and not."),
    ("The while statement", " is used for repeated execution."),
]

TESTS = """
def test_sampled_from_base(forgetguard):
    forgetguard.assert_kl_budget("prompts.jsonl", budget=100.0, name="sampled", max_new_tokens=6)

def test_sampled_from_candidate_reverse(forgetguard):
    forgetguard.assert_kl_budget("prompts.jsonl", budget=100.0, name="reverse", direction="reverse", max_new_tokens=6)

def test_teacher_forced(forgetguard):
    forgetguard.assert_kl_budget("prompts.jsonl", budget=0.001, name="dataset", sample_from="dataset")

def test_fewer_prompts_than_ranks(forgetguard):
    result = forgetguard.assert_kl_budget("prompts.jsonl", budget=100.0, name="one", sample_from="dataset", limit=1)
    assert result.n_prompts == 1

def test_weights(forgetguard):
    forgetguard.assert_drift(max_relative_l2=1.0, name="weights")
"""

# A candidate that is finite everywhere except where the input holds one token: a defect that only the
# rank whose shard contains that prompt can see. Loaded through the public loader hook.
CONFTEST = """
from transformers import AutoModelForCausalLM, AutoTokenizer

def pytest_forgetguard_load_model(spec, device, dtype):
    if not spec.startswith("poisoned://"):
        return None
    path = spec.split("://", 1)[1]
    model, tok = AutoModelForCausalLM.from_pretrained(path).to(device), AutoTokenizer.from_pretrained(path)
    poison = tok.convert_tokens_to_ids("<|im_start|>")

    def nan_at_poison(module, args, output):
        return output.masked_fill((args[0] == poison).unsqueeze(-1), float("nan"))

    model.get_input_embeddings().register_forward_hook(nan_at_poison)
    return model, tok
"""

# Retention on every lm-eval request type: loglikelihood (multiple choice), loglikelihood_rolling
# (perplexity) and generate_until. The allowance is huge and the gate the point estimate: what is compared
# is the numbers, not a verdict (six perplexity items are too few for any verdict on a real-valued drop).
RETENTION_TESTS = """
import pytest

@pytest.mark.parametrize("task, metric", [("tiny_mc", "acc"), ("tiny_ppl", "word_perplexity"),
                                          ("tiny_gen", "exact_match")])
def test_retained(forgetguard, task, metric):
    forgetguard.assert_retained(task, metric=metric, include_path="tasks", max_drop=1e30, gate="observed", name=task)
"""

# Counts the rows each process's models run (a forward pre-hook on the whole model), written at exit:
# the proof that the ranks split the model calls rather than each doing all of them.
COUNTING_CONFTEST = """
import atexit, os
from transformers import AutoModelForCausalLM, AutoTokenizer

ROWS = [0]
atexit.register(lambda: open(f"rows-{os.environ.get('RANK', 'single')}.txt", "w").write(str(ROWS[0])))

def pytest_forgetguard_load_model(spec, device, dtype):
    if not spec.startswith("counted://"):
        return None
    path = spec.split("://", 1)[1]
    model, tok = AutoModelForCausalLM.from_pretrained(path).to(device), AutoTokenizer.from_pretrained(path)

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        ROWS[0] += int(ids.shape[0]) * int(ids.shape[1])

    model.register_forward_pre_hook(count, with_kwargs=True)
    return model, tok
"""

# Suite checks run through the same comparison object as the fixtures.
SUITE = """
checks:
  - name: suite-kl
    kl:
      prompts: prompts.jsonl
      direction: symmetric
      max_new_tokens: 4
      budget: 100
"""

OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR) (\S+)", re.MULTILINE)


@pytest.fixture
def project(pytester):
    pytester.path.joinpath("prompts.jsonl").write_text(
        "\n".join(json.dumps({"prompt": p, "response": r}) for p, r in PROMPTS) + "\n"
    )
    pytester.makeini("[pytest]\n")  # the nested runs' rootdir and config: this folder, nothing above it
    pytester.makeconftest(CONFTEST)
    return pytester


def torchrun(pytester, *args: str, timeout: float = 150) -> dict[int, str]:
    """Run pytest on two ranks; returns each rank's stdout."""
    logs = pytester.path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["--redirects", "3", "--log-dir", str(logs), "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args]
    proc = subprocess.run(cmd, cwd=pytester.path, capture_output=True, text=True, timeout=timeout)
    stdout = {int(p.parent.name): p.read_text() for p in logs.glob("*/attempt_0/*/stdout.log")}
    assert sorted(stdout) == [0, 1], (proc.returncode, proc.stderr[-3000:])
    return stdout


def outcomes(stdout: str) -> dict[str, str]:
    return {test: outcome for outcome, test in OUTCOME.findall(stdout)}


def models(tiny, candidate: str) -> list[str]:
    return ["--forgetguard", "--fg-base", str(tiny["base"]), "--fg-candidate", candidate, "--fg-device", "cpu"]


def test_two_ranks_report_what_one_process_reports(project, tiny):
    project.makepyfile(test_checks=TESTS)
    project.path.joinpath("forgetguard_dist.yaml").write_text(SUITE)
    single = project.runpytest(*models(tiny, str(tiny["candidate"])), "--fg-report-json", "single.json", "-rA")
    single.assert_outcomes(passed=5, failed=1)
    expected = outcomes(single.stdout.str())

    ranks = torchrun(
        project, *models(tiny, str(tiny["candidate"])), "--fg-report-json", "dist.json", "--junitxml", "junit.xml"
    )

    # The same verdict on both ranks, test by test.
    assert outcomes(ranks[0]) == outcomes(ranks[1]) == expected
    # Rank 0 prints the summary and writes the report; rank 1 neither.
    assert "forgetguard report written to dist.json" in ranks[0] and "= forgetguard =" in ranks[0]
    assert "forgetguard report written" not in ranks[1] and "= forgetguard =" not in ranks[1]
    assert "junit.xml" in ranks[0] and "junit.xml" not in ranks[1]  # one JUnit file, from rank 0
    junit = ET.parse(project.path / "junit.xml").getroot()
    assert len(junit.findall(".//testcase")) == 6
    one, two = (json.loads(project.path.joinpath(f).read_text()) for f in ("single.json", "dist.json"))
    assert [c["name"] for c in two["checks"]] == ["suite-kl", "sampled", "reverse", "dataset", "one", "weights"]
    assert len(one["checks"]) == len(two["checks"])
    for a, b in zip(one["checks"], two["checks"]):
        assert (a["name"], a["passed"], a["error"], a["n"]) == (b["name"], b["passed"], b["error"], b["n"])
        for key in ("value", "ci_low", "ci_high"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], abs=1e-6), (a["name"], key)
        for key in ("n_tokens", "kl_forward_mean", "kl_reverse_mean", "top1_agreement"):
            if key in a["details"]:
                assert b["details"][key] == pytest.approx(a["details"][key], abs=1e-6), (a["name"], key)


def test_retention_splits_the_model_calls_and_every_rank_gets_the_single_process_numbers(project, tiny):
    project.makeconftest(COUNTING_CONFTEST)
    write_tasks(project.path / "tasks")
    project.makepyfile(test_retention=RETENTION_TESTS)
    args = ["--forgetguard", "--fg-device", "cpu", "--fg-no-cache", "--fg-no-history"]
    args += ["--fg-base", f"counted://{tiny['base']}", "--fg-candidate", f"counted://{tiny['candidate']}"]
    single = project.runpytest_subprocess(*args, "--fg-report-json", "single.json", "-rA")
    single.assert_outcomes(passed=3)

    ranks = torchrun(project, *args, "--fg-report-json", "dist.json")

    expected = outcomes(single.stdout.str())
    assert len(expected) == 3 and outcomes(ranks[0]) == outcomes(ranks[1]) == expected
    one, two = (json.loads(project.path.joinpath(f).read_text())["checks"] for f in ("single.json", "dist.json"))
    assert [c["name"] for c in two] == ["tiny_mc", "tiny_ppl", "tiny_gen"]
    for a, b in zip(one, two):
        # Item by item the same (the pairing, the counts of lost and gained items), to float rounding:
        # a rank's share of the requests is batched with other neighbours than in one process.
        assert (b["n"], b["details"].get("lost"), b["details"].get("gained")) == (
            a["n"], a["details"].get("lost"), a["details"].get("gained"))  # fmt: skip
        for key in ("value", "ci_low", "ci_high", "base_value", "candidate_value"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["name"], key)
    # The work is split: each rank ran about half of the rows one process ran (both models, all tasks).
    rows = {name: int(project.path.joinpath(f"rows-{name}.txt").read_text()) for name in ("single", "0", "1")}
    assert rows["single"] > 0
    for rank in ("0", "1"):
        assert 0.3 * rows["single"] < rows[rank] < 0.7 * rows["single"], rows


def test_a_nan_in_one_ranks_share_of_lm_eval_requests_fails_both_ranks(project, tiny):
    # lm-eval starts every perplexity window with the BOS token (<|im_start|> for the tiny models) and
    # pads with token 0 (<|endoftext|>): poison a plain byte token that only document 1 holds.
    project.makeconftest(CONFTEST.replace("<|im_start|>", "~"))
    tasks = write_tasks(project.path / "tasks")
    texts = [f"The {w} statement is described in the reference." for w in ("for", "~", "while", "try")]
    tasks.joinpath("ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    project.makepyfile(
        test_nan="""
        def test_ppl(forgetguard):
            forgetguard.assert_retained("tiny_ppl", include_path="tasks", max_drop=1e30, name="nan-ppl")

        def test_after(forgetguard):
            forgetguard.assert_retained("tiny_mc", include_path="tasks", max_drop=1.0, name="after")
        """
    )
    ranks = torchrun(project, *models(tiny, f"poisoned://{Path(tiny['candidate'])}"), "--fg-no-cache")

    for rank in (0, 1):  # an error on both ranks, no hang, and the candidate unusable on both afterwards
        assert outcomes(ranks[rank]) == {"test_nan.py::test_ppl": "FAILED", "test_nan.py::test_after": "FAILED"}
        assert "failed in check 'nan-ppl'; a model that failed a check is never used again" in ranks[rank]
    assert "NonFiniteError: rank 1 of 2: candidate" in ranks[0]
    assert "NonFiniteError: candidate" in ranks[1]


def test_a_failure_in_one_ranks_shard_fails_both_ranks(project, tiny):
    project.makepyfile(
        test_nan="""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=1e9, name="nan-kl", sample_from="dataset")

        def test_after(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=1e9, name="after", sample_from="dataset", limit=1)
        """
    )
    poisoned = f"poisoned://{Path(tiny['candidate'])}"
    ranks = torchrun(project, *models(tiny, poisoned), "--fg-report-json", "r.json")

    for rank in (0, 1):  # an error on both ranks, no hang; and the ranks go on together
        # The candidate produced NaN: it is unusable for every later check, on every rank alike.
        assert outcomes(ranks[rank]) == {"test_nan.py::test_kl": "FAILED", "test_nan.py::test_after": "FAILED"}
        assert "failed in check 'nan-kl'; a model that failed a check is never used again" in ranks[rank]
    assert "NonFiniteError: KL is NaN/inf at prompt 1, response token 0" in ranks[1]
    assert "NonFiniteError: rank 1 of 2: KL is NaN/inf at prompt 1, response token 0" in ranks[0]
    check = json.loads(project.path.joinpath("r.json").read_text())["checks"][0]
    assert check["passed"] is False and check["error"].startswith("NonFiniteError: rank 1 of 2: KL is NaN/inf")


def test_a_broken_launch_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    result = pytester.runpytest("--forgetguard")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*forgetguard: WORLD_SIZE is 2 but RANK*not set: launch pytest with torchrun*"])
    # Without --forgetguard the plugin is inert, whatever the environment says.
    pytester.makepyfile("def test_ok(): pass")
    pytester.runpytest().assert_outcomes(passed=1)


def test_xdist_inside_torchrun_is_a_usage_error(pytester, monkeypatch):
    launch = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    result = pytester.runpytest("--forgetguard", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*forgetguard: pytest-xdist (-n) cannot run inside a torchrun launch*"])


# Each rank its own cache directory (as on nodes without a shared disk), so that who wrote what shows.
PER_RANK_CACHE_CONFTEST = """
import os

os.environ["FORGETGUARD_CACHE_DIR"] = os.path.abspath(f"cache-{os.environ.get('RANK', 'single')}")
"""


def test_one_rank_writes_each_cache_entry_and_the_history(project, tiny):
    from pytest_forgetguard.generation import SAMPLES_NAMESPACE
    from pytest_forgetguard.history import History
    from pytest_forgetguard.lmeval import CACHE_NAMESPACE

    project.makeconftest(PER_RANK_CACHE_CONFTEST)
    write_tasks(project.path / "tasks")
    project.makepyfile(
        test_cached="""
        def test_kl(forgetguard):
            forgetguard.assert_kl_budget("prompts.jsonl", budget=100.0, name="sampled", max_new_tokens=4)

        def test_retained(forgetguard):
            forgetguard.assert_retained("tiny_mc", include_path="tasks", max_drop=1.0, name="mc")
        """
    )
    ranks = torchrun(project, *models(tiny, str(tiny["candidate"])), "--fg-history=history.sqlite")

    assert (
        outcomes(ranks[0]) == outcomes(ranks[1]) == {f"test_cached.py::test_{t}": "PASSED" for t in ("kl", "retained")}
    )
    written = {
        rank: {
            p.relative_to(project.path / f"cache-{rank}")
            for p in (project.path / f"cache-{rank}").rglob("*")
            if p.is_file()
        }
        for rank in (0, 1)
    }
    assert not any(p.name.startswith(".") for files in written.values() for p in files), "no temporary file left"
    assert not written[0] & written[1], "no entry is written by both ranks"
    # The base's lm-eval results are gathered to every rank: rank 0 alone writes them.
    assert len([p for p in written[0] if p.parts[1] == CACHE_NAMESPACE]) == 1
    assert not [p for p in written[1] if p.parts[1] == CACHE_NAMESPACE]
    # A shard's samples and base states are computed by one rank only: that rank writes them.
    for rank in (0, 1):
        assert len([p for p in written[rank] if p.parts[1] == SAMPLES_NAMESPACE]) == 1
        assert [p for p in written[rank] if p.parts[1] == "base-states"]
    # The history: one run, from rank 0 (the process that writes the reports).
    history = History(project.path / "history.sqlite")
    assert len(history.runs()) == 1 and sorted(r.name for r in history.rows()) == ["mc", "sampled"]
