"""`forgetguard compare` on files lm-eval itself wrote (--log_samples through its EvaluationTracker), for a
multiple-choice task and a rolling log-likelihood one, and the same verdict the gate gives in process."""

from __future__ import annotations

import json
import os

import pytest
from lmeval_tasks import write_tasks

from pytest_forgetguard.cli import main

pytestmark = pytest.mark.slow  # lm-eval runs on two tiny models


@pytest.fixture(scope="module")
def samples(tiny, tmp_path_factory):
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("compare")
    tasks = write_tasks(root / "tasks")
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    out = {}
    here = os.getcwd()
    os.chdir(tasks)  # lm-eval reads a task's relative data_files from the working directory
    try:
        _evaluate(tiny, root, manager, out)
    finally:
        os.chdir(here)
    return out


def _evaluate(tiny, root, manager, out):
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.huggingface import HFLM

    for name in ("base", "candidate"):
        lm = HFLM(pretrained=str(tiny[name]), tokenizer=str(tiny["tokenizer"]), batch_size=4, device="cpu")
        result = simple_evaluate(model=lm, tasks=["tiny_mc", "tiny_ppl"], task_manager=manager, log_samples=True)
        tracker = EvaluationTracker(output_path=str(root / name))
        samples = result.pop("samples")
        tracker.save_results_aggregated(results=result, samples=samples)  # as lm-eval's CLI: this dates the run
        for task in result["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
        out[name] = root / name


def test_compare_reads_what_lm_eval_wrote(samples, capsys):
    code = main(["compare", str(samples["base"]), str(samples["candidate"]), "--max-drop", "1.0", "--json"])
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"tiny_mc", "tiny_ppl"}
    mc = rows["tiny_mc"]
    assert (
        mc["metric"] == "acc" and mc["n"] == 12 and mc["verdict"] == "pass" and mc["method"].startswith("paired score")
    )
    ppl = rows["tiny_ppl"]
    assert ppl["metric"] == "word_perplexity" and ppl["higher_is_better"] is False and ppl["n"] == 6
    assert code in (0, 1, 3)  # the perplexity of random tiny models: whatever it is, decided from its numbers
    code = main(["compare", str(samples["base"]), str(samples["candidate"]), "--max-drop", "1", "--metric", "f1"])
    assert code == 2 and "no metric 'f1' (this task logs acc); pick one with --metric" in capsys.readouterr().err


def test_the_same_numbers_as_the_gate(samples, tiny, capsys):
    """The base's and candidate's scores on tiny_mc equal what the in-process retention check measures."""
    from pytest_forgetguard.comparison import Forgetguard
    from pytest_forgetguard.models import ModelStore

    store = ModelStore()
    base = store.get(str(tiny["base"]), role="base")
    fg = Forgetguard(base, store.get(str(tiny["candidate"]), base=base), warn=lambda m: None)
    measured = fg.retention("tiny_mc", include_path=samples["base"].parent / "tasks")
    b, c = (next(samples[side].rglob("samples_tiny_mc_*.jsonl")) for side in ("base", "candidate"))
    assert main(["compare", str(b), str(c), "--max-drop", "0.5", "--json"]) in (0, 3)  # two files: paired as given
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny_mc"]["base_value"] == pytest.approx(measured.base_value)
    assert rows["tiny_mc"]["candidate_value"] == pytest.approx(measured.candidate_value)
