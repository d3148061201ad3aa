"""The gate's budgets during training: a ``transformers.Trainer`` callback (TRL's trainers subclass it).

One line after the trainer, the suite file CI uses::

    from pytest_forgetguard.integrations.transformers import ForgetguardCallback

    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    ForgetguardCallback("forgetguard_newtask.yaml", every_n_steps=50, trainer=trainer)

``trainer=`` adds the callback to the trainer and is what it logs through; a callback already in
``Trainer(callbacks=[...])`` is given its trainer with ``callback.attach(trainer)``. Everything else
it takes from the arguments the trainer passes to every callback event (``args``, ``state``,
``control``, ``model``, ``processing_class``).

Every ``every_n_steps`` steps (and once at the end) the suite's ``kl`` and ``drift``
checks run on the model being trained against its frozen base, through the gate's
own code (:class:`~pytest_forgetguard.comparison.Forgetguard`): the same prompts,
samples, seed and numbers as ``pytest --forgetguard`` on the saved checkpoint.
The base is the model with its adapters disabled for a PEFT model (no second
copy), otherwise the ``base`` SPEC (default: the suite's ``models.base``),
loaded once. Each value is logged as ``forgetguard/<check>`` (with
``.../budget_used``, ``.../ci_low``, ``.../ci_high``) into ``trainer.state.log_history``
and, with the trainer given, through its callback handler to every ``report_to``
integration (without it, those are not reached, and rank 0 warns when ``report_to``
names any); a JSONL trajectory (one line per evaluation) is
written to ``output_dir/forgetguard_trajectory.jsonl``. A run resumed from a
checkpoint keeps the trajectory's evaluations up to the checkpoint's step and
drops the later ones, which it redoes: each step is in the file once, with the
values of the run that produced the final model.

Under multi-process training (DDP, ``accelerate launch``) every rank
measures, and every rank adopts rank 0's numbers and stop decision, so every
rank keeps the same history and log and stops at the same step; only the
process that writes the trainer's checkpoints (``args.should_save``) writes the
trajectory, and only rank 0 (``state.is_world_process_zero``) warns.

A check over its budget — or a measurement that errs, such as a NaN — warns; with
``stop_on_budget=True`` it stops training, naming the check, the value, the budget
and the last step within budget. ``last_checkpoint_within_budget`` is the last
checkpoint saved at an evaluation where every check held: the one to ship.

The callback does not change training: it measures under ``torch.no_grad()`` in
eval mode (the train mode restored), with its own seeded generators, inside
``torch.random.fork_rng`` so the trainer's random state is untouched.

Outside a ``Trainer`` (a hand-written loop)::

    watch = ForgetguardCallback("forgetguard_newtask.yaml")
    watch.setup(model, tokenizer)
    for step in ...:
        ...
        metrics = watch.measure(step)     # {"forgetguard/arith-kl": 0.012, ...}

Under ``torch.distributed`` every rank calls ``setup`` and ``measure`` at the same steps
(the ranks exchange rank 0's result there).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState
from transformers.training_args import TrainingArguments

from ..base_states import BaseStates
from ..cache import ResultCache
from ..checks import SUITE_RUNNERS
from ..comparison import Forgetguard
from ..distributed import DataParallel, Launch
from ..errors import ForgetguardError, ForgetguardWarning
from ..files import write_atomic
from ..models.live import LiveModel
from ..records import CheckRecord
from ..settings import DEFAULT_SEED
from ..suite import CheckSpec, Suite, load_suite

__all__ = ["ForgetguardCallback"]

# The kinds measured at every evaluation; retention (lm-eval, minutes) only with retention_every.
LIVE_KINDS = ("kl", "drift")
TRAJECTORY_FILE = "forgetguard_trajectory.jsonl"

T = TypeVar("T")


class ForgetguardCallback(TrainerCallback):  # type: ignore[misc]
    """Watch a suite's KL and drift budgets while training; warn, or stop, when one is spent.

    ``suite``: the suite file the CI gate runs (read and validated now: a bad file is the
    plugin's own error, before training starts). ``checks``: the names to watch (default:
    every ``kl`` and ``drift`` check that is not skipped). ``base``: the reference model's
    SPEC for a full fine-tune (default: the suite's ``models.base``); a PEFT model is
    compared with itself, adapters disabled, unless ``base`` is given. ``base_device``:
    where a loaded base goes (default: the trained model's device). ``tokenizer``:
    default the trainer's ``processing_class``. ``trajectory``: the JSONL path (default
    ``output_dir/forgetguard_trajectory.jsonl``; ``False``: none). ``retention_every``: also
    run the suite's retention checks (lm-eval, minutes each) at every M-th evaluation and at the
    end of training; default never. ``trainer``: the ``Trainer`` to watch, as :meth:`attach` does.
    """

    def __init__(
        self,
        suite: str | Path = "forgetguard_newtask.yaml",
        every_n_steps: int = 50,
        stop_on_budget: bool = False,
        base: str | None = None,
        *,
        checks: Sequence[str] | None = None,
        tokenizer: Any = None,
        base_device: str | None = None,
        trajectory: str | Path | bool | None = None,
        retention_every: int | None = None,
        trainer: Any = None,
    ) -> None:
        for label, value in (("every_n_steps", every_n_steps), ("retention_every", retention_every)):
            if value is None and label == "retention_every":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        self.suite: Suite = load_suite(Path(suite))
        self.retention_every = retention_every
        self.checks = _select(self.suite, checks, retention=retention_every is not None)
        self.every_n_steps = every_n_steps
        self.stop_on_budget = bool(stop_on_budget)
        self.base_spec = base
        self.base_device = base_device
        self._tokenizer = tokenizer
        if trajectory not in (None, True, False) and Path(str(trajectory)).is_dir():
            raise ValueError(
                f"trajectory {str(trajectory)!r} is a directory: name a file (e.g. {Path(str(trajectory)) / TRAJECTORY_FILE})"
            )
        self._trajectory_option = trajectory
        self.trajectory: Path | None = None
        self.history: list[dict[str, Any]] = []  # one entry per evaluation: step, seconds, checks' records
        self.last_within_budget: int | None = None  # the last evaluated step where every check held
        self.last_checkpoint_within_budget: str | None = None
        self.stopped: str | None = None  # the message, once stop_on_budget stopped training
        self._fg: Forgetguard | None = None
        self._live: LiveModel | None = None
        self._trainer: Any = None  # given by attach(): its callback handler reaches report_to's integrations
        self._over: set[str] = set()  # checks over budget at the last evaluation (warn on the change)
        self._records: list[CheckRecord] = []
        self._last_step: int | None = None
        # Set by the trainer (state.is_world_process_zero, args.should_save); outside one, from torch.distributed.
        self._main: bool | None = None
        self._writer: bool | None = None
        self._ranks: DataParallel | None = None
        if trainer is not None:
            self.attach(trainer)

    def attach(self, trainer: Any) -> ForgetguardCallback:
        """Watch ``trainer``: add this callback to it (unless it is there already) and log through it.

        The values then reach every callback's ``on_log`` (``report_to``'s integrations: TensorBoard,
        W&B, MLflow), as the trainer's own logs do. Returns the callback.
        """
        handler = getattr(trainer, "callback_handler", None)
        if not isinstance(handler, CallbackHandler):
            raise TypeError(f"attach() takes a transformers Trainer, got {type(trainer).__name__}")
        if not any(callback is self for callback in handler.callbacks):
            trainer.add_callback(self)
        self._trainer = trainer
        return self

    # -- set up and measure (also for hand-written training loops) --------------------------

    def setup(
        self, model: Any, tokenizer: Any = None, output_dir: str | Path | None = None, resume_step: int | None = None
    ) -> None:
        """Prepare to measure ``model``: its base, the comparison, the trajectory file.

        The base is fingerprinted here, before training moves a weight. ``resume_step``: the step a
        resumed run continues from. The evaluations up to it are read back from the trajectory (into
        :attr:`history` and :attr:`last_within_budget`) and the later ones dropped from the file: the
        resumed run redoes them. Without it the trajectory starts empty.
        """
        tokenizer = _text_tokenizer(tokenizer if tokenizer is not None else self._tokenizer)
        if tokenizer is None:
            raise ForgetguardError(
                "ForgetguardCallback needs the tokenizer: give the Trainer processing_class=tokenizer, "
                "or ForgetguardCallback(..., tokenizer=tokenizer)"
            )
        self._live = LiveModel(model, tokenizer, role="candidate", label="training")
        base = self._base(model, tokenizer)
        cache = ResultCache(None)
        self._fg = Forgetguard(
            base,
            self._live,  # type: ignore[arg-type]
            seed=self.suite.seed if self.suite.seed is not None else DEFAULT_SEED,
            record=self._records.append,
            default_name="training",
            cache=cache,  # in memory: the base's samples are drawn once, at the first evaluation
            base_states=BaseStates(cache),  # and its pass over them runs once: only the trained model runs after
            warn=self._warn,
        )
        if self._trajectory_option is False:
            self.trajectory = None
        elif self._trajectory_option not in (None, True):
            self.trajectory = Path(str(self._trajectory_option))
        else:
            self.trajectory = Path(output_dir or ".") / TRAJECTORY_FILE
        self.history, self.last_within_budget, self._over, self._last_step = [], None, set(), None
        self.last_checkpoint_within_budget = self.stopped = None
        if resume_step is not None and self.trajectory is not None:
            # Rank 0's file is the record (other nodes may not see it); every rank resumes from it.
            path = self.trajectory
            kept = self._from_main("resumed trajectory", lambda: self._read_trajectory(path, resume_step))
            self.history = kept
            if kept:
                self._last_step = kept[-1]["step"]
                self.last_within_budget = next((e["step"] for e in reversed(kept) if e["within_budget"]), None)
                self._over = {name for name, c in kept[-1]["checks"].items() if not c.get("passed")}
        self._write(self.history, append=False)

    def _base(self, model: Any, tokenizer: Any) -> Any:
        """The model to compare with: the PEFT model with its adapters disabled, else the base SPEC, loaded."""
        assert self._live is not None
        if self.base_spec is None and self.suite.base is None and not hasattr(model, "disable_adapter"):
            raise ForgetguardError(
                f"{self.suite.path}: a full fine-tune needs its base to compare with: give "
                "ForgetguardCallback(..., base=SPEC) or models.base in the suite (a PEFT model is compared "
                "with itself, adapters disabled)"
            )
        spec = self.base_spec or (None if hasattr(model, "disable_adapter") else self.suite.base)
        if spec is None:
            base = LiveModel(model, tokenizer, role="base", label="base (adapters disabled)", adapters="disabled")
            base.freeze_fingerprint()
            return base
        from ..models import ModelStore
        from ..settings import default_cache_dir

        device = self.base_device or str(self._live.device)
        store = ModelStore(device=device, dtype=self._live.dtype, cache_dir=default_cache_dir())
        loaded = store.get(spec, role="base")
        loaded.load()
        return loaded

    def measure(self, step: int, epoch: float | None = None, retention: bool | None = None) -> dict[str, float]:
        """Run the watched checks on the model as it is now; returns the metrics to log.

        ``retention``: whether retention checks run this time (default: every ``retention_every``-th
        evaluation, counting from the first).

        Never raises for a check over budget or a broken model: that is in the metrics (a NaN value for
        a measurement that erred), in :attr:`history`, and warned about. With ``stop_on_budget``, the
        first evaluation over budget sets :attr:`stopped` (the message): a hand-written loop ends there.
        """
        import torch

        if self._fg is None or self._live is None:
            raise ForgetguardError("ForgetguardCallback.measure() before setup(): call setup(model, tokenizer) first")
        self._live.set_step(step)
        self._records.clear()  # this evaluation's records only (the history keeps each one's summary)
        model = self._live.model
        was_training = bool(getattr(model, "training", False))
        start = time.perf_counter()
        records: dict[str, CheckRecord] = {}
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            try:
                if retention is None:
                    retention = self.retention_every is not None and len(self.history) % self.retention_every == 0
                for check in self.checks:
                    if check.kind in LIVE_KINDS or retention:
                        records[check.name] = self._run(check)
            finally:
                model.train(was_training)
        seconds = time.perf_counter() - start

        def outcome() -> tuple[dict[str, Any], dict[str, float], dict[str, str]]:
            entry = {"step": step, "epoch": epoch, "seconds": round(seconds, 4),
                     "within_budget": all(rec.passed for rec in records.values()),
                     "checks": {name: _summary(rec) for name, rec in records.items()}}  # fmt: skip
            over = {name: self._over_message(step, rec) for name, rec in records.items() if not rec.passed}
            return entry, self._metrics(records), over

        # Every rank measured: a sharded model's forward pass (FSDP, ZeRO-3) is a collective all ranks
        # must join. Every rank then adopts rank 0's result, so that the ranks log the same numbers and
        # stop at the same step: their own values may differ in the last bit (kernels, devices), and one
        # rank stopping while the others train on waits forever in the next gradient all-reduce.
        entry, metrics, over = self._from_main(f"evaluation at step {step}", outcome)
        self._last_step = step
        if entry["within_budget"]:
            self.last_within_budget = step
        self.history.append(entry)
        self._write([entry], append=True)
        if over and self.stop_on_budget and self.stopped is None:
            self.stopped = "; ".join(over.values())
            self._warn(f"stopping training: {self.stopped}")
        elif not self.stop_on_budget:
            for name in sorted(set(over) - self._over):  # warn when a check goes over, not at every evaluation
                self._warn(over[name])
        self._over = set(over)
        return metrics

    # -- the processes of a multi-process run ------------------------------------------------------

    def _is_main(self) -> bool:
        """Whether this process is rank 0: the trainer's word, else torch.distributed's, else the launcher's."""
        if self._main is not None:
            return self._main
        launch = Launch.from_process_group(os.environ)
        if launch is not None:
            return launch.rank == 0
        return os.environ.get("RANK", "0").strip() in ("", "0")  # torchrun's ranks without a process group

    def _writes(self) -> bool:
        """Whether this process writes files: the one that writes the trainer's checkpoints (``args.should_save``,
        as the trainer decides), else rank 0."""
        return self._writer if self._writer is not None else self._is_main()

    def _write(self, entries: list[dict[str, Any]], append: bool) -> None:
        """Every write of the trajectory: append ``entries``, or replace the file with them. On the writing
        process only (:meth:`_writes`): the others keep the same history in memory and write nothing."""
        if self.trajectory is None or not self._writes():
            return
        lines = "".join(json.dumps(e, allow_nan=False) + "\n" for e in entries)
        if not append:
            write_atomic(self.trajectory, lines)
            return
        with self.trajectory.open("a", encoding="utf-8") as out:
            out.write(lines)

    def _warn(self, message: str) -> None:
        if self._is_main():  # one warning, not one per rank
            warnings.warn(message, ForgetguardWarning, stacklevel=3)

    def _from_main(self, what: str, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0, its value on every rank of a process group (alone: ``compute()``).

        Every rank must call it at the same point; an error on rank 0 is raised on every rank.
        """
        if self._ranks is None:
            launch = Launch.from_process_group(os.environ)
            if launch is None:
                return compute()
            self._ranks = DataParallel(launch)
        ranks = self._ranks
        values = ranks.exchange(f"ForgetguardCallback {what}", lambda: compute() if ranks.rank == 0 else None, "cpu")
        return cast(T, values[0])  # rank 0's value (the others sent None)

    def _read_trajectory(self, path: Path, upto: int) -> list[dict[str, Any]]:
        """The evaluations in trajectory ``path`` at steps up to ``upto``, each step once (its last line wins)."""
        if not path.is_file():
            return []
        by_step: dict[int, dict[str, Any]] = {}
        unreadable = []
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if not _is_evaluation(entry):
                unreadable.append(number)  # e.g. the half-written last line of a killed run
                continue
            if entry["step"] <= upto:
                by_step[entry["step"]] = entry
        if unreadable:
            self._warn(f"{path}: dropped unreadable line(s) {', '.join(map(str, unreadable[:10]))}")
        return [by_step[step] for step in sorted(by_step)]

    def _run(self, check: CheckSpec) -> CheckRecord:
        assert self._fg is not None
        before = len(self._records)
        error: Exception | None = None
        try:
            SUITE_RUNNERS[check.kind](self._fg, check.name, check.options)
        except Exception as exc:
            # Recorded: a failed check, or one that erred (a NaN, a bad prompt file, out of memory).
            # It is never within budget; training is not ended by the callback's own error.
            error = exc
        if len(self._records) == before:  # pragma: no cover - every gate records itself
            raise ForgetguardError(f"check {check.name!r} ran without a record") from error
        return self._records[-1]

    def _metrics(self, records: dict[str, CheckRecord]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for name, rec in records.items():
            ok = rec.error is None
            value = float(rec.value) if rec.value is not None and ok else math.nan
            key = f"forgetguard/{name}"
            metrics[key] = value  # the report's value: KL, drift, or a retention check's candidate score
            if rec.kind == "retention":
                # What is budgeted is the drop (positive = worse) against the allowed drop.
                drop = float(rec.details["drop"]) if ok and rec.details.get("drop") is not None else math.nan
                metrics[f"{key}/drop"] = drop
                if rec.budget:
                    metrics[f"{key}/budget_used"] = drop / rec.budget
                if ok and rec.details.get("drop_ci"):
                    metrics[f"{key}/ci_low"], metrics[f"{key}/ci_high"] = map(float, rec.details["drop_ci"])
                continue
            if rec.budget:
                metrics[f"{key}/budget_used"] = value / rec.budget
            if rec.ci_low is not None and rec.ci_high is not None and ok:
                metrics[f"{key}/ci_low"], metrics[f"{key}/ci_high"] = float(rec.ci_low), float(rec.ci_high)
        return metrics

    def _over_message(self, step: int, rec: CheckRecord) -> str:
        if rec.error is not None:
            what = f"could not be measured: {rec.error.splitlines()[0]}"
        elif rec.kind == "retention":
            what = (
                f"{rec.metric} {rec.base_value:.4g} -> {rec.value:.4g}, drop {rec.details['drop']:+.4g} > "
                f"allowed {rec.budget:.4g} (gate: {rec.details.get('gate')})"
            )
        else:
            what = f"{rec.metric} {rec.value:.4g} > budget {rec.budget:.4g}"
        last = (
            f"the last step within budget was {self.last_within_budget}"
            if self.last_within_budget is not None
            else "no evaluation was within budget"
        )
        if self.last_checkpoint_within_budget:
            last += f" (checkpoint {self.last_checkpoint_within_budget})"
        return f"forgetguard check {rec.name!r} at step {step}: {what}; {last}"

    # -- the Trainer's events -------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        # Only what the trainer passes to every event: its arguments, state, model and processing_class.
        if self._trainer is not None and self._trainer.state is not state:
            raise ForgetguardError(
                "ForgetguardCallback is attached to another trainer than the one training: "
                "attach it to the trainer it watches (trainer=..., or attach(trainer))"
            )
        self._main, self._writer = state.is_world_process_zero, args.should_save
        tokenizer = self._tokenizer
        for key in ("processing_class", "tokenizer"):  # the older transformers' name
            tokenizer = kwargs.get(key) if tokenizer is None else tokenizer
        reporters = [r for r in (args.report_to or []) if r != "none"]
        if self._trainer is None and reporters:
            self._warn(
                f"ForgetguardCallback: the values go to trainer.state.log_history and the trajectory, not to "
                f"report_to's {', '.join(map(str, reporters))}: give it the trainer "
                "(ForgetguardCallback(..., trainer=trainer), or callback.attach(trainer))"
            )
        # Resumed from a checkpoint: the trainer restored its state, global_step is the checkpoint's.
        resume_step = state.global_step if state.global_step > 0 else None
        self.setup(model, tokenizer, output_dir=args.output_dir, resume_step=resume_step)
        if resume_step is not None:
            # The last checkpoint at a step measured within budget, as on_save would have named it.
            saved = [
                e["step"] for e in self.history if e["within_budget"] and self._checkpoint(args, e["step"]).is_dir()
            ]
            self.last_checkpoint_within_budget = str(self._checkpoint(args, saved[-1])) if saved else None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.global_step % self.every_n_steps == 0:
            last = bool(state.max_steps) and state.global_step >= state.max_steps
            # The last step's evaluation runs the retention checks too (when they run at all): what CI will see.
            self._evaluate(args, state, control, retention=True if last and self.retention_every else None)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # The trainer saves after on_step_end: a checkpoint at a step just measured within budget is one to ship.
        if self._last_step == state.global_step and self.last_within_budget == state.global_step:
            self.last_checkpoint_within_budget = str(self._checkpoint(args, state.global_step))

    @staticmethod
    def _checkpoint(args: TrainingArguments, step: int) -> Path:
        return Path(args.output_dir or ".") / f"checkpoint-{step}"

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._fg is not None and self._last_step != state.global_step and self.stopped is None:
            # The final model's numbers: what CI will see (its retention checks too, when they run at all).
            self._evaluate(args, state, control, retention=self.retention_every is not None)

    def _evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, retention: bool | None = None
    ) -> None:
        metrics = self.measure(state.global_step, state.epoch, retention)
        self._log(args, state, control, metrics)
        if self.stopped is not None:
            control.should_training_stop = True

    def _log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, float]
    ) -> None:
        """Log as ``Trainer.log`` does: into ``state.log_history`` and, given the trainer (:meth:`attach`),
        to every callback's ``on_log`` through its callback handler (the ``report_to`` integrations).

        On every rank, as the trainer logs: the integrations write on rank 0 only (they check
        ``state.is_world_process_zero``), and every rank's ``log_history`` stays the same. Not through
        ``trainer.log()`` itself: a subclass's (TRL's) folds its own running metrics into that call.
        """
        logs = dict(metrics)
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        if self._trainer is not None:
            should_log = control.should_log  # on_log clears it: the trainer's own log at this step must still happen
            self._trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log


def _select(suite: Suite, names: Sequence[str] | None, retention: bool) -> list[CheckSpec]:
    """The checks to watch: the named ones, else every kl and drift check (and with ``retention``,
    every retention check) that is not skipped."""
    by_name = {c.name: c for c in suite.checks}
    if names is not None:
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ForgetguardError(
                f"{suite.path}: no check named {', '.join(map(repr, unknown))} (checks: {', '.join(by_name) or 'none'})"
            )
        chosen = [by_name[n] for n in names]
        slow = [c.name for c in chosen if c.kind not in LIVE_KINDS]
        if slow and not retention:
            raise ForgetguardError(
                f"{suite.path}: {', '.join(map(repr, slow))} is a retention check (lm-eval, minutes per run): "
                "give retention_every=M to run it at every M-th evaluation"
            )
        return chosen
    kinds = (*LIVE_KINDS, "retention") if retention else LIVE_KINDS
    chosen = [c for c in suite.checks if c.kind in kinds and c.skip is None]
    if not chosen:
        raise ForgetguardError(f"{suite.path}: no kl or drift check to watch during training")
    return chosen


def _is_evaluation(entry: Any) -> bool:
    """Whether a trajectory line's object is an evaluation this callback wrote (a step, a verdict, checks)."""
    return (
        type(entry) is dict
        and type(entry.get("step")) is int
        and type(entry.get("within_budget")) is bool
        and type(entry.get("checks")) is dict
        and all(type(c) is dict for c in entry["checks"].values())
    )


def _text_tokenizer(processing_class: Any) -> Any:
    """The text tokenizer of a tokenizer or of a multimodal processor (which holds one)."""
    if processing_class is None or hasattr(processing_class, "get_vocab"):
        return processing_class
    return getattr(processing_class, "tokenizer", None)


def _summary(rec: CheckRecord) -> dict[str, Any]:
    """A check's line in the trajectory (strict JSON: a non-finite number is null, its error says why)."""

    def finite(x: float | None) -> float | None:
        return float(x) if x is not None and math.isfinite(x) else None

    drop = {"drop": finite(rec.details.get("drop"))} if rec.kind == "retention" else {}
    return {
        "metric": rec.metric,
        "value": finite(rec.value),
        **drop,
        "budget": rec.budget,
        "ci_low": finite(rec.ci_low),
        "ci_high": finite(rec.ci_high),
        "n": rec.n,
        "passed": rec.passed,
        "error": rec.error if rec.error or rec.value is None or math.isfinite(rec.value) else "non-finite value",
    }
