"""The training callback: the gate's KL and drift budgets inside a real ``transformers.Trainer`` run.

Tiny models trained a few steps on CPU: the values land in the trainer's logs, a budget stops
training at the right step, the trainer's random state is untouched, and the last numbers equal
what ``pytest --forgetguard`` reports for the saved model. The events need nothing but the
arguments the trainer passes them (no stack walking), and a process other than the main one
writes nothing.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import DOC_PAIRS, forgetguard_args, prompts_jsonl
from lmeval_tasks import write_tasks

from pytest_forgetguard.errors import ForgetguardError, ForgetguardWarning, SuiteError
from pytest_forgetguard.integrations import transformers as integration
from pytest_forgetguard.integrations.transformers import ForgetguardCallback

SUITE = """
checks:
  - name: task-kl
    kl: {{prompts: prompts.jsonl, max_new_tokens: 8, budget: {budget}}}
  - name: weights
    drift: {{max_relative_l2: 10.0}}
  - name: keeps-mc
    retention: {{task: tiny_mc, include_path: tasks, max_drop: {max_drop}}}
"""


@pytest.fixture
def suite(tmp_path):
    """Write the suite (with a KL budget) and its prompts; returns a function budget -> suite path."""
    (tmp_path / "prompts.jsonl").write_text(prompts_jsonl())
    write_tasks(tmp_path / "tasks")

    def write(budget: float = 100.0, max_drop: float = 0.5) -> Path:
        path = tmp_path / "forgetguard.yaml"
        path.write_text(SUITE.format(budget=budget, max_drop=max_drop))
        return path

    return write


class _Texts:
    """A tiny causal-LM dataset: the prompts' reference continuations, tokenized, labels = inputs."""

    def __init__(self, tokenizer, n: int = 32, rotate: int = 0) -> None:
        texts = [p + r for p, r in DOC_PAIRS] * (n // len(DOC_PAIRS))
        texts = texts[rotate:] + texts[:rotate]  # other batches from the same sampler: another run
        self.items = []
        for t in texts:
            ids = tokenizer(t)["input_ids"][:16]
            self.items.append({"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _collate(batch):
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    out = {}
    for key, fill in (("input_ids", 0), ("labels", -100), ("attention_mask", 0)):
        out[key] = torch.tensor([b[key] + [fill] * (width - len(b[key])) for b in batch])
    return out


def _model(tiny, peft: bool = True):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32)
    if peft:
        from peft import LoraConfig, get_peft_model

        # Dropout draws from the global RNG every step: a callback that used it would change training.
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
        model = get_peft_model(model, config)
    return model, tok


def _train(
    tiny, tmp_path, callbacks, steps: int = 6, peft: bool = True, save_steps: int = 2, name: str = "run",
    resume: Path | None = None, rotate: int = 0, then=None,
):  # fmt: skip
    """Train; ``then(trainer)`` runs once the trainer is made, before it trains (to attach a callback)."""
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(7)  # the LoRA matrices' initialisation, then the trainer's own draws (data order, dropout)
    model, tok = _model(tiny, peft)
    args = TrainingArguments(
        output_dir=str(tmp_path / name),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        report_to=[],
        seed=7,
        use_cpu=True,
        disable_tqdm=True,
        lr_scheduler_type="constant",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Texts(tok, rotate=rotate),
        data_collator=_collate,
        processing_class=tok,
        callbacks=callbacks,
    )
    if then is not None:
        then(trainer)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return trainer


def _losses(trainer):
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


def test_values_are_logged_through_the_trainer_and_the_trajectory(tiny, tmp_path, suite):
    from transformers import TrainerCallback

    class Integration(TrainerCallback):
        """Stands where report_to's integrations (TensorBoard, W&B) stand: before user callbacks."""

        seen: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kw):
            self.seen.append(dict(logs))

    made: list[ForgetguardCallback] = []
    # The trainer given: the callback adds itself to it (after the integrations) and logs through it.
    trainer = _train(tiny, tmp_path, [Integration()],
                     then=lambda t: made.append(ForgetguardCallback(suite(), every_n_steps=2, trainer=t)))  # fmt: skip
    (watch,) = made
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert kinds.index(Integration) < kinds.index(ForgetguardCallback)
    assert watch.attach(trainer) is watch and trainer.callback_handler.callbacks.count(watch) == 1, "added once"
    assert [log["forgetguard/task-kl"] for log in Integration.seen if "forgetguard/task-kl" in log] == [
        h["forgetguard/task-kl"] for h in trainer.state.log_history if "forgetguard/task-kl" in h
    ], "every logging callback sees the values, as report_to's integrations do"
    logged = [h for h in trainer.state.log_history if "forgetguard/task-kl" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    for h in logged:
        assert h["forgetguard/task-kl"] > 0 and math.isfinite(h["forgetguard/weights"])
        assert h["forgetguard/task-kl/budget_used"] == pytest.approx(h["forgetguard/task-kl"] / 100.0)
        assert h["forgetguard/task-kl/ci_low"] <= h["forgetguard/task-kl"] <= h["forgetguard/task-kl/ci_high"]
    # The model moves away from its base as it trains.
    assert logged[0]["forgetguard/weights"] < logged[-1]["forgetguard/weights"]
    lines = [json.loads(s) for s in (tmp_path / "run" / "forgetguard_trajectory.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [2, 4, 6]
    assert lines[-1]["checks"]["task-kl"]["value"] == logged[-1]["forgetguard/task-kl"]
    assert all(e["within_budget"] and e["seconds"] > 0 for e in lines)
    assert watch.last_checkpoint_within_budget == str(tmp_path / "run" / "checkpoint-6")
    # The trainer's own loss logs are all still there (logging_steps=1).
    assert [s for s, _ in _losses(trainer)] == [1, 2, 3, 4, 5, 6]


def test_without_the_trainer_the_values_reach_its_log_history_only(tiny, tmp_path, suite):
    from transformers import TrainerCallback, TrainerControl, TrainerState

    class Integration(TrainerCallback):
        seen: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kw):
            self.seen.append(dict(logs))

    watch = ForgetguardCallback(suite(), every_n_steps=3)
    trainer = _train(tiny, tmp_path, [Integration(), watch], steps=3, save_steps=3)
    logged = [h["step"] for h in trainer.state.log_history if "forgetguard/task-kl" in h]
    assert logged == [3], "in the trainer's log_history (the contract), as when it is attached"
    assert Integration.seen and not any("forgetguard/task-kl" in log for log in Integration.seen)
    assert [s for s, _ in _losses(trainer)] == [1, 2, 3]
    with pytest.raises(TypeError, match="attach\\(\\) takes a transformers Trainer"):
        watch.attach(object())
    with pytest.raises(ForgetguardError, match="attached to another trainer"):
        watch.attach(trainer).on_train_begin(trainer.args, TrainerState(), TrainerControl(), model=trainer.model)


def test_the_callback_walks_no_stack_frames():
    source = inspect.getsource(integration)
    assert not re.search(r"\binspect\b|_getframe|currentframe|f_back|f_locals", source)


@pytest.mark.parametrize("main", [True, False], ids=["main-process", "other-process"])
def test_the_events_need_only_their_arguments_and_only_the_main_process_writes(
    tiny, tmp_path, suite, monkeypatch, main
):
    """No trainer, no callback handler, no stack frames: the events as the trainer calls them, with
    their documented arguments, on the main process and on another one (``state.is_world_process_zero``
    and ``args.should_save`` false): the same decision on both, and only the main one writes or warns."""
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    def no_frames(*args, **kwargs):
        raise AssertionError("the callback looked at the stack")

    monkeypatch.setattr(inspect, "currentframe", no_frames)

    class Args(TrainingArguments):
        should_save = property(lambda self: main)  # as the trainer sets it: the checkpoint-writing process

    args = Args(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    args.report_to = ["wandb"]  # an integration the unattached callback cannot reach: the main process says so
    state = TrainerState(max_steps=4, is_world_process_zero=main, is_local_process_zero=main)
    control = TrainerControl()
    model, tok = _model(tiny)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(0.05)  # away from its base
    event = {"model": model, "processing_class": tok, "optimizer": None, "lr_scheduler": None,
             "train_dataloader": None, "eval_dataloader": None}  # fmt: skip
    watch = ForgetguardCallback(suite(budget=1e-9), every_n_steps=2, stop_on_budget=True)
    before = sorted(tmp_path.rglob("*"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert watch.on_train_begin(args, state, control, **event) is None
        state.global_step = 2
        watch.on_step_end(args, state, control, **event)
        watch.on_save(args, state, control, **event)
        watch.on_train_end(args, state, control, **event)
    warned = [str(w.message) for w in caught if issubclass(w.category, ForgetguardWarning)]
    # Every process: the same decision, history and log.
    assert control.should_training_stop and "'task-kl' at step 2" in (watch.stopped or "")
    assert [e["step"] for e in watch.history] == [2] and not watch.history[0]["within_budget"]
    assert [h["step"] for h in state.log_history if "forgetguard/task-kl" in h] == [2]
    trajectory = tmp_path / "out" / "forgetguard_trajectory.jsonl"
    if main:
        assert _trajectory(trajectory) == watch.history
        assert len(warned) == 2 and "not to report_to's wandb" in warned[0] and "stopping training" in warned[1]
    else:
        assert sorted(tmp_path.rglob("*")) == before, "no file, no folder"
        assert warned == []


def _trajectory(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_run_has_each_step_once_with_the_values_of_the_run_that_finished(tiny, tmp_path, suite):
    first = ForgetguardCallback(suite(), every_n_steps=2)
    _train(tiny, tmp_path, [first])  # evaluations and checkpoints at steps 2, 4, 6
    path = tmp_path / "run" / "forgetguard_trajectory.jsonl"
    before = _trajectory(path)
    assert [e["step"] for e in before] == [2, 4, 6]

    # Resumed from step 2 on other batches (as if the data had changed): steps 4 and 6 are redone, differently.
    resumed = ForgetguardCallback(suite(), every_n_steps=2)
    trainer = _train(tiny, tmp_path, [resumed], resume=tmp_path / "run" / "checkpoint-2", rotate=1)
    after = _trajectory(path)
    assert [e["step"] for e in after] == [2, 4, 6], "each step once"
    assert after[0] == before[0], "the evaluation at the checkpoint's step is kept: the resumed run starts from it"
    logged = {h["step"]: h["forgetguard/task-kl"] for h in trainer.state.log_history if "forgetguard/task-kl" in h}
    assert {e["step"]: e["checks"]["task-kl"]["value"] for e in after} == logged, "the trainer's log agrees"
    assert after[1]["checks"]["task-kl"]["value"] != before[1]["checks"]["task-kl"]["value"], "the resumed run's"
    assert [e["step"] for e in resumed.history] == [2, 4, 6]
    assert resumed.last_checkpoint_within_budget == str(tmp_path / "run" / "checkpoint-6")

    # The state is read back too: a resumed run that stops names the last checkpoint within budget before it.
    strict = ForgetguardCallback(suite(budget=1e-6), every_n_steps=2, stop_on_budget=True)
    with pytest.warns(ForgetguardWarning, match=r"at step 6: .*the last step within budget was 4 \(checkpoint "):
        _train(tiny, tmp_path, [strict], resume=tmp_path / "run" / "checkpoint-4", rotate=1)
    assert [e["step"] for e in _trajectory(path)] == [2, 4, 6] and strict.last_within_budget == 4
    assert strict.last_checkpoint_within_budget == str(tmp_path / "run" / "checkpoint-4")


def test_a_hand_written_loop_resumes_without_the_half_line_of_a_killed_run(tiny, suite, tmp_path):
    model, tok = _model(tiny)
    watch = ForgetguardCallback(suite(), checks=["task-kl"])
    watch.setup(model, tok, output_dir=tmp_path)
    watch.measure(2)
    watch.measure(4)
    path = tmp_path / "forgetguard_trajectory.jsonl"
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0][:30])  # killed while it wrote a third line
    again = ForgetguardCallback(suite(), checks=["task-kl"])
    with pytest.warns(ForgetguardWarning, match=r"dropped unreadable line\(s\) 3"):
        again.setup(model, tok, output_dir=tmp_path, resume_step=2)
    assert again.history == watch.history[:1] == _trajectory(path)
    assert again.last_within_budget == 2


# One rank of a real DDP run (torchrun, two CPU processes over gloo): a LoRA fine-tune with the callback
# stopping on budget, then a hand-written loop's measure() in the same process group. Each rank reads
# its own suite and writes into its own folder, so that what rank 1 writes, and what it would decide
# alone, can be told apart from rank 0's.
DDP_WORKER = """
import json, os, sys, warnings
from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

from pytest_forgetguard.errors import ForgetguardWarning
from pytest_forgetguard.integrations.transformers import ForgetguardCallback

base, root = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])
set_seed(7)
tok = AutoTokenizer.from_pretrained(base)
config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
texts = ["The for statement executes the suite.", "A class definition defines a class."] * 16
data = [{"input_ids": ids, "labels": list(ids)} for ids in (tok(t)["input_ids"][:16] for t in texts)]


def collate(batch):
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    pad = lambda key, fill: torch.tensor([b[key] + [fill] * (width - len(b[key])) for b in batch])
    return {"input_ids": pad("input_ids", 0), "labels": pad("labels", -100)}


suite = root / f"suite-{rank}.yaml"
watch = ForgetguardCallback(suite, every_n_steps=2, stop_on_budget=True)
args = TrainingArguments(output_dir=str(root / f"out-{rank}"), max_steps=6, per_device_train_batch_size=2,
                         learning_rate=0.05, save_strategy="steps", save_steps=2, report_to=[], use_cpu=True,
                         disable_tqdm=True, seed=7)
trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, processing_class=tok,
                  callbacks=[watch])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.train()
    loop = ForgetguardCallback(suite, stop_on_budget=True, trajectory=root / f"loop-{rank}.jsonl")
    loop.setup(trainer.model, tok)
    loop.measure(100)
(root / f"result-{rank}.json").write_text(json.dumps({
    "rank": rank, "world": args.world_size, "step": trainer.state.global_step, "stopped": watch.stopped,
    "history": watch.history, "loop": [loop.stopped, loop.history],
    "warned": [str(w.message) for w in caught if issubclass(w.category, ForgetguardWarning)],
    "logged": [h["forgetguard/task-kl"] for h in trainer.state.log_history if "forgetguard/task-kl" in h],
}))
"""


@pytest.mark.slow  # torchrun: two processes that import transformers
def test_under_ddp_rank_0_writes_and_every_rank_stops_at_its_decision(tiny, tmp_path):
    (tmp_path / "prompts.jsonl").write_text(prompts_jsonl())
    # Rank 0's budget is spent at the first evaluation; rank 1's never is. Rank 1 on its own would train
    # on and wait forever for rank 0 in the next gradient all-reduce (the budgets differ only to make
    # that visible: in a real run it is a borderline value that two ranks round apart).
    for rank, budget in ((0, 1e-6), (1, 1e6)):
        (tmp_path / f"suite-{rank}.yaml").write_text(
            f"checks:\n  - name: task-kl\n    kl: {{prompts: prompts.jsonl, max_new_tokens: 8, budget: {budget}}}\n"
        )
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "worker.py"]
    proc = subprocess.run([*cmd, str(tiny["base"]), str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1))
    assert zero["world"] == one["world"] == 2
    # Both ranks stop at rank 0's decision, with rank 0's numbers in their history and logs.
    assert zero["step"] == one["step"] == 2
    assert zero["stopped"] == one["stopped"] and "'task-kl' at step 2" in zero["stopped"]
    assert zero["history"] == one["history"] and [e["step"] for e in zero["history"]] == [2]
    assert zero["logged"] == one["logged"] == [zero["history"][0]["checks"]["task-kl"]["value"]]
    # Only rank 0 writes the trajectory and warns (once per decision, not once per rank).
    assert _trajectory(tmp_path / "out-0" / "forgetguard_trajectory.jsonl") == zero["history"]
    assert not (tmp_path / "out-1" / "forgetguard_trajectory.jsonl").exists()
    assert len(zero["warned"]) == 2 and one["warned"] == []  # the trainer's stop, then the loop's
    # Outside the Trainer, torch.distributed's rank decides: the same on every rank, written by rank 0.
    assert zero["loop"] == one["loop"] and zero["loop"][0] is not None
    assert (tmp_path / "loop-0.jsonl").exists() and not (tmp_path / "loop-1.jsonl").exists()


def test_the_callback_does_not_change_training(tiny, tmp_path, suite):
    with_it = _train(tiny, tmp_path, [ForgetguardCallback(suite(), every_n_steps=1)], name="with")
    without = _train(tiny, tmp_path, [], name="without")
    assert _losses(with_it) == _losses(without)  # exactly: same RNG draws (LoRA dropout), same updates


def test_the_last_values_equal_the_gate_on_the_saved_adapter(tiny, tmp_path, suite, pytester):
    path = suite()
    watch = ForgetguardCallback(path, every_n_steps=4)
    trainer = _train(tiny, tmp_path, [watch], steps=6)
    trainer.save_model(str(tmp_path / "final"))
    last = trainer.state.log_history[-1]
    assert last["step"] == 6 and "forgetguard/task-kl" in last, "the end of training is measured"
    pytester.path.joinpath("prompts.jsonl").write_text(prompts_jsonl())
    write_tasks(pytester.path / "tasks")
    pytester.path.joinpath("forgetguard.yaml").write_text(path.read_text())
    pytester.makefile(".ini", pytest="[pytest]\n")
    result = pytester.runpytest(
        *forgetguard_args(tiny["base"], tmp_path / "final"), "-k", "task-kl or weights", "--fg-report-json=r.json"
    )
    result.assert_outcomes(passed=2)
    gate = {c["name"]: c["value"] for c in json.loads((pytester.path / "r.json").read_text())["checks"]}
    assert gate["task-kl"] == pytest.approx(last["forgetguard/task-kl"], rel=1e-6, abs=1e-9)
    assert gate["weights"] == pytest.approx(last["forgetguard/weights"], rel=1e-6, abs=1e-9)


def test_a_budget_stops_training_and_names_the_last_step_within_it(tiny, tmp_path, suite):
    free = ForgetguardCallback(suite(), every_n_steps=2)
    _train(tiny, tmp_path, [free], name="free")
    kl = [e["checks"]["task-kl"]["value"] for e in free.history]
    assert kl[0] < kl[1], kl
    budget = (kl[0] + kl[1]) / 2  # step 2 within, step 4 over
    watch = ForgetguardCallback(suite(budget), every_n_steps=2, stop_on_budget=True)
    with pytest.warns(ForgetguardWarning, match="stopping training") as caught:
        trainer = _train(tiny, tmp_path, [watch], name="stopped")
    assert trainer.state.global_step == 4
    message = str(caught[-1].message)
    assert "'task-kl' at step 4" in message and f"> budget {budget:.4g}" in message
    assert "the last step within budget was 2" in message and "checkpoint-2" in message
    assert watch.last_checkpoint_within_budget == str(tmp_path / "stopped" / "checkpoint-2")
    # Without stop_on_budget: a warning, and training goes on.
    warn_only = ForgetguardCallback(suite(budget), every_n_steps=2)
    with pytest.warns(ForgetguardWarning, match="'task-kl' at step 4: kl_forward_mean"):
        trainer = _train(tiny, tmp_path, [warn_only], name="warned")
    assert trainer.state.global_step == 6


def test_a_nan_during_training_is_never_within_budget(tiny, tmp_path, suite):
    import torch
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))

    watch = ForgetguardCallback(suite(), every_n_steps=2, stop_on_budget=True)
    with pytest.warns(ForgetguardWarning, match="could not be measured: .*NonFiniteError|could not be measured"):
        trainer = _train(tiny, tmp_path, [Poison(), watch], name="nan")
    assert trainer.state.global_step == 2
    logged = [h for h in trainer.state.log_history if "forgetguard/task-kl" in h]
    assert math.isnan(logged[-1]["forgetguard/task-kl"])
    assert not watch.history[-1]["within_budget"]
    assert watch.last_checkpoint_within_budget is None


def test_a_full_fine_tune_is_compared_with_its_base_spec(tiny, tmp_path, suite):
    watch = ForgetguardCallback(suite(), every_n_steps=3, base=str(tiny["base"]))
    trainer = _train(tiny, tmp_path, [watch], peft=False)
    logged = [h for h in trainer.state.log_history if "forgetguard/weights" in h]
    assert [h["step"] for h in logged] == [3, 6] and logged[0]["forgetguard/weights"] > 0
    assert trainer.model.training, "the train mode is restored"


def test_measure_keeps_the_train_mode_and_works_without_a_trainer(tiny, suite):
    model, tok = _model(tiny)
    model.train()
    watch = ForgetguardCallback(suite(), checks=["task-kl"], trajectory=False)
    watch.setup(model, tok)
    metrics = watch.measure(0)
    assert model.training
    assert metrics["forgetguard/task-kl"] == pytest.approx(0.0, abs=1e-9), "LoRA starts at B = 0: the base itself"
    assert set(metrics) >= {"forgetguard/task-kl", "forgetguard/task-kl/budget_used"}


def test_bad_setups_fail_before_training_with_the_plugins_messages(tiny, tmp_path, suite):
    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  - name: k\n    kl: {prompts: prompts.jsonl, budgt: 0.1}\n")
    with pytest.raises(SuiteError, match=r"bad.yaml:3: check 'k': .*budgt"):
        ForgetguardCallback(bad)
    with pytest.raises(ForgetguardError, match="no check named 'nope'"):
        ForgetguardCallback(suite(), checks=["nope"])
    with pytest.raises(ForgetguardError, match="'keeps-mc' is a retention check .* give retention_every=M"):
        ForgetguardCallback(suite(), checks=["keeps-mc"])
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer"):
        ForgetguardCallback(suite(), every_n_steps=0)
    with pytest.raises(ValueError, match="trajectory '.*' is a directory: name a file"):
        ForgetguardCallback(suite(), trajectory=tmp_path)
    model, tok = _model(tiny, peft=False)
    with pytest.raises(ForgetguardError, match="a full fine-tune needs its base"):
        ForgetguardCallback(suite()).setup(model, tok)
    with pytest.raises(ForgetguardError, match="needs the tokenizer"):
        ForgetguardCallback(suite(), base=str(tiny["base"])).setup(model, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a correct setup warns about nothing
        ForgetguardCallback(suite(), base=str(tiny["base"]), trajectory=False).setup(model, tok)


@pytest.mark.slow  # lm-eval on the base and twice on the model being trained
def test_retention_checks_run_every_m_evaluations_and_at_the_end(tiny, tmp_path, suite):
    watch = ForgetguardCallback(suite(), every_n_steps=2, retention_every=2)
    trainer = _train(tiny, tmp_path, [watch], steps=6)
    ran = [e["step"] for e in watch.history if "keeps-mc" in e["checks"]]
    assert ran == [2, 6], "the 1st and 3rd evaluations, and the last step"
    logged = [h for h in trainer.state.log_history if "forgetguard/keeps-mc" in h]
    assert [h["step"] for h in logged] == [2, 6]
    last = logged[-1]
    assert 0 <= last["forgetguard/keeps-mc"] <= 1  # the candidate's accuracy
    assert last["forgetguard/keeps-mc/budget_used"] == pytest.approx(last["forgetguard/keeps-mc/drop"] / 0.5)
    assert (
        last["forgetguard/keeps-mc/ci_low"] <= last["forgetguard/keeps-mc/drop"] <= last["forgetguard/keeps-mc/ci_high"]
    )


# TRL's SFTConfig sets the old name itself; nothing a user of the callback can change.
@pytest.mark.slow  # TRL imports in seconds, trains in more
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_under_trls_sft_trainer(tiny, tmp_path, suite):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(7)
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny["base"])
    data = datasets.Dataset.from_dict({"text": [p + r for p, r in DOC_PAIRS] * 8})
    config = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=4, per_device_train_batch_size=4, learning_rate=0.05,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, max_length=32,
    )  # fmt: skip
    watch = ForgetguardCallback(suite(), every_n_steps=2)
    trainer = trl.SFTTrainer(
        model=model, args=config, train_dataset=data, processing_class=tok, callbacks=[watch],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )  # fmt: skip
    watch.attach(trainer)  # already among its callbacks: only given the trainer to log through
    assert trainer.callback_handler.callbacks.count(watch) == 1
    trainer.train()
    logged = [h for h in trainer.state.log_history if "forgetguard/task-kl" in h]
    assert [h["step"] for h in logged] == [2, 4] and logged[-1]["forgetguard/task-kl"] > 0
    assert watch.history[-1]["within_budget"]
    # Logged beside TRL's trainer, not through its log(): TRL's own metrics stay in each of its loss logs.
    losses = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in losses] == [1, 2, 3, 4]
    assert all("mean_token_accuracy" in h and "forgetguard/task-kl" not in h for h in losses)
