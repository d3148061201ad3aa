"""Retention through lm-eval on tiny models: equality with lm-eval, pairing, cache keys, gates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lmeval_tasks import MC_YAML, write_tasks

from pytest_forgetguard.cache import ResultCache
from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.errors import ForgetguardWarning
from pytest_forgetguard.models import ModelStore
from pytest_forgetguard.retention import RetentionError, RetentionResult, gate_passes

# Most tests run lm-eval on both models (seconds each).
pytestmark = pytest.mark.slow


@pytest.fixture
def tasks_dir(tmp_path):
    return write_tasks(tmp_path / "tasks")


def make_fg(tiny, cand="candidate", cache=None, base="base", record=None):
    store = ModelStore()
    b = store.get(str(tiny[base]), role="base")
    return Forgetguard(b, store.get(str(tiny[cand]), base=b), cache=cache, record=record)


def lm_eval_reference(model_dir: Path, tasks_dir: Path, task: str) -> dict:
    """lm-eval's own numbers for the same model and task (data paths made absolute)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    abs_dir = tasks_dir.parent / "abs"
    shutil.copytree(tasks_dir, abs_dir, dirs_exist_ok=True)
    for y in abs_dir.glob("*.yaml"):
        text = y.read_text()
        for f in ("mc.jsonl", "ppl.jsonl", "gen.jsonl"):
            text = text.replace(f"test: {f}", f"test: {abs_dir / f}")
        y.write_text(text)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=4, device="cpu")
    tm = TaskManager(include_path=str(abs_dir), include_defaults=False)
    return simple_evaluate(model=lm, tasks=[task], task_manager=tm, bootstrap_iters=0)["results"][task]


@pytest.mark.parametrize("task, metric", [("tiny_mc", "acc"), ("tiny_ppl", "word_perplexity")])
def test_base_value_equals_lm_eval(tiny, tasks_dir, task, metric):
    result = make_fg(tiny).retention(task, include_path=tasks_dir)
    ref = lm_eval_reference(tiny["base"], tasks_dir, task)
    assert result.metric == metric
    assert result.base_value == pytest.approx(ref[f"{metric},none"], rel=1e-9)
    assert result.n == (12 if task == "tiny_mc" else 6)
    assert result.higher_is_better is (task == "tiny_mc")


def test_generate_until_with_filter(tiny, tasks_dir):
    result = make_fg(tiny).retention("tiny_gen", include_path=tasks_dir)
    assert (result.metric, result.filter, result.n) == ("exact_match", "strip", 4)
    assert result.p_value is not None  # 0/1 metric: McNemar applies


def test_identical_models_have_zero_delta(tiny, tasks_dir):
    with pytest.warns(ForgetguardWarning, match="is identical to the base"):
        result = make_fg(tiny, cand="twin").retention(["tiny_mc", "tiny_ppl"][:1], include_path=tasks_dir)
    assert result.delta == 0 and result.ci_low == 0 and result.ci_high == 0
    assert (result.lost, result.gained, result.p_value) == (0, 0, 1.0)


def test_several_tasks_are_pooled(tiny, tasks_dir):
    (tasks_dir / "mc2.yaml").write_text(MC_YAML.replace("tiny_mc", "tiny_mc2"))
    fg = make_fg(tiny)
    both = fg.retention(["tiny_mc", "tiny_mc2"], include_path=tasks_dir)
    one = fg.retention("tiny_mc", include_path=tasks_dir)
    assert both.n == 24 and both.tasks == ("tiny_mc", "tiny_mc2")
    assert both.base_value == pytest.approx(one.base_value) and [t.n for t in both.per_task] == [12, 12]


def test_base_cache_hits_and_misses(tiny, tasks_dir, tmp_path):
    cache = ResultCache(tmp_path / "cache")
    make_fg(tiny, cache=cache).retention("tiny_mc", include_path=tasks_dir)
    assert (cache.hits, cache.misses) == (0, 1)
    warm = ResultCache(tmp_path / "cache")  # a new process: nothing in memory
    r1 = make_fg(tiny, cache=warm).retention("tiny_mc", include_path=tasks_dir)
    assert (warm.hits, warm.misses) == (1, 0), "unchanged base, task and data: served from the cache"
    # Anything the base's results depend on is a miss.
    for change in ("fewshot", "data", "config", "weights"):
        c = ResultCache(tmp_path / "cache")
        kwargs = {"include_path": tasks_dir}
        base = "base"
        if change == "fewshot":
            kwargs["num_fewshot"] = 1
        elif change == "data":
            with open(tasks_dir / "mc.jsonl", "a") as fh:
                fh.write(
                    json.dumps({"q": "The pass statement is", "choices": [" a", " b", " c", " d"], "label": 0}) + "\n"
                )
        elif change == "config":
            (tasks_dir / "mc.yaml").write_text(MC_YAML.replace('"{{q}}"', '"Q: {{q}}"'))
        else:
            base = "twin_changed"
        if change == "weights":
            import torch
            from safetensors.torch import load_file, save_file

            d = tmp_path / "twin_changed"
            shutil.copytree(tiny["twin"], d)
            tensors = load_file(str(d / "model.safetensors"))
            name = next(iter(tensors))
            tensors[name] = tensors[name].clone()
            tensors[name].view(-1)[0] += torch.tensor(1e-3)
            save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
            tiny = {**tiny, "twin_changed": d}
        make_fg(tiny, cache=c, base=base).retention("tiny_mc", **kwargs)
        assert (c.hits, c.misses) == (0, 1), f"a changed {change} must be a cache miss"
    assert r1.n == 12


def test_unknown_task_and_metric(tiny, tasks_dir):
    fg = make_fg(tiny)
    with pytest.raises(RetentionError, match="unknown lm-eval task 'tiny_mcc'; did you mean tiny_mc"):
        fg.retention("tiny_mcc", include_path=tasks_dir)
    with pytest.raises(RetentionError, match="task 'tiny_mc' has no metric 'bleu'; it reports acc"):
        fg.retention("tiny_mc", metric="bleu", include_path=tasks_dir)
    with pytest.raises(RetentionError, match="is not a directory"):
        fg.retention("tiny_mc", include_path=tasks_dir / "nope")


def test_assert_retained_decides_and_records(tiny, tasks_dir):
    records = []
    fg = make_fg(tiny, record=records.append)
    result = fg.retention("tiny_mc", include_path=tasks_dir)
    if result.drop > 0:
        with pytest.raises(AssertionError, match="capability forgotten by candidate"):
            fg.assert_retained("tiny_mc", max_drop=0.0, include_path=tasks_dir, name="mc")
    else:
        fg.assert_retained("tiny_mc", max_drop=0.0, include_path=tasks_dir, name="mc")
    rec = records[-1]
    assert (rec.kind, rec.metric, rec.base_value, rec.candidate_value) == (
        "retention",
        "acc",
        result.base_value,
        result.candidate_value,
    )
    assert rec.passed == (result.drop <= 0)
    with pytest.raises(ValueError, match="needs max_drop"):
        fg.assert_retained("tiny_mc", include_path=tasks_dir)
    with pytest.raises(ValueError, match="gate must be one of"):
        fg.assert_retained("tiny_mc", max_drop=0.1, gate="lenient", include_path=tasks_dir)


def result_with(drop_lo: float, drop: float, drop_hi: float) -> RetentionResult:
    # higher is better: drop = base - candidate; CI of delta = -CI of drop.
    return RetentionResult(
        tasks=("t",),
        metric="acc",
        filter="none",
        higher_is_better=True,
        base_value=0.8,
        candidate_value=0.8 - drop,
        ci_low=-drop_hi,
        ci_high=-drop_lo,
        n=100,
        p_value=None,
        lost=None,
        gained=None,
        per_task=[],
    )


@pytest.mark.parametrize(
    "gate, drop_lo, drop, drop_hi, passes",
    [
        ("observed", -0.01, 0.03, 0.07, False),  # observed drop 0.03 > 0.02
        ("observed", -0.05, 0.01, 0.07, True),
        ("significant", -0.01, 0.03, 0.07, True),  # could be noise: CI reaches below the allowance
        ("significant", 0.025, 0.05, 0.08, False),  # confidently worse than allowed
        ("strict", -0.05, 0.01, 0.07, False),  # not shown to be within the allowance
        ("strict", -0.03, 0.0, 0.015, True),
    ],
)
def test_gate_policies(gate, drop_lo, drop, drop_hi, passes):
    assert gate_passes(result_with(drop_lo, drop, drop_hi), 0.02, gate) is passes


def test_non_finite_never_passes():
    r = result_with(0.0, 0.0, 0.0)
    r.candidate_value = float("nan")
    assert not gate_passes(r, 1.0, "observed")


def test_underpowered_check_warns_with_the_items_needed(tiny, tasks_dir):
    warnings: list[str] = []
    fg = make_fg(tiny)
    fg._warn = warnings.append
    result = fg.retention("tiny_ppl", include_path=tasks_dir)
    assert result.ci_high > result.ci_low, "a continuous metric of distinct models has a spread"
    allowance = (result.ci_high - result.ci_low) / 4
    try:
        fg.assert_retained("tiny_ppl", max_drop=allowance, gate="significant", include_path=tasks_dir)
    except AssertionError:
        pass
    assert len(warnings) == 1 and "underpowered" in warnings[0]
    needed = int(warnings[0].split("about ")[1].split(" items")[0])
    assert needed == pytest.approx(6 * 16, rel=0.05), "width/allowance = 4 -> 16x the 6 items"


def test_empty_task_data_and_bad_limits_fail_clearly(tiny, tasks_dir):
    fg = make_fg(tiny)
    (tasks_dir / "ppl.jsonl").write_text("")
    with pytest.raises(RetentionError, match=r"could not load task 'tiny_ppl'.*missing or empty"):
        fg.retention("tiny_ppl", include_path=tasks_dir)
    for bad in (0, -3, float("nan")):
        with pytest.raises(ValueError, match="limit must be a positive number"):
            fg.retention("tiny_mc", include_path=tasks_dir, limit=bad)
    with pytest.raises(ValueError, match="num_fewshot must be an integer >= 0"):
        fg.retention("tiny_mc", include_path=tasks_dir, num_fewshot=-1)


def test_vllm_backend_falls_back_to_hf_with_a_message(tiny, tasks_dir):
    hf = make_fg(tiny).retention("tiny_mc", include_path=tasks_dir)
    messages = []
    fg = make_fg(tiny)
    fg._warn = messages.append
    fallback = fg.retention("tiny_mc", include_path=tasks_dir, backend="vllm")
    assert messages and "retention backend vllm requested but vllm is not installed" in messages[0]
    assert "HF backend instead" in messages[0]
    assert (fallback.base_value, fallback.candidate_value, fallback.n) == (hf.base_value, hf.candidate_value, hf.n)
    with pytest.raises(RetentionError, match="unknown retention backend 'tgi'; use one of hf, vllm"):
        make_fg(tiny).retention("tiny_mc", include_path=tasks_dir, backend="tgi")


def test_vllm_arguments_point_at_files(tiny, tmp_path):
    from pytest_forgetguard.lmeval import vllm_arguments

    store = ModelStore()
    base = store.get(str(tiny["base"]), role="base")
    args = vllm_arguments(store.get(str(tiny["candidate"]), base=base), batch_size=8, seed=3)
    assert args["pretrained"] == str(tiny["candidate"]) and "lora_local_path" not in args
    assert (args["dtype"], args["seed"], args["trust_remote_code"]) == ("float32", 3, False)
    # A LoRA candidate: vLLM loads the base's files and applies the adapter as a LoRA request.
    lora = vllm_arguments(store.get(str(tiny["lora"]), base=base), batch_size=8, seed=3)
    assert (lora["pretrained"], lora["lora_local_path"]) == (str(tiny["base"]), str(tiny["lora"]))


def test_lm_eval_does_not_survey_the_machine_on_every_run(tiny, tasks_dir, monkeypatch):
    # torch's collect_env runs ~20 subprocesses (pip list, nvidia-smi, ...): ~0.65 s per lm-eval run
    # for a description of the machine nobody reads. It is skipped while forgetguard runs lm-eval.
    import lm_eval.evaluator
    import torch.utils.collect_env

    calls = []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: calls.append(1) or "")
    original = lm_eval.evaluator.add_env_info
    make_fg(tiny).retention("tiny_mc", include_path=tasks_dir)
    assert calls == [] and lm_eval.evaluator.add_env_info is original  # skipped, then put back
    lm_eval_reference(tiny["base"], tasks_dir, "tiny_mc")  # lm-eval alone still surveys it
    assert calls == [1]
