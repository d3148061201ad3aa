"""The fault matrix, through the API: a broken model never passes a check, in any order of checks.

Each case runs the three kinds of check on one (base, candidate) pair in one
order, with budgets no real model could exceed, so the only way to pass is
to measure a broken model. Every check must error; the first names the
fault, every later one repeats it and names the check that found it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil

import numpy as np
import pytest
from lmeval_tasks import write_tasks

from pytest_forgetguard.cache import ResultCache
from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.errors import (
    CheckFailed,
    ForgetguardError,
    ForgetguardWarning,
    IncompatibleModelsError,
    ModelLoadError,
    NonFiniteError,
    PromptFileError,
    TokenizerMismatchError,
)
from pytest_forgetguard.lmeval import _reduce, invalid_task_run
from pytest_forgetguard.models import ModelStore

ITEMS = [
    {"prompt": "The for statement", "response": " executes the suite once for each item."},
    {"prompt": "A class definition", "response": " defines a class object."},
]
KINDS = ("kl", "retention", "drift")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("faults") / "tasks")


def run_check(fg: Forgetguard, kind: str, tasks) -> None:
    """One check with a budget nothing finite exceeds (drift: relative L2 of 1e30)."""
    if kind == "kl":
        fg.assert_kl_budget(ITEMS, budget=1e9, sample_from="dataset", name="kl")
    elif kind == "retention":
        fg.assert_retained("tiny_mc", include_path=tasks, max_drop=1.0, gate="significant", name="retention")
    else:
        fg.assert_drift(max_relative_l2=1e30, name="drift")


def pair(paths: dict, base: str, cand: str, **store_options) -> tuple[Forgetguard, list]:
    store = ModelStore(device="cpu", dtype="float32", **store_options)
    b = store.get(str(paths[base]), role="base")
    records: list = []
    return Forgetguard(b, store.get(str(paths[cand]), base=b), record=records.append), records


FAULTS = [
    # (broken role, base, candidate, what the first error says)
    ("candidate", "base", "nan", r"has 1 NaN/inf value"),
    ("candidate", "base", "overflow", r"gives NaN/inf logits on a plain input"),
    ("candidate", "base", "nan_lora", r"lora_B.*has 1 NaN/inf value"),
    ("candidate", "base", "overflow_lora", r"gives NaN/inf logits on a plain input"),
    ("base", "nan", "candidate", r"has 1 NaN/inf value"),
    ("base", "overflow", "candidate", r"gives NaN/inf logits on a plain input"),
]


@pytest.mark.parametrize("order", list(itertools.permutations(KINDS)), ids="-".join)
@pytest.mark.parametrize(
    "broken, base, cand, first_error", FAULTS, ids=[f[2] if f[0] == "candidate" else "base-" + f[1] for f in FAULTS]
)
def test_a_broken_model_errors_in_every_check_in_every_order(
    tiny, faulty, tasks, order, broken, base, cand, first_error
):
    fg, records = pair({**tiny, **faulty}, base, cand)
    for kind in order:
        with pytest.raises(NonFiniteError) as info:
            run_check(fg, kind, tasks)
        assert not isinstance(info.value, CheckFailed)
    assert [r.name for r in records] == list(order)
    assert all(r.error is not None and not r.passed and r.verdict == "ERROR" for r in records)
    first, *later = records
    assert re.search(first_error, first.error), first.error
    for rec in later:
        # The same error again, naming the check that found it: the model was never used after it failed.
        assert re.search(first_error, rec.error), rec.error
        assert f"failed in check {order[0]!r}; a model that failed a check is never used again" in rec.error


@pytest.mark.slow  # runs lm-eval
@pytest.mark.parametrize("order", list(itertools.permutations(KINDS)), ids="-".join)
def test_a_model_that_breaks_on_some_inputs_is_unusable_once_found(tiny, faulty, tasks, order):
    """Finite outputs on a plain input, NaN on the KL prompts. A check that ran before the fault showed
    measured finite numbers; the check that finds it errors; every check after that errors, so the run
    fails. (Its plain-input logits are so extreme that the load's degenerate-output check already refuses
    it: then the first check finds it, with that reason.)"""
    fg, records = pair({**tiny, **faulty}, "base", "unstable_lora")
    for kind in order:
        try:
            run_check(fg, kind, tasks)
        except (ForgetguardError, CheckFailed):
            pass
    by_name = {r.name: r for r in records}
    assert "NaN/inf" in by_name["kl"].error or "is degenerate" in by_name["kl"].error
    found = next(i for i, r in enumerate(records) if r.error)
    for rec in records[:found]:
        assert rec.error is None and math.isfinite(rec.value)  # measured on finite outputs (drift: a real failure)
    for rec in records[found + 1 :]:
        assert rec.verdict == "ERROR" and f"failed in check {records[found].name!r}" in rec.error
    assert not all(r.passed for r in records)


def test_an_unusable_model_keeps_no_module(tiny):
    fg, _ = pair(tiny, "base", "nan")
    with pytest.raises(NonFiniteError):
        fg.candidate.load()
    assert not fg.candidate.loaded and fg.candidate.failure is not None
    for use in (lambda: fg.candidate.model, lambda: fg.candidate.tokenizer, lambda: fg.candidate.active().__enter__()):
        with pytest.raises(NonFiniteError, match="failed in loading"):
            use()


def test_a_base_that_fails_makes_its_adapters_unusable(tiny, faulty):
    """A PEFT candidate runs on its base's weights: when the base is found broken later, so is the candidate."""
    store = ModelStore(device="cpu", dtype="float32")
    base = store.get(str(tiny["base"]), role="base")
    cand = store.get(str(tiny["lora"]), base=base)
    cand.load()
    base.fail(NonFiniteError("NaN hidden states found by a later check"))
    with pytest.raises(NonFiniteError, match="NaN hidden states found by a later check"):
        cand.load()


def test_nan_logits_that_reach_lm_eval_are_an_error_not_a_score(tiny, tasks):
    """Without the load-time checks (check_weights=False) the NaN model reaches lm-eval, whose argmax of
    NaN logits would give a finite accuracy; the forward hook refuses it and the model is unusable after."""
    fg, records = pair(tiny, "base", "nan", check_weights=False)
    with pytest.raises(NonFiniteError, match="produced NaN/inf logits under lm-eval"):
        run_check(fg, "retention", tasks)
    with pytest.raises(NonFiniteError, match="failed in check 'retention'"):
        run_check(fg, "drift", tasks)
    assert [r.verdict for r in records] == ["ERROR", "ERROR"]


def test_nan_logits_in_kl_make_the_model_unusable(tiny, tasks):
    fg, records = pair(tiny, "base", "nan", check_weights=False)
    with pytest.raises(NonFiniteError, match=r"KL is NaN/inf at prompt \d+, response token \d+: candidate"):
        run_check(fg, "kl", tasks)
    with pytest.raises(NonFiniteError, match="failed in check 'kl'"):
        run_check(fg, "retention", tasks)


@pytest.mark.parametrize(
    "field, value",
    [
        ("acc", math.nan),
        ("acc", math.inf),
        ("resps", [[[math.nan, False]]]),
        ("filtered_resps", [[math.inf, True]]),
    ],
)
def test_non_finite_per_item_numbers_are_an_error(field, value):
    class Task:
        def aggregation(self):
            return {"acc": np.mean}

        class config:
            output_type = "multiple_choice"

    sample = {"doc_id": 0, "doc_hash": "h", "filter": "none", "acc": 1.0, "resps": [[[-1.0, False]]],
              "filtered_resps": [[-1.0, False]], "arguments": [], "target": 0}  # fmt: skip
    sample[field] = value
    res = {"samples": {"t": [sample]}, "higher_is_better": {"t": {"acc": True}}, "results": {"t": {}}}
    with pytest.raises(NonFiniteError, match="task 't', item 0"):
        _reduce(res, {"t": Task()}, label="candidate 'x'")
    # A log-likelihood of -inf (a token the model rules out) is a number, not a fault.
    sample.update({"acc": 0.0, "resps": [[[-math.inf, False]]], "filtered_resps": [[-math.inf, False]]})
    assert _reduce(res, {"t": Task()})["t"].samples[0]["metrics"] == {"acc": 0.0}


def test_tokenizer_mismatch_makes_the_candidate_unusable(tiny, faulty, tasks):
    fg, records = pair({**tiny, **faulty}, "base", "swapped_tokens")
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ at token id"):
        run_check(fg, "kl", tasks)
    with pytest.raises(TokenizerMismatchError, match="failed in check 'kl'"):
        run_check(fg, "drift", tasks)


def test_a_vocabulary_size_mismatch_is_an_option_not_a_fault(tiny):
    """Different sizes with the same tokens: refused without the option, compared with it (not poisoned)."""
    fg, _ = pair(tiny, "base", "bigvocab")
    with pytest.raises(IncompatibleModelsError, match="vocabulary sizes differ"):
        fg.kl(ITEMS, sample_from="dataset")
    result = fg.kl(ITEMS, sample_from="dataset", allow_vocab_mismatch=True)
    assert math.isfinite(result.value)


def test_drift_between_different_tokenizers_warns(tiny, faulty, tasks):
    """Same weights, two token ids swapped in the tokenizer: drift is 0 and passes, with a warning saying
    the two models do not read text the same way; a KL check of the pair is an error."""
    fg, records = pair({**tiny, **faulty}, "base", "swapped_tokens")
    with pytest.warns(ForgetguardWarning, match="tokenizers differ at token id .* the weights were compared"):
        run_check(fg, "drift", tasks)
    assert records[0].passed and "tokenizers differ" in records[0].details["warnings"][0]
    with pytest.raises(TokenizerMismatchError):
        run_check(fg, "kl", tasks)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("truncated", r"could not load model .*truncated"),
        ("bad_config", r"could not load .*bad_config"),
        (
            "pickle_lora",
            r"PEFT adapter directory .* has no .safetensors weights\. It has pickle weights \(adapter_model\.bin\)",
        ),
    ],
)
def test_bad_model_files_are_a_clear_load_error(tiny, faulty, tasks, spec, message):
    fg, records = pair({**tiny, **faulty}, "base", spec)
    with pytest.raises(ModelLoadError, match=message):
        run_check(fg, "kl", tasks)
    with pytest.raises(ModelLoadError, match="failed in check 'kl'"):
        run_check(fg, "drift", tasks)


def test_remote_code_never_runs_without_the_flag(tiny, faulty):
    fg, _ = pair({**tiny, **faulty}, "base", "remote_code")
    with pytest.raises(ModelLoadError) as info:
        fg.drift()
    assert "--fg-trust-remote-code" in str(info.value) and "trust_remote_code=True" not in str(info.value)
    assert not (faulty["remote_code"] / "CODE_RAN").exists()


def test_an_adapter_that_changes_nothing_is_an_error_on_every_check(tiny, faulty, tasks):
    fg, records = pair({**tiny, **faulty}, "base", "zero_lora")
    for kind in ("kl", "drift"):
        with pytest.raises(ModelLoadError, match="changes nothing: every LoRA B matrix is zero"):
            run_check(fg, kind, tasks)
    assert len(records) == 2 and all(r.error and not r.passed for r in records)


def test_an_adapter_whose_keys_match_no_module_is_an_error_naming_the_first(tiny, tmp_path, tasks):
    """PEFT loads such an adapter without a word: its LoRA stays at init and the candidate is the base."""
    from builders import edit_adapter
    from safetensors.torch import load_file, save_file

    moved = edit_adapter(tiny["lora"], tmp_path / "moved", lambda n, t: t)
    weights = moved / "adapter_model.safetensors"
    save_file({k.replace("layers.", "blocks."): v for k, v in load_file(weights).items()}, weights)
    fg, records = pair({**tiny, "moved": moved}, "base", "moved")
    with pytest.raises(ModelLoadError, match=r"applies nothing: \d+ of its \d+ tensors match no module of the base "
                                             r"\(first: 'base_model.model.model.blocks.0"):  # fmt: skip
        run_check(fg, "kl", tasks)
    with pytest.raises(ModelLoadError, match="applies nothing"):  # unusable for every later check
        run_check(fg, "drift", tasks)


def test_an_adapter_whose_target_modules_match_nothing_is_an_error_naming_them(tiny, tmp_path, tasks):
    from builders import edit_adapter

    stray = edit_adapter(tiny["lora"], tmp_path / "stray", lambda n, t: t)
    config = json.loads((stray / "adapter_config.json").read_text())
    (stray / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["attn_qkv"]}))
    fg, _ = pair({**tiny, "stray": stray}, "base", "stray")
    for kind in ("kl", "drift"):  # the first check finds it; every later one errs with it
        with pytest.raises(ModelLoadError, match=r"PEFT adapter .*stray.*Target modules \{'attn_qkv'\} not found"):
            run_check(fg, kind, tasks)


def test_an_over_long_prompt_is_an_error_before_any_scoring(tiny):
    fg, _ = pair(tiny, "base", "candidate")
    long = {"prompt": "word " * 600, "response": " end"}  # the tiny models read 512 positions
    with pytest.raises(
        PromptFileError,
        match=r"prompt 1 \(prompts: item 1\) is \d+ tokens, \+ \d+ response tokens = \d+, more than the context window of base .* \(512 tokens\)",
    ):
        fg.kl([ITEMS[0], long], sample_from="dataset")
    with pytest.raises(PromptFileError, match=r"or lower max_new_tokens"):
        fg.kl([{"prompt": "word " * 500}], max_new_tokens=64)


@pytest.mark.slow  # runs lm-eval
@pytest.mark.parametrize(
    "tamper, why",
    [
        (lambda p: {k: v for k, v in p.items() if k != "samples"}, "expected the fields"),
        (lambda p: {**p, "task": "other"}, "it holds task 'other'"),
        (lambda p: {**p, "samples": []}, "no items"),
        (lambda p: {**p, "samples": [{**p["samples"][0], "metrics": {"acc": "1"}}]}, "not a number"),
        (lambda p: {**p, "samples": [{**p["samples"][0], "doc_id": "0"}]}, "no integer doc_id"),
        (lambda p: {**p, "higher_is_better": {"acc": "yes"}}, "higher_is_better"),
        (lambda p: [p], "expected the fields"),
    ],
)
def test_a_poisoned_retention_cache_entry_is_recomputed_and_replaced(tiny, tasks, tmp_path, tamper, why):
    root = tmp_path / "cache"
    fg, _ = pair(tiny, "base", "candidate")
    fg.cache = ResultCache(root)
    clean = fg.retention("tiny_mc", include_path=tasks)
    [entry] = list((root / "retention-base").rglob("*.json"))
    data = json.loads(entry.read_text())
    data["payload"] = tamper(data["payload"])
    entry.write_text(json.dumps(data))
    assert invalid_task_run(data["payload"], "tiny_mc") is not None
    fg2, _ = pair(tiny, "base", "candidate")
    fg2.cache = ResultCache(root, warn=(seen := []).append)
    again = fg2.retention("tiny_mc", include_path=tasks)
    assert (again.base_value, again.candidate_value, again.n) == (clean.base_value, clean.candidate_value, clean.n)
    assert len(seen) == 1 and why in seen[0] and "recomputing" in seen[0]
    # Replaced: a third run reads the entry back without a word.
    assert invalid_task_run(json.loads(entry.read_text())["payload"], "tiny_mc") is None
    fg3, _ = pair(tiny, "base", "candidate")
    fg3.cache = ResultCache(root, warn=(quiet := []).append)
    fg3.retention("tiny_mc", include_path=tasks)
    assert quiet == [] and fg3.cache.hits == 1


def test_every_cache_read_in_the_package_is_validated():
    """A cache namespace added later must validate its entries too: every ``cache.load`` passes ``validate``."""
    import ast
    import pathlib

    import pytest_forgetguard

    unvalidated = []
    for path in pathlib.Path(pytest_forgetguard.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = ast.unparse(node.func.value)
                if "cache" in owner and not any(k.arg == "validate" for k in node.keywords) and len(node.args) < 3:
                    unvalidated.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert unvalidated == []


def test_retention_limit_must_be_a_count_or_a_fraction(tiny, tasks):
    fg, _ = pair(tiny, "base", "candidate")
    for bad in (1.5, 0, -1, True, "2"):
        with pytest.raises(ValueError, match="whole number .* or a fraction in \\(0, 1\\]"):
            fg.retention("tiny_mc", include_path=tasks, limit=bad)


@pytest.mark.parametrize(
    "edit, why",
    [
        ("model.norm.weight", "its logits are equal for every token at every position"),
        ("model.embed_tokens.weight", "the same at every position: it ignores its input"),
    ],
)
def test_a_degenerate_model_is_an_error_before_any_check_can_pass(tiny, tmp_path, tasks, edit, why):
    """A collapsed model (a zeroed final norm: flat logits; every token embedded alike: the input ignored)
    would be scored by lm-eval like any other: it is refused when it loads, with what was constant."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["candidate"])
    with torch.no_grad():
        weight = dict(model.named_parameters())[edit]
        weight.copy_(torch.zeros_like(weight) if edit.endswith("norm.weight") else weight[0].expand_as(weight))
    model.save_pretrained(tmp_path / "collapsed", safe_serialization=True)
    for f in tiny["candidate"].glob("tokenizer*"):
        shutil.copy(f, tmp_path / "collapsed")
    fg, records = pair({**tiny, "collapsed": tmp_path / "collapsed"}, "base", "collapsed")
    for kind in ("retention", "drift"):  # a drift check never looks at outputs: refused all the same
        with pytest.raises(ModelLoadError, match=f"is degenerate: .*{why}"):
            run_check(fg, kind, tasks)
    assert [r.passed for r in records] == [False, False]


def test_degenerate_logits_are_named():
    import torch

    from pytest_forgetguard.models.loaders import degenerate_logits

    one_hot = torch.full((5, 8), -50.0)
    one_hot[:, 3] = 50.0
    assert "all probability on one token (3, id 3)" in degenerate_logits(one_hot)
    same = torch.randn(1, 8).expand(5, 8)
    assert "same at every position" in degenerate_logits(same)
    ruled_out = torch.randn(5, 8)
    ruled_out[:, 0] = float("-inf")
    assert degenerate_logits(ruled_out) is None


# -- messages name the file, the value and the fix ------------------------------------------------------


def test_a_vocabulary_that_does_not_fit_is_named_with_both_sizes_and_the_fix(tiny, tmp_path, tasks):
    """transformers says "look at the above report" and its report is silenced: the error says it all itself."""
    from builders import resized_vocab_lora

    resized = tmp_path / "resized"  # weights of a 392-token vocabulary, the base's config.json (384)
    shutil.copytree(tiny["bigvocab"], resized)
    shutil.copy(tiny["base"] / "config.json", resized / "config.json")
    adapter = resized_vocab_lora(tiny["bigvocab"], tiny["base"], tmp_path / "adapter")
    fg, _ = pair({**tiny, "resized": resized}, "base", "resized")
    with pytest.raises(ModelLoadError) as info:
        run_check(fg, "kl", tasks)
    assert re.search(
        r"could not load model '.*resized': its weights do not fit its config.json: model.safetensors holds "
        r"lm_head.weight and model.embed_tokens.weight with 392 token rows, config.json says vocab_size 384\. .*"
        r'set "vocab_size": 392 in .*resized/config.json',
        str(info.value),
    ), str(info.value)
    fg, _ = pair({**tiny, "adapter": adapter}, "base", "adapter")
    with pytest.raises(ModelLoadError) as info:
        run_check(fg, "kl", tasks)
    assert re.search(
        r"could not load PEFT adapter '.*adapter': it was saved for a vocabulary of 392 tokens "
        r"\(base_model.model.lm_head.modules_to_save.weight\), its base '.*base' has 384\. .*pass that model",
        str(info.value),
    ), str(info.value)
    assert "above report" not in str(info.value)


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda b: b[: len(b) // 2], r"it is truncated: its header says the tensors need [\d,]+ bytes after it, "
                                     r"the file holds [\d,]+"),
        (lambda b: b"<html>Rate limit exceeded</html>" * 4, r"it is not a safetensors file, or its start is damaged: "
                                                             r"its first 8 bytes give a header longer than the file "
                                                             r"\(128 bytes\)"),
        (lambda b: b"", r"it is empty \(0 bytes\)"),
    ],
    ids=["truncated", "html-page", "empty"],
)  # fmt: skip
def test_unreadable_weights_are_one_load_error_naming_the_file(tiny, tmp_path, tasks, damage, why):
    broken = tmp_path / "broken"
    shutil.copytree(tiny["base"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    fg, _ = pair({**tiny, "broken": broken}, "base", "broken")
    with pytest.raises(ModelLoadError) as info:
        run_check(fg, "drift", tasks)
    assert re.search(
        rf"could not load model '.*broken': weights file .*broken/model.safetensors cannot be read: {why}\. "
        r"Download it again, or save the model again with save_pretrained\(safe_serialization=True\)",
        str(info.value),
    ), str(info.value)
    # No chained safetensors/transformers traceback behind it (pytest prints every link of a chain).
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_directory_given_as_the_prompt_file_says_so(tiny, tmp_path):
    from pytest_forgetguard.errors import SuiteError
    from pytest_forgetguard.suite import load_suite

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps(ITEMS[0]) + "\n")
    fg, _ = pair(tiny, "base", "candidate")
    with pytest.raises(PromptFileError) as info:
        fg.kl(str(data), sample_from="dataset")
    assert str(info.value) == (
        f'prompt file {data} is a directory; a JSONL file is expected (one {{"prompt": ...}} or '
        '{"messages": [...]} per line); it holds train.jsonl: name one'
    )
    suite = tmp_path / "forgetguard.yaml"
    suite.write_text("checks:\n  - name: k\n    kl: {prompts: data, budget: 1}\n")
    with pytest.raises(SuiteError, match=rf"forgetguard.yaml:3: check 'k': kl.prompts: {data} is a directory; a "
                                         r"JSONL file is expected .* it holds train.jsonl: name one"):  # fmt: skip
        load_suite(suite)


def test_calibrate_names_the_base_of_each_calibration(tmp_path, capsys):
    from pytest_forgetguard.cli import main
    from pytest_forgetguard.history import History, Run
    from pytest_forgetguard.records import CheckRecord

    history = History(tmp_path / "h.sqlite")
    base = {"spec": "models/smollm2-base", "fingerprint": "3f2a9c1d" + "0" * 8}
    for i, (kl, drop) in enumerate([(0.1, 0.01), (0.2, 0.02), (0.4, 0.05)]):
        cand = {"spec": f"runs/ckpt-{i}", "fingerprint": f"c{i}" * 8}
        common = {"candidate": cand["spec"], "base_info": base, "candidate_info": cand, "passed": True}
        history.add_run(Run.now(), [
            CheckRecord(name="task-kl", kind="kl", metric="kl_forward_mean", value=kl, budget=1.0,
                        details={"series": "kl-s"}, **common),
            CheckRecord(name="code", kind="retention", metric="acc", value=0.5 - drop, budget=0.1,
                        details={"series": "ret-s", "drop": drop, "decided_by": "measurement"}, **common),
        ])  # fmt: skip
    assert main(["calibrate", "--history", str(history.path), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["base"], row["base_fingerprint"]) == ("models/smollm2-base", base["fingerprint"])
    assert main(["calibrate", "--history", str(history.path)]) == 0
    header, _, line = capsys.readouterr().out.splitlines()[:3]
    assert header.split()[:5] == ["kl", "check", "retention", "check", "base"]
    assert line.split()[:4] == ["task-kl", "code", "smollm2-base", "(3f2a9c1d)"]


def test_models_saved_in_different_dtypes_are_named_with_the_dtype_to_compare_in(tiny, tmp_path, tasks):
    """The base's float32 weights and a bfloat16 copy: loaded as float32 they "drift" by rounding alone, with a
    warning saying so; loaded as bfloat16 (the warning's advice) they are the same weights."""
    from builders import cast_copy

    models = {**tiny, "bf16": cast_copy(tiny["base"], tmp_path / "bf16", "bfloat16")}
    fg, records = pair(models, "base", "bf16")
    with pytest.warns(ForgetguardWarning) as seen:
        result = fg.assert_drift(max_relative_l2=1e30, name="drift")
    expected = (
        f"base '{tiny['base']}' is float32, candidate '{models['bf16']}' is bfloat16 (as saved; both loaded as "
        "float32): numeric precision alone moves weights and logits; compare in one dtype (--fg-dtype bfloat16)"
    )
    assert [str(w.message) for w in seen] == [expected] and records[0].details["warnings"] == [expected]
    assert result.relative_l2 > 0
    store = ModelStore(device="cpu", dtype="bfloat16")
    base = store.get(str(tiny["base"]), role="base")
    assert Forgetguard(base, store.get(str(models["bf16"]), base=base)).drift().relative_l2 == 0.0  # no warning


@pytest.mark.parametrize(
    "option, message",
    [
        ("temperature: 1.0e-320", r"kl.temperature: must be >= 0.01, got 1e-320 \(the range is \[0.01, 100\]\)"),
        ("temperature: 1e-320", r"kl.temperature: must be >= 0.01, got 1e-320 \(the range is \[0.01, 100\]\)"),
        ("temperature: 0", r"kl.temperature: must be >= 0.01, got 0 \(the range is \[0.01, 100\]\)"),
        ("temperature: 1000", r"kl.temperature: must be <= 100, got 1000 \(the range is \[0.01, 100\]\)"),
        ("max_new_tokens: 64000", r"kl.max_new_tokens: must be <= 8192, got 64000 \(the range is \[1, 8192\]\)"),
    ],
)
def test_sampling_options_out_of_range_are_a_collection_error_naming_key_value_and_range(tmp_path, option, message):
    import jsonschema
    import yaml

    from pytest_forgetguard.errors import SuiteError
    from pytest_forgetguard.schema import json_schema
    from pytest_forgetguard.suite import load_suite

    (tmp_path / "p.jsonl").write_text(json.dumps(ITEMS[0]) + "\n")
    suite = tmp_path / "forgetguard.yaml"
    suite.write_text(f"checks:\n  - name: k\n    kl:\n      prompts: p.jsonl\n      budget: 1\n      {option}\n")
    with pytest.raises(SuiteError, match=rf"forgetguard.yaml:6: check 'k': {message}"):
        load_suite(suite)
    # The shipped JSON Schema refuses it too (PyYAML reads 1e-320 as a string: its pattern must refuse that).
    assert list(jsonschema.Draft202012Validator(json_schema()).iter_errors(yaml.safe_load(suite.read_text())))


def test_sampling_options_of_the_api_have_the_suites_ranges(tiny):
    fg, _ = pair(tiny, "base", "candidate")
    with pytest.raises(ValueError, match=r"temperature must be a finite number in \[0.01, 100\], got 1e-320"):
        fg.kl(ITEMS, temperature=1e-320)
    with pytest.raises(ValueError, match=r"max_new_tokens must be a positive integer, at most 8192, got 64000"):
        fg.kl(ITEMS, max_new_tokens=64000)


def test_a_large_prompt_set_warns_with_its_cost_before_any_forward_pass(tiny):
    import warnings

    from pytest_forgetguard.checks.retention import large_task
    from pytest_forgetguard.lmeval import TaskRun

    items = [{"prompt": f"Item {i}", "response": " ok"} for i in range(5001)]
    fg, _ = pair(tiny, "base", "candidate")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForgetguardWarning)  # the warning stops the check: nothing was scored
        with pytest.raises(ForgetguardWarning, match=r"^KL check over 5,001 prompts: about [\d,]+ tokens through "
                           r"each of base and candidate, in 626 forward passes of each \(batch_size 8\)\. Cut it "
                           r"with limit \(suite: `limit: 1000`\) or use fewer prompts$"):  # fmt: skip
            fg.kl(items, sample_from="dataset")
        assert fg.kl(items, sample_from="dataset", limit=50).n_prompts == 50  # what the warning advises: no warning
    samples = [{"doc_id": i} for i in range(6000)]
    task = TaskRun("big", samples, {"acc": True}, {"acc": "mean"}, {})
    assert "retention check on big: 6,000 items (after limit)" in (large_task(["big"], {"big": task}) or "")
    assert large_task(["big"], {"big": TaskRun("big", samples[:5000], {}, {}, {})}) is None
