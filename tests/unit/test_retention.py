"""Retention through lm-eval on tiny models: equality with lm-eval, pairing, cache keys, gates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lmeval_tasks import MC_YAML, write_tasks

from pytest_forgetguard.cache import ResultCache
from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.errors import CapabilityForgotten, ForgetguardWarning
from pytest_forgetguard.models import ModelStore
from pytest_forgetguard.retention import RetentionError, RetentionResult

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
            fg.assert_retained("tiny_mc", max_drop=0.0, gate="observed", include_path=tasks_dir, name="mc")
    else:
        with pytest.warns(ForgetguardWarning, match="inconclusive at alpha 0.05"):
            fg.assert_retained("tiny_mc", max_drop=0.0, gate="observed", include_path=tasks_dir, name="mc")
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


def result_with(lost: int, gained: int, n: int = 400, base_right: int = 280) -> RetentionResult:
    """A measured accuracy comparison with these counts of flipped items (higher is better)."""
    import numpy as np

    from pytest_forgetguard.stats import ItemValues

    base = np.zeros(n)
    base[:base_right] = 1.0
    cand = base.copy()
    cand[:lost] = 0.0  # right for the base only
    cand[base_right : base_right + gained] = 1.0  # right for the candidate only
    bv, cv = ItemValues(list(base), "mean"), ItemValues(list(cand), "mean")
    return RetentionResult(
        tasks=("t",), metric="acc", filter="none", higher_is_better=True, base_value=bv.value(),
        candidate_value=cv.value(), ci_low=0.0, ci_high=0.0, n=n, p_value=None, lost=lost, gained=gained,
        per_task=[], paired=(bv, cv),
    )  # fmt: skip


@pytest.mark.parametrize(
    "lost, gained, n, gate, on_inconclusive, verdict, passes",
    [
        (3, 4, 400, "strict", "fail", "pass", True),  # bounds well within 0.05
        (60, 2, 400, "strict", "fail", "fail", False),  # drop 0.145, lower bound over 0.05
        (9, 2, 60, "strict", "fail", "inconclusive", False),  # drop 0.117 but 60 items cannot tell
        (9, 2, 60, "strict", "pass", "inconclusive", True),
        (9, 2, 60, "significant", "fail", "inconclusive", True),  # significant = on_inconclusive: pass
        (9, 2, 60, "observed", "fail", "fail", False),  # the point estimate, no error rate
        (2, 1, 60, "observed", "fail", "pass", True),
        (2, 1, 60, "strict", "fail", "inconclusive", False),  # 60 items cannot prove 0.05 (needs >= 61)
    ],
)
def test_gate_policies(lost, gained, n, gate, on_inconclusive, verdict, passes):
    r = result_with(lost, gained, n, base_right=n * 2 // 3)
    r.gate_on(0.05, None, gate, alpha=0.05, on_inconclusive=on_inconclusive)
    assert (r.verdict_word, r.passed) == (verdict, passes)
    rec = r.to_record("k", "c")
    rec.settle(r.passed)
    assert rec.details["verdict"] == verdict and rec.details["alpha"] == 0.05 and rec.passed is passes
    assert (rec.details["items_needed"] is None) == (r.verdict.verdict != "inconclusive")


def test_a_drop_equal_to_the_allowance_is_within_it():
    r = result_with(0, 0, 400)
    r.gate_on(0.0, None, "observed")
    assert r.drop == 0.0 and r.passed, "observed drop 0 at allowance 0: within"


def test_non_finite_never_passes():
    r = result_with(0, 0)
    r.gate_on(1.0, None, "observed")
    r.candidate_value = float("nan")
    assert not r.passed


def test_an_inconclusive_check_says_what_would_decide_it(tiny, tasks_dir):
    warnings: list[str] = []
    fg = make_fg(tiny)
    fg._warn = warnings.append
    result = fg.retention("tiny_ppl", include_path=tasks_dir)
    width = abs(result.ci_high - result.ci_low)
    assert width > 0, "a continuous metric of distinct models has a spread"
    allowance = abs(result.drop) + width / 8
    passed = fg.assert_retained("tiny_ppl", max_drop=allowance, on_inconclusive="pass", include_path=tasks_dir)
    assert passed.verdict_word == "inconclusive" and passed.passed
    assert len(warnings) == 1 and "inconclusive at alpha 0.05" in warnings[0] and "on_inconclusive: pass" in warnings[0]
    needed = int(warnings[0].split("about ")[1].split(" items")[0])
    assert needed > passed.n
    with pytest.raises(CapabilityForgotten, match="retention not shown.*verdict: inconclusive") as info:
        fg.assert_retained("tiny_ppl", max_drop=allowance, include_path=tasks_dir)
    assert "items would decide it" in str(info.value)


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
    # for a description of the machine nobody reads. forgetguard runs lm-eval without it, patching nothing
    # (lmeval.simple_evaluate_results).
    import lm_eval.evaluator
    import torch.utils.collect_env

    calls = []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: calls.append(1) or "")
    original = lm_eval.evaluator.add_env_info
    make_fg(tiny).retention("tiny_mc", include_path=tasks_dir)
    assert calls == [] and lm_eval.evaluator.add_env_info is original  # not called, and not replaced
    lm_eval_reference(tiny["base"], tasks_dir, "tiny_mc")  # lm-eval alone still surveys it
    assert calls == [1]


def test_a_task_too_small_to_ever_pass_is_refused_before_the_candidate_runs(tiny, tasks_dir):
    records = []
    fg = make_fg(tiny, record=records.append)
    with pytest.raises(ValueError, match=r"tiny_mc has 12 items .*needs at least 34 items even when no item flips"):
        fg.assert_retained("tiny_mc", max_drop=0.1, include_path=tasks_dir, name="small")
    assert records[-1].error and "forgetguard plan" in records[-1].error
    # Under on_inconclusive: pass (or another gate) it may still pass: it runs.
    fg.assert_retained("tiny_mc", max_drop=1.0, include_path=tasks_dir, name="ok")


def test_fg_alpha_wins_over_a_checks_own_alpha(tiny):
    fg = make_fg(tiny)
    assert fg.resolved_alpha(None) == 0.05 and fg.resolved_alpha(0.1) == 0.1
    fg.alpha = 0.01  # --fg-alpha
    assert fg.resolved_alpha(0.1) == 0.01
    fg.alpha = None
    with pytest.raises(ValueError, match="alpha must be a number in"):
        fg.resolved_alpha(0.5)
