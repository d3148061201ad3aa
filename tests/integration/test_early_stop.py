"""Retention that stops when the answer is known, in real pytest runs on tiny models and real lm-eval.

The multiple-choice task is labelled with the base's own answers (the base scores 1.0), so a candidate
with heavy noise on its weights has really forgotten something, and one with almost none has not.
"""

from __future__ import annotations

import json

import pytest
from builders import build_tiny_model
from helpers import forgetguard_args
from lmeval_tasks import label_with_answers, write_large_tasks

pytestmark = pytest.mark.slow  # lm-eval on 300 items per run

N = 300


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    from pytest_forgetguard.lmeval import evaluate
    from pytest_forgetguard.models import ModelStore

    root = tmp_path_factory.mktemp("early")
    tasks = write_large_tasks(root / "tasks", N, fewshot=True)
    base = ModelStore().get(str(tiny["base"]), role="base")
    [run] = evaluate(base, ["big_mc"], include_path=tasks).values()
    label_with_answers(tasks, "big_mc", {s["doc_id"]: s["answer"] for s in run.samples})
    return {
        "tasks": tasks,
        "base": tiny["base"],
        "damaged": build_tiny_model(tiny["tokenizer"], root / "damaged", seed=5, noise=2.0, base=tiny["base"]),
        "same": build_tiny_model(tiny["tokenizer"], root / "same", seed=6, noise=0.0003, base=tiny["base"]),
    }


SUITE = """
checks:
  - name: mc
    retention: {{task: {task}, include_path: {tasks}, max_drop: 0.1{extra}}}
"""


def run(pytester, models, candidate, *args, task="big_mc", extra=""):
    pytester.path.joinpath("forgetguard.yaml").write_text(SUITE.format(task=task, tasks=models["tasks"], extra=extra))
    result = pytester.runpytest(
        *forgetguard_args(models["base"], models[candidate], cache=pytester.path / "cache"), "--fg-report-json=r.json",
        "--fg-report-md=r.md", "-p", "no:cacheprovider", *args,
    )  # fmt: skip
    [row] = json.loads((pytester.path / "r.json").read_text())["checks"]
    return result, row


def test_a_damaged_candidate_stops_at_the_first_look_and_says_so_everywhere(pytester, models):
    result, row = run(pytester, models, "damaged")
    result.assert_outcomes(failed=1)
    d = row["details"]
    assert d["verdict"] == "fail" and row["n"] == 50 and d["items_total"] == N and d["looks"] == 1
    assert d["method"].startswith("anytime-valid betting test")
    assert row["base_value"] == 1.0  # the base's score on every item, whatever the candidate ran on
    result.stdout.fnmatch_lines(["*decided after 50 of 300 items (1 look)*"])
    assert "mc [damaged]: decided after 50 of 300 items (1 look)" in (pytester.path / "r.md").read_text()


def test_a_near_identical_candidate_passes_before_the_last_item(pytester, models):
    result, row = run(pytester, models, "same")
    result.assert_outcomes(passed=1)
    assert row["details"]["verdict"] == "pass" and row["n"] < N and row["details"]["looks"] >= 1


@pytest.mark.parametrize("how", ["--fg-no-early-stop", "stop_early: false", "gate: observed"])
def test_every_item_runs_when_asked_and_the_verdict_is_the_same(pytester, models, how):
    args, extra = ((how,), "") if how.startswith("--") else ((), ", " + how)
    result, row = run(pytester, models, "damaged", *args, extra=extra)
    result.assert_outcomes(failed=1)
    assert row["n"] == N and row["details"]["items_total"] == N and row["details"]["looks"] == 1
    assert row["details"]["verdict"] == "fail"


def test_the_same_items_in_every_run_and_under_xdist(pytester, models):
    _, first = run(pytester, models, "same")
    _, again = run(pytester, models, "same", "-n", "2")
    assert (again["n"], again["details"]["drop"], again["details"]["verdict"]) == (
        first["n"], first["details"]["drop"], first["details"]["verdict"])  # fmt: skip
    _, other = run(pytester, models, "same", "--fg-seed=99")
    assert other["details"]["verdict"] == "pass"  # another order of the items, the same conclusion


def test_prompts_that_depend_on_the_chunk_run_every_remaining_item_with_a_note(pytester, models):
    result, row = run(pytester, models, "damaged", task="big_mc_fewshot")
    assert row["n"] == N and row["details"]["looks"] == 1
    assert any("evaluated on every item in one run, as the base was" in w for w in row["details"]["warnings"])


def test_min_items_above_the_task_runs_every_item_once(pytester, models):
    result, row = run(pytester, models, "damaged", extra=", min_items: 1000")
    assert row["n"] == N and row["details"]["looks"] == 1 and row["details"]["verdict"] == "fail"
    assert any("min_items 1000 is not below the task's 300 items" in w for w in row["details"]["warnings"])


def test_a_real_valued_metric_stops_on_the_asymptotic_sequence(pytester, models):
    pytester.path.joinpath("forgetguard.yaml").write_text(
        f"checks:\n  - name: bpb\n    retention: {{task: big_ppl, include_path: {models['tasks']}, "
        "metric: bits_per_byte, max_drop_relative: 0.05}\n"
    )
    pytester.runpytest(*forgetguard_args(models["base"], models["damaged"]), "--fg-report-json=r.json",
                       "-p", "no:cacheprovider")  # fmt: skip
    [row] = json.loads((pytester.path / "r.json").read_text())["checks"]
    assert row["details"]["verdict"] == "fail" and row["n"] < N
    assert row["details"]["method"].startswith("asymptotic confidence sequence")


def test_generation_tasks_and_pooled_tasks_stop_too_and_nothing_partial_is_cached(pytester, models):
    pytester.path.joinpath("forgetguard.yaml").write_text(
        f"checks:\n  - name: gen\n    retention: {{task: big_gen, include_path: {models['tasks']}, max_drop: 0.1}}\n"
        f"  - name: pooled\n    retention: {{task: [big_mc, big_mc2], include_path: {models['tasks']}, "
        "max_drop: 0.1}\n"
    )
    cache = pytester.path / "cache"
    pytester.runpytest(*forgetguard_args(models["base"], models["damaged"], cache=cache), "--fg-report-json=r.json",
                       "-p", "no:cacheprovider")  # fmt: skip
    rows = {r["name"]: r for r in json.loads((pytester.path / "r.json").read_text())["checks"]}
    assert rows["gen"]["error"] is None and rows["gen"]["n"] < N  # generate_until, exact match: decided early
    pooled = rows["pooled"]
    assert pooled["details"]["verdict"] == "fail" and pooled["details"]["items_total"] == 2 * N
    assert pooled["n"] == 50 and {t["task"] for t in pooled["details"]["per_task"]} == {"big_mc", "big_mc2"}
    # Only the base's full runs are cached (one entry per task): the candidate's partial runs never are.
    assert len(list((cache / "results" / "retention-base").rglob("*.json"))) == 3


def test_the_training_callbacks_retention_checks_stop_early_too(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_forgetguard.integrations.transformers import ForgetguardCallback

    suite = tmp_path / "forgetguard.yaml"
    suite.write_text(SUITE.format(task="big_mc", tasks=models["tasks"], extra=""))
    model = AutoModelForCausalLM.from_pretrained(models["damaged"])
    watch = ForgetguardCallback(str(suite), base=str(models["base"]), retention_every=1, trajectory=False)
    watch.setup(model, AutoTokenizer.from_pretrained(models["damaged"]))
    with pytest.warns(Warning, match="mc"):  # over its allowance: the callback warns, training goes on
        watch.measure(0, retention=True)
    mc = watch.history[-1]["checks"]["mc"]
    assert mc["passed"] is False and mc["n"] == 50  # the same early stop as in the gate
