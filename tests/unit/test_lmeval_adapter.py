"""Canaries for lmeval.py's adapters: each fails when the lm-eval behaviour it reproduces changes.

forgetguard uses lm-eval's public API only; where that falls short (lmeval.py, "adapters") it reproduces
a piece of lm-eval, and these tests hold the copy to the original: the same per-item results as
``simple_evaluate``, the same task files skipped as lm-eval's task index skips. A model that scores by
hashing its prompts (and draws from every seeded generator) stands in for a real one: fast, and any
difference in a prompt, a few-shot draw or a seed shows in its numbers.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lmeval_tasks import MC_YAML, write_large_tasks, write_tasks

from pytest_forgetguard.lmeval import (
    _unreadable_task_files,
    base_cache_key,
    check_task_yaml,
    include_paths,
    load_tasks,
    simple_evaluate_results,
)

TASKS = ["tiny_mc", "tiny_ppl", "tiny_gen", "big_mc_fewshot", "zero_shot_mc"]


def _score(*texts: str) -> float:
    """A log-likelihood from the text, plus a little from Python's, numpy's and torch's seeded generators."""
    import torch

    digest = hashlib.sha256("\x00".join(texts).encode()).digest()
    noise = random.random() + float(np.random.rand()) + float(torch.rand(1))
    return -1.0 - 9.0 * int.from_bytes(digest[:4], "big") / 2**32 - 1e-3 * noise


def hashing_lm() -> Any:
    from lm_eval.api.model import LM

    class HashingLM(LM):  # type: ignore[misc]
        tokenizer_name = "hashing"

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return [(_score(*r.args), False) for r in requests]

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            return [_score(r.args[0]) for r in requests]

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            return [" is" if _score(r.args[0]) > -5.5 else " not" for r in requests]

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in chat_history) + "<assistant>"

        def chat_template(self, chat_template: bool | str = False) -> str:
            return "hashing"

    return HashingLM()


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_tasks(tmp_path_factory.mktemp("adapter") / "tasks")
    write_large_tasks(d, n=20, fewshot=True)  # big_mc_fewshot: two few-shot examples of its own
    zero = MC_YAML.replace("tiny_mc", "zero_shot_mc") + "num_fewshot: 0\nfewshot_split: test\n"
    (d / "zero_shot_mc.yaml").write_text(zero)  # zero-shot by its own config: never overridden
    return d


@pytest.fixture(autouse=True)
def _no_machine_survey(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """simple_evaluate's description of the machine (torch's collect_env) costs ~0.65 s: counted, not run."""
    import torch.utils.collect_env

    calls: list[int] = []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: calls.append(1) or "")
    return calls


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _both(tasks_dir: Path, names: list[str], **run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the adapter's results, simple_evaluate's), each on freshly loaded tasks (lm-eval changes them)."""
    from lm_eval import simple_evaluate

    seed = run.pop("seed", 1234)
    ours_tasks = load_tasks(names, include_paths(tasks_dir))
    ours = simple_evaluate_results(hashing_lm(), ours_tasks.manager, ours_tasks.tasks, seed=seed, **run)
    theirs_tasks = load_tasks(names, include_paths(tasks_dir))
    theirs = simple_evaluate(
        model=hashing_lm(), tasks=list(theirs_tasks.tasks.values()), task_manager=theirs_tasks.manager,
        log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed, **run,
    )  # fmt: skip
    assert ours is not None and theirs is not None
    return ours, theirs


@pytest.mark.slow  # lm-eval runs
@pytest.mark.parametrize(
    "run",
    [
        dict(num_fewshot=None, limit=None, samples=None, apply_chat_template=False),
        dict(num_fewshot=2, limit=5, samples=None, apply_chat_template=False, seed=7),
        dict(num_fewshot=0, limit=0.5, samples=None, apply_chat_template=False),
        dict(num_fewshot=None, limit=None, samples=None, apply_chat_template=True),
        dict(
            num_fewshot=None,
            limit=None,
            samples={"big_mc_fewshot": [1, 3, 5], "tiny_mc": [0, 2]},
            apply_chat_template=False,
        ),
    ],  # fmt: skip
    ids=["defaults", "fewshot-limit-seed", "zero-shot", "chat-fewshot", "samples"],
)
def test_the_adapter_returns_what_simple_evaluate_returns(tasks_dir, run):
    names = TASKS if run["samples"] is None else list(run["samples"])
    ours, theirs = _both(tasks_dir, names, **run)
    # Everything lm_eval.evaluate returns, which simple_evaluate passes on (it adds the run's date, its
    # config and the machine's description, which forgetguard does not read).
    assert set(ours) <= set(theirs) and {"results", "samples", "higher_is_better", "configs"} <= set(ours)
    for key in ours:
        assert _plain(ours[key]) == _plain(theirs[key]), key
    assert all(ours["samples"][n] for n in names)
    if run["samples"] is None:  # the task's own 2, or overridden; a task's own 0 never is
        fewshot = ours["configs"]["big_mc_fewshot"]["num_fewshot"]
        assert fewshot == (2 if run["num_fewshot"] is None else run["num_fewshot"])
        assert ours["configs"]["zero_shot_mc"]["num_fewshot"] == 0


@pytest.mark.slow  # lm-eval runs
def test_simple_evaluate_still_needs_the_adapter(tasks_dir, _no_machine_survey, monkeypatch):
    # If either fails, simple_evaluate no longer does what the adapter avoids: call it again instead.
    ours, theirs = _both(tasks_dir, ["tiny_mc"], num_fewshot=None, limit=None, samples=None,
                         apply_chat_template=False)  # fmt: skip
    assert _no_machine_survey == [1] and "pretty_env_info" in theirs and "pretty_env_info" not in ours
    from lm_eval import simple_evaluate

    monkeypatch.setenv("LOCAL_RANK", "1")  # a torchrun rank other than a node's first
    loaded = load_tasks(["tiny_mc"], include_paths(tasks_dir))
    assert simple_evaluate(model=hashing_lm(), tasks=list(loaded.tasks.values()), task_manager=loaded.manager) is None
    loaded = load_tasks(["tiny_mc"], include_paths(tasks_dir))
    results = simple_evaluate_results(hashing_lm(), loaded.manager, loaded.tasks, num_fewshot=None, limit=None,
                                      samples=None, seed=1, apply_chat_template=False)  # fmt: skip
    assert results is not None and results["samples"]["tiny_mc"]  # every rank gets the results


def test_load_tasks_keeps_where_a_task_lives_without_writing_on_lm_evals_objects(tasks_dir, tmp_path):
    loaded = load_tasks(["tiny_mc"], include_paths(tasks_dir))
    assert loaded.dirs == {"tiny_mc": tasks_dir.resolve()}  # forgetguard's own record, by task name
    assert not [name for name in vars(loaded.tasks["tiny_mc"]) if name.startswith("_fg")]
    task = loaded.tasks["tiny_mc"]
    key = base_cache_key("tiny_mc", task, loaded.dirs["tiny_mc"], "fingerprint", {})
    assert key != base_cache_key("tiny_mc", task, tmp_path, "fingerprint", {})  # its data files are hashed there
    assert loaded.only([]).tasks == {} and loaded.only(["tiny_mc"]) == loaded


# Task YAMLs, one per rule of lm-eval's task file reader (each names the task after its file).
YAMLS = {
    "good": "task: good\ndataset_path: json\n",
    "withfn": "task: withfn\ndataset_path: json\nprocess_docs: !function utils.no_such_function\n",
    "_base": "dataset_path: json\noutput_type: multiple_choice\n",  # no task: included by others
    "sub/_more": "fewshot_split: test\n",
    "included": "include: _base.yaml\ntask: included\n",
    "multi": "include: [_base.yaml, sub/_more.yaml]\ntask: multi\n",
    "syntax": "task: syntax\n  bad: [unclosed\n",
    "tab": "task: tab\n\tx: 1\n",
    "alist": "- task: alist\n",
    "python_tag": "task: python_tag\nx: !!python/name:os.system\n",
    "other_tag": "task: other_tag\nx: !custom foo\n",
    "bad_include": "include: missing.yaml\ntask: bad_include\n",
    "include_list": "include: alist.yaml\ntask: include_list\n",
    "cycle_a": "include: cycle_b.yaml\ntask: cycle_a\n",
    "cycle_b": "include: cycle_a.yaml\ntask: cycle_b\n",
}
READABLE = {"good", "withfn", "_base", "sub/_more", "included", "multi"}


def test_the_task_files_flagged_unreadable_are_those_lm_evals_index_skips(tmp_path):
    from lm_eval.tasks import TaskManager

    for name, text in YAMLS.items():
        (tmp_path / f"{name}.yaml").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{name}.yaml").write_text(text)
    flagged = {str(f.relative_to(tmp_path).with_suffix("")): why for f, why in _unreadable_task_files([tmp_path])}
    assert set(flagged) == set(YAMLS) - READABLE
    index = TaskManager(include_path=str(tmp_path), include_defaults=False).task_index
    named = {n for n in YAMLS if not Path(n).name.startswith("_")}
    assert {n for n in named if n in index} == named - set(flagged)  # lm-eval reads exactly what we read
    assert "expected a mapping" in flagged["alist"] and "include cycle" in flagged["cycle_a"]
    assert flagged["syntax"].startswith("ScannerError") and "missing.yaml" in flagged["bad_include"]
    check_task_yaml(tmp_path / "withfn.yaml")  # a !function is read as text: never imported
