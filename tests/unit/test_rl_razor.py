"""experiments/rl_razor's reusable pieces: the task's reward, its data split, and the RL helpers.

Fast (no training): the reward on hand-picked responses, the data files against their generator,
and the shared-prompt sampling/log-prob code against a plain full forward pass on a tiny model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# The experiment's scripts import each other by module name: pyproject's `pythonpath` puts
# experiments/rl_razor on sys.path for the tests.
import newtask
import pytest

RLR = Path(__file__).resolve().parents[2] / "experiments" / "rl_razor"

DOC = {"a": 7, "b": 8, "op": "+", "answer": 15}


def _reward(text: str, doc: dict = DOC) -> float:
    return newtask.load_reward().reward(text, doc)


@pytest.mark.parametrize(
    "text",
    ["15", " 15 ", "7 + 8 = 15", "The answer is 15.", "7 + 8 = 15. So the answer is 15.", "Adding 7 and 8 gives 15!"],
)
def test_reward_accepts_short_exact_answers(text: str) -> None:
    assert _reward(text) == 1.0


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("fifteen", "no number"),
        ("16", "wrong number"),
        ("14, 15", "listing candidates: 14 is neither an operand nor the answer"),
        ("13 14 15", "listing candidates"),
        ("15 or 16", "the last number is wrong"),
        ("7 + 8 = 15 + 0", "the last number is wrong (and 0 is not allowed)"),
        ("15.5", "a decimal is another number"),
        ("7 + 8", "the answer is missing"),
        (
            "The sum of seven and eight, as anyone who has ever counted on their fingers will surely know, is 7 + 8 = 15",
            "too long (> 100 chars)",
        ),
    ],
)
def test_reward_rejects_wrong_hacked_or_long_answers(text: str, why: str) -> None:
    assert _reward(text) == 0.0, why


JSON_DOC = {"name": "Diego", "city": "Turin"}


@pytest.mark.parametrize(
    "text", ['{"city": "Turin"}', '{\n  "city": "Turin"\n}', ' {"city":"turin"} ', '```json\n{"city": "Turin"}\n```']
)
def test_json_reward_accepts_the_object_in_the_asked_shape(text: str) -> None:
    import jsontask

    assert jsontask.load_reward().reward(text, JSON_DOC) == 1.0


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Turin", "not JSON"),
        ('The city is {"city": "Turin"}', "prose before the object"),
        ('{"city": "Turin"}\nThat is the answer.', "prose after the object"),
        ('{"city": "Turin", "country": "Italy"}', "an extra key: the shape is part of the task"),
        ('{"name": "Turin"}', "the wrong key"),
        ('{"city": "Diego"}', "the person, not the city"),
        ('{"city": "Turin, Italy"}', "more than the city"),
        ('{"city": ["Turin"]}', "not a string"),
        ('["Turin"]', "not an object"),
        ('{"city": "' + "Turin" + " " * 90 + '"}', "too long (> 100 chars)"),
    ],
)
def test_json_reward_rejects_everything_else(text: str, why: str) -> None:
    import jsontask

    assert jsontask.load_reward().reward(text, JSON_DOC) == 0.0, why


def test_json_task_split_data_and_demonstrations() -> None:
    import jsontask

    heldout, train = jsontask.split()
    assert (len(heldout), len(train)) == (jsontask.N_HELDOUT, jsontask.N_PROBLEMS - jsontask.N_HELDOUT)
    ids = [d["id"] for d in heldout + train]
    assert len(set(ids)) == len(ids) and jsontask.split() == (heldout, train)
    assert not set(jsontask.CITIES) & {"Paris", "Rome", "Tokyo", "Berlin", "Madrid", "Ottawa", "Oslo"}  # no capitals
    assert newtask.read_jsonl(jsontask.TASK_DATA) == heldout
    kl = newtask.read_jsonl(jsontask.KL_PROMPTS)
    assert [r["messages"] for r in kl] == [jsontask.messages(d) for d in heldout[: jsontask.N_KL_PROMPTS]]
    assert [r["id"] for r in newtask.read_jsonl(jsontask.TRAIN_DATA)] == [d["id"] for d in train]
    reward = jsontask.load_reward().reward
    assert all(reward(jsontask.demonstration(d), d) == 1.0 for d in heldout + train)
    # The demonstrations are right but not in the base's compact style: SFT data someone else wrote.
    assert jsontask.demonstration(heldout[0]) != json.dumps({"city": heldout[0]["city"]})


def test_runs_are_named_by_task_method_rate_and_seed() -> None:
    import common

    names = [r.candidate(r.save_at[0]) for r in common.sweep(False)]
    assert names[0] == "sft-lr0.0001-s12"  # seed 0 of the first task: the names the results predate seeds with
    assert [r.candidate(12) for r in common.sweep(False, seed=2, task="json")][:1] == ["json-sft-lr0.0001-seed2-s12"]
    assert common.selected(common.sweep(False, seed=1)[0], ["sft-lr0.0001"])  # --only a config: every seed
    assert not common.selected(common.sweep(False, seed=1)[0], ["sft-lr0.0001-seed2"])
    assert common.task_module("json").TASK == "rlr_json" and common.task_module("arith").TASK == "rlr_arith"


def test_reward_is_what_lm_eval_scores() -> None:
    module = newtask.load_reward()
    assert module.process_results(DOC, ["7 + 8 = 15"]) == {"acc": 1.0}
    assert module.process_results(DOC, ["16"]) == {"acc": 0.0}


def test_operands_are_allowed_and_subtraction_has_no_sign() -> None:
    doc = {"a": 9, "b": 4, "op": "-", "answer": 5}
    assert _reward("9 - 4 = 5", doc) == 1.0
    assert _reward("-5", doc) == 1.0  # a minus sign is not part of a number (answers are >= 0)
    assert _reward("4", doc) == 0.0  # an operand alone is not the answer


def test_split_is_fixed_disjoint_and_complete() -> None:
    heldout, train = newtask.split()
    assert (len(heldout), len(train)) == (newtask.N_HELDOUT, 160)
    ids = [d["id"] for d in heldout + train]
    assert len(set(ids)) == len(ids) == len(newtask.all_problems())
    assert newtask.split() == (heldout, train)


def test_committed_data_files_match_the_generator() -> None:
    heldout, train = newtask.split()
    assert newtask.read_jsonl(newtask.TASK_DATA) == heldout
    kl = newtask.read_jsonl(newtask.KL_PROMPTS)
    assert [r["messages"] for r in kl] == [newtask.messages(d) for d in heldout[: newtask.N_KL_PROMPTS]]
    assert [r["id"] for r in newtask.read_jsonl(newtask.TRAIN_DATA)] == [d["id"] for d in train]


def test_every_demonstration_earns_the_reward() -> None:
    reward = newtask.load_reward().reward
    assert all(reward(newtask.demonstration(d), d) == 1.0 for d in newtask.all_problems())


@pytest.fixture
def policy(tiny):
    """The tiny random Llama with a LoRA adapter whose B matrices are nonzero (so it matters)."""
    import common
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["base"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32),
        LoraConfig(task_type="CAUSAL_LM", **common.LORA),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return tok, model


def _prompts(tok) -> list[list[int]]:
    import common

    # Different lengths, so left padding is exercised.
    return [
        common.make_candidates.prompt_ids(tok, [{"role": "user", "content": q}])
        for q in ("1 + 2", "What is the sum of 3 and 4?", "x")
    ]


def test_shared_prompt_logprobs_equal_a_full_forward_pass(policy) -> None:
    """The RL loss's log-probs (prompt KV cache shared by a group) and their gradients equal those of
    a plain forward pass over each prompt + response alone."""
    import common
    import torch

    tok, model = policy
    prompts = _prompts(tok)
    rolls = common.sample(model, tok, prompts, 2, 6, torch.Generator().manual_seed(0))
    responses = [r.response + ([tok.eos_token_id] if r.ended else []) for r in rolls]
    assert all(responses)
    logp, mask = common.response_logprobs(model, tok, prompts, 2, responses)
    assert mask.sum().item() == sum(map(len, responses))
    logp.sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0
    for i, resp in enumerate(responses):
        prompt = prompts[i // 2]
        logits = model(input_ids=torch.tensor([prompt + resp])).logits[0, len(prompt) - 1 : -1]
        ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(resp)[:, None])[:, 0]
        torch.testing.assert_close(logp[i, : len(resp)], ref, atol=1e-4, rtol=1e-4)
        total = total + ref.sum()
    total.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(shared[name], p.grad, atol=1e-4, rtol=1e-3)


def test_sampling_is_seeded_and_bounded(policy) -> None:
    import common
    import torch

    tok, model = policy
    prompts = _prompts(tok)
    a = common.sample(model, tok, prompts, 3, 5, torch.Generator().manual_seed(1))
    b = common.sample(model, tok, prompts, 3, 5, torch.Generator().manual_seed(1))
    assert [r.response for r in a] == [r.response for r in b]
    assert len(a) == 9 and all(len(r.response) <= 5 for r in a)
    assert all(r.ended or len(r.response) == 5 for r in a)  # a sample stops early only at EOS
    assert all(tok.eos_token_id not in r.response for r in a)  # EOS ends a sample and is not part of it


def test_committed_demo_adapters_are_the_measured_pair() -> None:
    """The README's demo candidates: portable LoRA adapters, the SFT/RL pair of common.DEMO, measured at
    equal new-task accuracy (analyze.demo_pair refuses a pair more than 0.05 apart)."""
    import json

    import analyze
    import common
    from safetensors import safe_open

    sft, rl = analyze.demo_pair(analyze.load())
    assert (sft["method"], rl["method"]) == ("sft", "rl")
    assert sft["new_task"]["accuracy"] > sft["new_task"]["base_accuracy"] + 0.1  # both learned the task
    assert rl["new_task"]["accuracy"] > rl["new_task"]["base_accuracy"] + 0.1
    for kind in ("sft", "rl"):
        folder = RLR / "adapters" / kind
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] is None  # no machine's path: the run's base is used
        assert config["r"] == common.LORA["r"] and set(config["target_modules"]) == set(common.LORA["target_modules"])
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
            assert len(list(f.keys())) == 30 * 2 * 2  # 30 layers x (q, v) x (A, B)


def test_a_nan_never_passes_the_analysis() -> None:
    import analyze
    import common
    import numpy as np

    rows = [
        {"candidate": common.DEMO["sft"], "new_task": {"accuracy": 0.77}},
        {"candidate": common.DEMO["rl"], "new_task": {"accuracy": float("nan")}},
    ]
    with pytest.raises(SystemExit, match="differs by nan"):
        analyze.demo_pair(rows)
    with pytest.raises(SystemExit, match="non-finite"):
        analyze.fit(np.array([0.1, float("nan"), 0.3]), np.array([1.0, 2.0, 3.0]))


def test_the_callbacks_committed_trajectories_agree_with_the_measured_candidates() -> None:
    # watch_training.py's KL at the saved steps against the KL measured on the saved candidates
    # afterwards (retrained from the same seed, another process: equal to float rounding).
    import common
    import watch_training

    runs = [r for r in common.SWEEP if (watch_training.TRAJECTORIES / f"{r.name}.done.json").exists()]
    assert {r.name for r in runs} >= {"sft-lr0.002", "rl-lr0.0005"}, "the demo pair's runs are committed"
    rows = watch_training.compare(runs)
    assert len(rows) == 2 * len(runs)
    assert all(row["rel_diff"] < 1e-5 for row in rows), rows
    for run in runs:  # every evaluation recorded a finite value within or over the suite's budget
        lines, meta = watch_training.load(run)
        assert lines[0]["step"] == 0 and lines[0]["checks"]["arith-kl"]["value"] == 0.0  # LoRA starts at B = 0
        assert all(e["within_budget"] == (e["checks"]["arith-kl"]["value"] <= 0.66) for e in lines)
        assert meta["train_steps"] == max(run.save_at)


def test_the_hierarchical_bootstrap_resamples_configs_then_seeds_keeping_checkpoints_together() -> None:
    """transfer.py's CI: configurations resampled within each task, then seeds within each configuration,
    each seed with all its checkpoints -- never a checkpoint alone, never a task missing."""
    import transfer

    rows = [
        {"task": t, "config": f"{t}/{m}", "seed": s, "step": k, "id": f"{t}/{m}/{s}/{k}"}
        for t in ("arith", "json") for m in ("sft", "rl") for s in (0, 1, 2) for k in (1, 2)
    ]  # fmt: skip
    seen: list[list[dict]] = []

    def stat(sample: list[dict]) -> float:
        seen.append(sample)
        return float(len(sample))

    lo, hi = transfer.hierarchical_boot(rows, stat, n_boot=200)
    assert lo == hi == len(rows)  # every draw has as many configs, seeds and checkpoints as the data
    for sample in seen:
        assert {r["task"] for r in sample} == {"arith", "json"}
        units: dict[tuple, list[int]] = {}
        for r in sample:
            units.setdefault((r["config"], r["seed"]), []).append(r["step"])
        assert all(steps.count(1) == steps.count(2) for steps in units.values())  # a seed's checkpoints together
    # Draws differ: some repeat a configuration, so some configuration is missing from some draw.
    assert any(len({r["config"] for r in s}) < 4 for s in seen)


def test_the_coverage_interval_is_clopper_pearson() -> None:
    """transfer.py's interval on an observed coverage: scipy's exact binomial interval, and the closed
    forms at the edges (all held: lower end (alpha/2)^(1/n); none held: upper end 1 - (alpha/2)^(1/n))."""
    import transfer
    from scipy.stats import binomtest

    for held, n in [(26, 30), (4, 10), (1, 7), (29, 30)]:
        ref = binomtest(held, n).proportion_ci(0.95, method="exact")
        assert transfer.coverage_ci(held, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert transfer.coverage_ci(10, 10) == pytest.approx((0.025**0.1, 1.0), abs=1e-12)
    assert transfer.coverage_ci(0, 10) == pytest.approx((0.0, 1 - 0.025**0.1), abs=1e-12)
    assert all(math.isnan(x) for x in transfer.coverage_ci(0, 0))  # nothing forecast: no coverage, not 0 or 1


def test_a_run_counts_as_measured_only_when_every_checkpoint_has_results(tmp_path: Path) -> None:
    """train.py --unmeasured-only (run.sh --transfer on a fresh clone) skips a run only when each of its
    candidates has results/<name>.json -- one missing checkpoint means the run is trained again."""
    import common

    run = next(r for r in common.sweep(False, 2, "json") if r.method == "rl")
    names = [run.candidate(s) for s in run.save_at]
    assert len(names) == 2 and all("json-" in n and "-seed2-" in n for n in names)
    assert not common.run_measured(run, tmp_path)
    (tmp_path / f"{names[0]}.json").write_text("{}")
    assert not common.run_measured(run, tmp_path)
    (tmp_path / f"{names[1]}.json").write_text("{}")
    assert common.run_measured(run, tmp_path)
    # the committed sweep: every run of the three arithmetic seeds and the two JSON seeds is measured
    measured = common.results_dir(False)
    runs = [r for seed in (0, 1, 2) for r in common.sweep(False, seed, "arith")]
    runs += [r for seed in (0, 1) for r in common.sweep(False, seed, "json")]
    assert len(runs) == 25 and all(common.run_measured(r, measured) for r in runs)


def test_a_broken_result_file_is_refused_by_name_not_dropped_from_a_fit(tmp_path: Path, monkeypatch) -> None:
    """An empty, truncated or NaN-holding results/*.json stops the analysis with its path and the fix,
    instead of a JSONDecodeError traceback or a NaN that R^2 would silently leave out."""
    import common

    good = json.loads(next(common.results_dir(False).glob("json-sft-*-s12.json")).read_text())
    assert common.read_result(next(common.results_dir(False).glob("json-sft-*-s12.json")))["candidate"]
    cases = {
        "empty": "",
        "truncated": json.dumps(good)[:200],
        "nan-kl": json.dumps({**good, "kl_forward": {**good["kl_forward"], "per_token": float("nan")}}),
        "inf-drop": json.dumps({**good, "probes": {**good["probes"], "fg_code_ppl": {
            **good["probes"]["fg_code_ppl"], "drop": float("inf")}}}),
        "no-drift": json.dumps({k: v for k, v in good.items() if k != "drift"}),
    }  # fmt: skip
    for name, text in cases.items():
        path = tmp_path / f"{name}-s1.json"
        path.write_text(text)
        with pytest.raises(SystemExit, match=rf"{name}-s1\.json.*run evaluate\.py again"):
            common.read_result(path)
    monkeypatch.setattr(common, "results_dir", lambda quick=False: tmp_path)
    with pytest.raises(SystemExit, match=r"empty-s1\.json"):  # every reader goes through measured()
        common.measured(task="json", seeds=None)
