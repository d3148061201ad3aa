"""lm-evaluation-harness, run on a loaded model: tasks found, per-item results reduced, base results cached.

Both models are evaluated by lm-eval itself (what ``simple_evaluate`` does, with
the already-loaded model wrapped in ``HFLM``, ``log_samples=True``), so any
lm-eval task works: multiple_choice, loglikelihood, loglikelihood_rolling and
generate_until, with lm-eval's own metrics, aggregations and
``higher_is_better``. Only lm-eval's public API is used; where it falls short, a
small adapter says why and is checked against lm-eval by a canary test
(:func:`simple_evaluate_results`, :func:`check_task_yaml`). What a comparison needs is kept per item
(:class:`TaskRun`); every number is checked to be finite, and every forward
pass under lm-eval too (:func:`finite_logits`). The base model's per-item
results are cached, keyed by everything that determines them (see
:func:`base_cache_key`), and validated on read (:func:`invalid_task_run`).

Relative ``data_files`` in a task YAML are resolved against the directory of
that YAML (lm-eval itself would resolve them against the working directory).

Example::

    runs = evaluate(handle, ["fg_capitals"], include_path=None)
    runs["fg_capitals"].values("acc", "none")   # per-item values, keyed by (doc_id, doc_hash)
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import inspect
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import progress
from .cache import ResultCache, cache_key
from .deps import available
from .errors import NonFiniteError, RetentionError
from .schema import RETENTION_KEYS
from .settings import DEFAULT_SEED

if TYPE_CHECKING:
    from .distributed import DataParallel
    from .models import ModelHandle, ModelLike

PROBES_DIR = Path(__file__).resolve().parent / "probes"
BACKENDS: tuple[str, ...] = RETENTION_KEYS["backend"].enum
CACHE_NAMESPACE = "retention-base"
CACHE_FORMAT = 1


@dataclass
class TaskRun:
    """One model's lm-eval run on one task, reduced to what the comparison needs."""

    task: str
    samples: list[dict[str, Any]]
    higher_is_better: dict[str, bool]
    aggregation: dict[str, str]
    results: dict[str, Any]
    output_type: str = ""

    def metrics(self) -> list[str]:
        return list(self.higher_is_better)

    def filters(self) -> list[str]:
        return sorted({s["filter"] for s in self.samples})

    def values(self, metric: str, filter_: str) -> dict[tuple[int, str], Any]:
        return {
            (s["doc_id"], s["doc_hash"]): s["metrics"][metric]
            for s in self.samples
            if s["filter"] == filter_ and metric in s["metrics"]
        }

    def sample(self, doc_id: int, filter_: str) -> dict[str, Any]:
        for s in self.samples:
            if s["doc_id"] == doc_id and s["filter"] == filter_:
                return s
        raise KeyError(doc_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "samples": self.samples,
            "higher_is_better": self.higher_is_better,
            "aggregation": self.aggregation,
            "results": self.results,
            "output_type": self.output_type,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TaskRun":
        return cls(**data)


def invalid_task_run(payload: Any, task: str) -> str | None:
    """Why a cached payload cannot be ``task``'s :class:`TaskRun` (None when it can).

    Every field the comparison reads is checked for its type, and every
    per-item metric for being finite, so an entry that is well-formed JSON
    but wrong (edited, from another version, poisoned) is recomputed instead
    of crashing a run or deciding one.
    """
    fields = {"task": str, "samples": list, "higher_is_better": dict, "aggregation": dict, "results": dict,
              "output_type": str}  # fmt: skip
    if not isinstance(payload, dict) or set(payload) != set(fields):
        got = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        return f"expected the fields {sorted(fields)}, got {got}"
    for key, kind in fields.items():
        if not isinstance(payload[key], kind):
            return f"{key} is not a {kind.__name__}"
    if payload["task"] != task:
        return f"it holds task {payload['task']!r}, not {task!r}"
    hib = payload["higher_is_better"]
    if not hib or not all(isinstance(k, str) and isinstance(v, bool) for k, v in hib.items()):
        return "higher_is_better is not a non-empty mapping of metric names to true/false"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in payload["aggregation"].items()):
        return "aggregation is not a mapping of metric names to names"
    if not payload["samples"]:
        return "no items"
    for i, item in enumerate(payload["samples"]):
        if not isinstance(item, dict):
            return f"item {i} is not a mapping"
        if isinstance(item.get("doc_id"), bool) or not isinstance(item.get("doc_id"), int):
            return f"item {i} has no integer doc_id"
        if not isinstance(item.get("doc_hash"), str) or not isinstance(item.get("filter"), str):
            return f"item {i} has no doc_hash or filter"
        if not isinstance(item.get("prompt_hash"), str):  # early stopping pairs a chunk's prompts with these
            return f"written by an earlier forgetguard (item {i} has no prompt_hash)"
        metrics = item.get("metrics")
        if not isinstance(metrics, dict):
            return f"item {i} has no metrics"
        for m, v in metrics.items():
            numbers = v if isinstance(v, list) else [v]
            if not numbers or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
                return f"item {i}: metric {m} is not a number or a list of numbers"
            if _non_finite(numbers):
                return f"item {i}: metric {m} is not finite"
        for text_field in ("prompt", "target"):
            if not isinstance(item.get(text_field), str):
                return f"item {i} has no {text_field} text"
    return None


# -- loading tasks ---------------------------------------------------------------


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every config default it fills in; keep CI output readable."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- adapters: where lm-eval's public API falls short ---------------------------------
# Each is checked against lm-eval itself by tests/unit/test_lmeval_adapter.py, which fails when the
# lm-eval behaviour it reproduces changes.


def simple_evaluate_results(
    lm: Any,
    task_manager: Any,
    tasks: dict[str, Any],
    *,
    num_fewshot: int | None,
    limit: int | float | None,
    samples: dict[str, list[int]] | None,
    seed: int,
    apply_chat_template: bool,
) -> dict[str, Any] | None:
    """What ``lm_eval.simple_evaluate`` returns for these arguments, built from lm-eval's public parts.

    ``simple_evaluate(model=lm, tasks=[Task objects], task_manager=..., num_fewshot=..., limit=...,
    samples=..., log_samples=True, bootstrap_iters=0, apply_chat_template=..., every seed=seed)`` has
    no argument to skip two things forgetguard cannot use. It ends by describing the machine in its
    results (``add_env_info``: torch's collect_env, ~20 subprocesses such as ``pip list`` and
    ``nvidia-smi``, 0.62–0.67 s per call, measured 2026-12-01), which nothing here reads. And since
    lm-eval 0.4.10 it returns ``None`` on every process whose ``LOCAL_RANK`` is not 0, where under
    torchrun every rank needs the results, to reach the same verdict.

    So this does what simple_evaluate (0.4.13) does before it calls the public ``lm_eval.evaluate``,
    for an LM object, Task objects, no ``gen_kwargs`` and no ``predict_only``: seed Python's, numpy's
    and torch's generators; let ``num_fewshot`` override each task's own, except where a task sets 0,
    and give a task that sets none 0; seed each task's few-shot sampler. ``lm_eval.evaluate`` returns
    the results wherever ``lm.rank`` is 0: an LM on one already-loaded model is rank 0 of 1 on every
    process. The canary test runs this and ``simple_evaluate`` on the same model and tasks and fails
    when their per-item results differ.
    """
    import random

    import torch
    from lm_eval import evaluate as lm_eval_evaluate

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loaded = task_manager.load(list(tasks.values()))
    for task in loaded["tasks"].values():
        own = task.get_config("num_fewshot")
        if num_fewshot is not None and own != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif num_fewshot is None and own is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    results: dict[str, Any] | None = lm_eval_evaluate(
        lm=lm, task_dict=loaded, limit=limit, samples=samples, bootstrap_iters=0, log_samples=True,
        apply_chat_template=apply_chat_template, fewshot_as_multiturn=True,
    )  # fmt: skip
    return results


def _task_yaml_loader() -> Any:
    """lm-eval's YAML loader for task files (0.4.13): a safe loader that also reads ``!function``."""
    import yaml

    safe: Any = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader

    class TaskYamlLoader(safe):  # type: ignore[misc,valid-type]
        pass

    # Kept as text: a function is never imported to diagnose its file.
    TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return TaskYamlLoader


def check_task_yaml(path: Path, _seen: frozenset[Path] = frozenset()) -> None:
    """Raise what lm-eval's task index meets on a task YAML that it skips as unreadable.

    lm-eval reads task files with ``lm_eval.tasks._yaml_loader.load_yaml``, which is private; its task
    index skips a file that raises there and logs why at debug level only, then the task is "unknown".
    Its rules, reproduced here (0.4.13): YAML through a safe loader with a ``!function`` tag; the
    document is a mapping; each ``include`` (a path or a list of them, relative to the file) is read
    the same way, recursively; an include cycle is an error. The canary test writes a file breaking
    each rule and checks that lm-eval's index skips exactly the files this rejects.
    """
    import yaml

    path = path.expanduser().resolve()
    if path in _seen:
        raise ValueError(f"include cycle at {path}")
    with path.open("rb") as fh:
        cfg = yaml.load(fh, Loader=_task_yaml_loader())  # noqa: S506 (a safe loader, see _task_yaml_loader)
    if not isinstance(cfg, dict):
        raise ValueError(f"expected a mapping in {path}, got {type(cfg).__name__}")
    includes = cfg.get("include", [])
    for include in includes if isinstance(includes, list) else [includes]:
        check_task_yaml(path.parent / include, _seen | {path})


def include_paths(include_path: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The shipped probes first, then the user's directories (which must exist)."""
    paths = [PROBES_DIR]
    extra = (
        [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    )
    for p in extra:
        path = Path(p).expanduser().resolve()
        if not path.is_dir():
            raise RetentionError(f"include_path {p} is not a directory of lm-eval task YAMLs")
        paths.append(path)
    return paths


_MANAGERS: dict[tuple[tuple[str, ...], bool], Any] = {}


def _manager(paths: list[Path], include_defaults: bool) -> Any:
    """A TaskManager per set of paths, kept: indexing is the slow part (task files are re-read on load)."""
    from lm_eval.tasks import TaskManager

    key = (tuple(str(p) for p in paths), include_defaults)
    if key not in _MANAGERS:
        with _quiet_lm_eval():
            _MANAGERS[key] = TaskManager(include_path=list(key[0]), include_defaults=include_defaults)
    return _MANAGERS[key]


def _task_manager(paths: list[Path], names: Sequence[str]) -> Any:
    """An lm-eval TaskManager over our paths; lm-eval's ~15k built-in tasks only if needed."""
    tm = _manager(paths, include_defaults=False)
    if any(n not in tm.task_index for n in names):
        tm = _manager(paths, include_defaults=True)  # not ours: try lm-eval's own tasks
    missing = [n for n in names if n not in tm.task_index]
    if missing:
        local = sorted(
            n
            for n, e in tm.task_index.items()
            if e.yaml_path and any(str(e.yaml_path).startswith(str(p)) for p in paths)
        )
        broken = _unreadable_task_files(paths)
        mine = [(f, why) for f, why in broken if re.search(rf"\b{re.escape(missing[0])}\b", _peek(f))]
        if mine:
            f, why = mine[0]
            raise RetentionError(f"task YAML {f} (which names task {missing[0]!r}) could not be read: {why}")
        close = difflib.get_close_matches(missing[0], list(tm.task_index), n=3)
        raise RetentionError(
            f"unknown lm-eval task {missing[0]!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + f" Tasks in the include paths: {', '.join(local[:20]) or 'none'}"
            + "".join(f"\n  task YAML {f} could not be read: {why}" for f, why in broken[:5])
        )
    return tm


def _peek(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _unreadable_task_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """YAML files of the include paths that lm-eval's task index skipped because they do not parse.

    lm-eval logs these at debug level and reports the task as unknown; the
    parse error itself is what a person needs.
    """
    out = []
    for root in paths:
        for f in sorted(root.rglob("*.y*ml")):
            if f.suffix not in (".yaml", ".yml") or "__pycache__" in f.parts:
                continue
            try:
                check_task_yaml(f)
            except Exception as exc:
                out.append((f, f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"))
    return out


def find_tasks(names: Sequence[str], include_path: Any = None) -> None:
    """Raise :class:`RetentionError` unless every task name is found (cheap: the index, not the data)."""
    if not names:
        raise RetentionError("a retention check needs at least one task")
    _task_manager(include_paths(include_path), names)


@dataclass(frozen=True)
class LoadedTasks:
    """lm-eval Task objects by name (leaf tasks of any group), their TaskManager, and their directories.

    ``dirs``: the directory each task was loaded from (its YAML's), against which its relative
    ``data_files`` were resolved: the cache key hashes those files. Kept here, by task name, never as an
    attribute written onto lm-eval's objects.
    """

    manager: Any
    tasks: dict[str, Any]
    dirs: dict[str, Path]

    def only(self, names: Sequence[str]) -> "LoadedTasks":
        """These tasks only (in this order), with the same manager."""
        return LoadedTasks(self.manager, {n: self.tasks[n] for n in names}, {n: self.dirs[n] for n in names})


def load_tasks(names: Sequence[str], paths: list[Path]) -> LoadedTasks:
    """Build lm-eval Task objects (leaf tasks of any group) by name, with their TaskManager."""
    if not names:
        raise RetentionError("a retention check needs at least one task")
    tm = _task_manager(paths, names)
    tasks: dict[str, Any] = {}
    dirs: dict[str, Path] = {}
    for name in names:
        entry = tm.task_index[name]
        where = Path(entry.yaml_path).parent if entry.yaml_path else Path.cwd()
        try:
            with _chdir(where), _quiet_lm_eval(), progress.third_party_quiet():
                loaded = tm.load([name])
        except Exception as exc:
            raise RetentionError(
                f"lm-eval could not load task {name!r} ({entry.yaml_path}): {type(exc).__name__}: {exc} "
                "(is its data file missing or empty?)"
            ) from exc
        for task_name, task in loaded["tasks"].items():
            tasks[task_name] = task
            dirs[task_name] = where  # where its relative data files live (for the cache key)
    return LoadedTasks(tm, tasks, dirs)


# -- the cache key ----------------------------------------------------------------


def _stable(obj: Any) -> Any:
    """A JSON-stable view of a task config: functions by name and source hash, not address."""
    if isinstance(obj, dict):
        return {str(k): _stable(v) for k, v in obj.items() if k != "config_source"}
    if isinstance(obj, (list, tuple)):
        return [_stable(v) for v in obj]
    if callable(obj):
        # The whole file the function lives in: a helper it calls (a task's utils.py) changes results too.
        try:
            src_file = inspect.getsourcefile(obj)
            src = Path(src_file).read_bytes() if src_file else inspect.getsource(obj).encode()
        except (OSError, TypeError):
            src = b""
        name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
        return {"callable": name, "source": hashlib.sha256(src).hexdigest()[:16]}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _data_hashes(task: Any, data_dir: Path) -> dict[str, str]:
    """sha256 of every local data file the task reads (relative ones are in ``data_dir``)."""
    from .files import sha256_file

    kwargs = task.config.dataset_kwargs or {}
    files = kwargs.get("data_files") or {}
    listed = files.values() if isinstance(files, dict) else [files]
    out = {}
    for item in listed:
        for f in [item] if isinstance(item, str) else list(item):
            path = Path(f) if os.path.isabs(f) else data_dir / f
            out[str(f)] = sha256_file(path) if path.is_file() else "missing"
    return out


def base_cache_key(task_name: str, task: Any, data_dir: Path, fingerprint: str, settings: dict[str, Any]) -> str:
    """Everything that determines a model's per-item results on a task (its relative data files in ``data_dir``)."""
    import lm_eval

    return cache_key(
        format=CACHE_FORMAT,
        model=fingerprint,
        task=task_name,
        config=_stable(task.dump_config()),
        version=str(getattr(task, "VERSION", None)),
        data=_data_hashes(task, data_dir),
        lm_eval=getattr(lm_eval, "__version__", "?"),
        settings=settings,
    )


# -- running -----------------------------------------------------------------------


def _describe(sample: dict[str, Any]) -> dict[str, Any]:
    """The prompt, the right answer and the model's answer, as short text."""
    args = sample.get("arguments") or []
    first = args[0] if args else ()
    prompt = str(first[0]) if isinstance(first, (list, tuple)) and first else str(first)
    target = sample.get("target")
    answer = None
    resps = sample.get("filtered_resps")
    if isinstance(target, int) and len(args) > 1 and isinstance(args[0], (list, tuple)) and len(args[0]) > 1:
        # multiple choice: continuations are the second element of each request
        choices = [str(a[1]) for a in args]
        if 0 <= target < len(choices):
            target = choices[target]
        if isinstance(resps, list) and resps and isinstance(resps[0], (list, tuple)):
            lls = [float(r[0]) for r in resps]
            answer = choices[int(np.argmax(lls))]
    elif isinstance(resps, list) and resps and isinstance(resps[0], str):
        answer = resps[0]
    return {
        "prompt": prompt[-300:],
        "target": str(target)[:200],
        "answer": None if answer is None else str(answer)[:200],
    }


def _non_finite(value: Any, allow_minus_inf: bool = False) -> bool:
    """Whether a number, or any number nested in lists/tuples/dicts, is NaN or infinite."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        x = float(value)
        return math.isnan(x) or (math.isinf(x) and not (allow_minus_inf and x < 0))
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v, allow_minus_inf) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v, allow_minus_inf) for v in value.values())
    return False


def _reduce(res: dict[str, Any], tasks: dict[str, Any], label: str = "the model") -> dict[str, TaskRun]:
    """Keep what the comparison needs of lm-eval's output; a NaN or infinity in any item is an error.

    Per-item metrics must be finite; the model's raw numbers (log-likelihoods)
    may be -inf (a token ruled out) but never NaN or +inf. Aggregates are
    computed from the items later, so checking the items covers them.
    """
    runs = {}
    for name, task in tasks.items():
        if not res.get("samples", {}).get(name):
            # Never pool around a task that produced nothing: that would be a silent skip.
            raise RetentionError(f"lm-eval produced no scored items for task {name!r}; is its data empty?")
        aggregation = {m: getattr(fn, "__name__", str(fn)) for m, fn in task.aggregation().items()}
        hib = dict(res["higher_is_better"].get(name, {}))
        samples = []
        for s in res["samples"][name]:
            metrics = {}
            for m in hib:
                if m in s:
                    v = s[m]
                    metrics[m] = [float(x) for x in v] if isinstance(v, (tuple, list)) else float(v)
                    if _non_finite(metrics[m]):
                        raise NonFiniteError(
                            f"lm-eval scored {label} with a non-finite {m} ({v!r}) on task {name!r}, item "
                            f"{s.get('doc_id')}: its outputs are NaN/inf, so no score of it can be trusted"
                        )
            for field_name in ("resps", "filtered_resps"):
                if _non_finite(s.get(field_name), allow_minus_inf=True):
                    raise NonFiniteError(
                        f"{label} gave NaN/inf log-likelihoods on task {name!r}, item {s.get('doc_id')} "
                        f"({field_name} {str(s.get(field_name))[:200]}): its outputs cannot be scored"
                    )
            samples.append(
                {
                    "doc_id": int(s["doc_id"]),
                    "doc_hash": s["doc_hash"],
                    "prompt_hash": str(s.get("prompt_hash", "")),  # pairs a chunk's item with the full run's
                    "filter": s.get("filter", "none"),
                    "metrics": metrics,
                    **_describe(s),
                }
            )
        results = {k: v for k, v in res["results"].get(name, {}).items() if isinstance(v, (int, float, str))}
        runs[name] = TaskRun(name, samples, hib, aggregation, results, str(task.config.output_type))
    return runs


def vllm_arguments(handle: "ModelHandle", batch_size: int, seed: int) -> dict[str, Any]:
    """Arguments for lm-eval's ``VLLM`` model: vLLM loads from files, not from our loaded module.

    A PEFT candidate is its base's directory plus the adapter as a LoRA
    request; a GGUF file is its converted safetensors copy.
    """
    store = handle.store
    if handle.spec.kind == "custom":
        raise RetentionError(
            f"the vllm backend loads models from files; {handle.spec.text!r} was loaded by a hook (use backend: hf)"
        )
    args: dict[str, Any] = {
        "dtype": store.dtype,
        "trust_remote_code": store.trust_remote_code,
        "seed": seed,
        "batch_size": "auto" if batch_size is None else batch_size,
        # The HF models of the run stay on the GPU: leave them room.
        "gpu_memory_utilization": 0.5,
    }
    if handle.spec.kind == "peft":
        args["pretrained"] = str(handle.adapter_base.local_dir)
        args["lora_local_path"] = str(handle.local_dir)
    else:
        args["pretrained"] = str(handle.local_dir)
    return args


def _sharded_lm(inner: Any, parallel: "DataParallel", handle: "ModelLike") -> Any:
    """``inner`` (an lm-eval LM) with every batch of requests split between the ranks of ``parallel``.

    lm-eval builds and scores every item on every rank as one process would (contexts, few-shot
    draws, filters, metrics): only the model calls are divided. Each call's requests go round-robin
    to the ranks, each rank runs its share on its own copy of the model, and every rank gets all the
    responses back in request order (:func:`~.distributed.run_sharded`, which also checks that the
    ranks hold the same requests and makes a model one rank finds broken unusable on all). So every
    rank returns the single-process per-item results, to float rounding (a share is batched with
    different neighbours), for 1/world_size of the model time.

    lm-eval's own data parallelism (rank and world size from ``accelerate``) splits documents
    instead, which changes which few-shot examples each document draws, and gathers the results
    to rank 0 only.
    """
    from lm_eval.api.model import LM

    from .distributed import run_sharded

    class ShardedLM(LM):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()  # rank 0 of 1, as far as lm-eval knows: every rank runs the whole evaluation

        def __getattr__(self, name: str) -> Any:  # batch_sizes, get_model_info, MULTIMODAL, ...
            return getattr(inner, name)

        @property
        def device(self) -> Any:
            return inner.device

        @property
        def tokenizer_name(self) -> str:
            return str(inner.tokenizer_name)

        def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
            return inner.apply_chat_template(*args, **kwargs)

        def chat_template(self, *args: Any, **kwargs: Any) -> Any:
            return inner.chat_template(*args, **kwargs)

        def _shard(self, kind: str, requests: list[Any], **kwargs: Any) -> list[Any]:
            digest = hashlib.sha256(repr([r.args for r in requests]).encode()).hexdigest()
            return run_sharded(
                parallel,
                f"lm-eval {kind} on {handle.role} {handle.label} ({len(requests)} requests)",
                len(requests),
                digest,
                lambda positions: list(getattr(inner, kind)([requests[i] for i in positions], **kwargs)),
                models={handle.role: handle},
            )

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._shard("loglikelihood", requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._shard("loglikelihood_rolling", requests, disable_tqdm=disable_tqdm)

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._shard("generate_until", requests, disable_tqdm=disable_tqdm)

    return ShardedLM()


def _lm(handle: "ModelHandle", batch_size: int, seed: int, backend: str, warn: Callable[[str], None]) -> Any:
    """lm-eval's model object for ``handle``: HFLM on the loaded module, or VLLM when asked and available."""
    if backend not in BACKENDS:
        raise RetentionError(f"unknown retention backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        if effective_backend(handle, backend) == "vllm":
            from lm_eval.models.vllm_causallms import VLLM

            return VLLM(**vllm_arguments(handle, batch_size, seed))
        why = "vllm is not installed" if not available("vllm") else f"vllm needs a CUDA device, not {handle.device}"
        warn(f"retention backend vllm requested but {why}; running lm-eval's HF backend instead")
    from lm_eval.models.huggingface import HFLM

    return HFLM(
        pretrained=handle.raw_model, tokenizer=handle.tokenizer, batch_size=batch_size, device=str(handle.device)
    )


def effective_backend(handle: "ModelLike", backend: str) -> str:
    """The backend that will actually run (cache keys need it: vLLM's numbers differ slightly from HF's)."""
    return "vllm" if backend == "vllm" and available("vllm") and handle.device.type == "cuda" else "hf"


def run_lm_eval(
    handle: "ModelHandle",
    task_manager: Any,
    tasks: dict[str, Any],
    num_fewshot: int | None,
    limit: int | float | None,
    batch_size: int,
    seed: int,
    apply_chat_template: bool = False,
    backend: str = "hf",
    warn: Callable[[str], None] | None = None,
    parallel: "DataParallel | None" = None,
    samples: dict[str, list[int]] | None = None,
) -> dict[str, TaskRun]:
    """Evaluate ``handle`` on the given Task objects with lm-eval, samples logged.

    ``samples``: only these documents of each task (lm-eval's per-document selection; ``limit`` is then
    not passed: the documents are chosen among those the limit allows).

    With ``parallel`` (a ``torchrun`` launch) the HF backend's model calls are split between the
    ranks (:func:`_sharded_lm`); vLLM runs whole on every rank (it is one engine per process).
    """
    handle.load()  # its own progress line, before lm-eval's
    label = f"lm-eval {', '.join(tasks)} on {handle.role} {handle.short_label}"
    with (
        progress.task(label),
        handle.active(),
        _quiet_lm_eval(),
        progress.third_party_quiet(),
        finite_logits(handle),
    ):
        lm = _lm(handle, batch_size, seed, backend, warn or (lambda message: None))
        if parallel is not None and effective_backend(handle, backend) == "hf":
            lm = _sharded_lm(lm, parallel, handle)
        res = simple_evaluate_results(
            lm, task_manager, tasks, num_fewshot=num_fewshot, limit=None if samples is not None else limit,
            samples=samples, seed=seed, apply_chat_template=apply_chat_template,
        )  # fmt: skip
    if res is None:
        raise RetentionError("lm-eval returned no results")
    try:
        return _reduce(res, tasks, label=f"{handle.role} {handle.label!r}")
    except NonFiniteError as exc:
        raise handle.fail(exc) from None


@contextlib.contextmanager
def finite_logits(handle: "ModelLike") -> Iterator[None]:
    """Fail any forward pass of ``handle`` whose logits hold NaN or +inf, from inside lm-eval.

    lm-eval turns logits into answers (argmax, greedy decoding), and the
    argmax of NaN logits is a valid-looking answer: a model with NaN outputs
    would get a finite accuracy. The check runs on every forward pass (a sum,
    and a full scan only when the sum is not finite: a -inf logit, which rules a
    token out, is allowed). The model is marked unusable.
    """
    import torch

    head = handle.raw_model.get_output_embeddings()
    if head is None:  # nothing to hook; the per-item checks in _reduce still apply
        yield
        return

    def check(module: Any, args: Any, output: Any) -> None:
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            return
        if bool(torch.isfinite(logits.sum(dtype=torch.float32))):
            return
        if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
            raise handle.fail(
                NonFiniteError(
                    f"{handle.role} {handle.label!r} produced NaN/inf logits under lm-eval: its answers would be "
                    "the argmax of NaN, so it cannot be scored (weights that overflow, or a diverged fine-tune)"
                )
            )

    hook = head.register_forward_hook(check)
    try:
        yield
    finally:
        hook.remove()


def task_keys(
    handle: "ModelHandle",
    loaded: LoadedTasks,
    num_fewshot: int | None,
    limit: int | float | None,
    seed: int,
    apply_chat_template: bool,
    backend: str,
    settings: dict[str, Any] | None,
) -> dict[str, str]:
    """The cache key of ``handle``'s results on each task (:func:`base_cache_key` with every run setting)."""
    full = {"num_fewshot": num_fewshot, "limit": limit, "apply_chat_template": apply_chat_template, "seed": seed,
            **(settings or {})}  # fmt: skip
    if effective_backend(handle, backend) != "hf":  # hf entries keep their keys
        full["backend"] = effective_backend(handle, backend)
    return {
        name: base_cache_key(name, task, loaded.dirs[name], handle.fingerprint, full)
        for name, task in loaded.tasks.items()
    }


def series_key(
    base: "ModelHandle",
    names: Sequence[str],
    include_path: Any,
    num_fewshot: int | None,
    limit: int | float | None,
    seed: int,
    apply_chat_template: bool,
    backend: str,
    settings: dict[str, Any] | None,
    metric: str | None,
    filter_: str | None,
) -> str:
    """A retention check's series in the run history: the base cache's keys of its tasks, its metric and filter.

    Two checks with the same series measure the same thing on the same base: their drops are comparable.
    """
    loaded = load_tasks(names, include_paths(include_path))
    keys = task_keys(base, loaded, num_fewshot, limit, seed, apply_chat_template, backend, settings)
    return cache_key(kind="retention", tasks=sorted(keys.items()), metric=metric, filter=filter_)


def _cached_runs(
    handle: "ModelHandle",
    tasks: Sequence[str],
    keys: dict[str, str],
    cache: ResultCache | None,
    parallel: "DataParallel | None",
) -> dict[str, TaskRun]:
    """The runs ``cache`` holds under ``keys`` (by task name); under ``parallel``, those every rank holds."""
    runs: dict[str, TaskRun] = {}
    if cache is not None:
        for name, key in keys.items():
            hit = cache.load(CACHE_NAMESPACE, key, validate=functools.partial(invalid_task_run, task=name))
            if hit is not None:
                runs[name] = TaskRun.from_json(hit)
    if parallel is not None:
        # A rank's cache may differ (one cache directory per node, an entry written a moment ago):
        # a task any rank lacks is evaluated by all, or the ranks' model calls would not pair up.
        held = parallel.exchange(f"lm-eval cache of {handle.role} for {', '.join(tasks)}", lambda: sorted(runs),
                                 device="cpu")  # fmt: skip
        runs = {n: r for n, r in runs.items() if all(n in h for h in held)}
    return runs


def evaluate(
    handle: "ModelHandle",
    names: Sequence[str],
    include_path: Any = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    seed: int = DEFAULT_SEED,
    apply_chat_template: bool = False,
    cache: ResultCache | None = None,
    settings: dict[str, Any] | None = None,
    backend: str = "hf",
    warn: Callable[[str], None] | None = None,
    parallel: "DataParallel | None" = None,
    samples: dict[str, list[int]] | None = None,
) -> dict[str, TaskRun]:
    """Per-item results of ``handle`` on tasks; served from ``cache`` when the key matches.

    ``samples`` selects documents of some tasks (the candidate's chunks, :mod:`.early_stop`): only those
    tasks are evaluated, and a partial run is never cached (nor served from the cache).

    ``backend``: ``hf`` (lm-eval's HFLM on the loaded model) or ``vllm``
    (lm-eval's vLLM backend; falls back to ``hf`` with a warning when vLLM is
    not installed or the device is not CUDA). ``parallel``: the ranks of a
    ``torchrun`` launch share the model calls (:func:`run_lm_eval`); a task is
    served from the cache only where every rank has it, so that the ranks make
    the same calls.
    """
    if backend not in BACKENDS:
        raise RetentionError(f"unknown retention backend {backend!r}; use one of {', '.join(BACKENDS)}")
    loaded = load_tasks(names, include_paths(include_path))
    if samples is not None:
        loaded = loaded.only([n for n in loaded.tasks if samples.get(n)])
        cache = None  # a partial run is never stored as, or served for, a full one
    tm, tasks = loaded.manager, loaded.tasks
    keys = {} if cache is None else task_keys(handle, loaded, num_fewshot, limit, seed, apply_chat_template,
                                              backend, settings)  # fmt: skip
    runs = _cached_runs(handle, list(tasks), keys, cache, parallel)
    todo = {n: t for n, t in tasks.items() if n not in runs}
    if todo:
        fresh = run_lm_eval(
            handle, tm, todo, num_fewshot, limit, batch_size, seed, apply_chat_template, backend=backend, warn=warn,
            parallel=parallel, samples=samples,
        )  # fmt: skip
        # Every rank holds the same gathered results: one writer per node (nodes may each have their own
        # cache directory; on a shared one their writes are atomic and identical), the others remember.
        writes = parallel is None or parallel.launch.local_rank == 0
        for name, run in fresh.items():
            runs[name] = run
            if cache is not None and writes:
                cache.store(CACHE_NAMESPACE, keys[name], run.to_json(), meta={"task": name, "model": handle.label})
            elif cache is not None:
                cache.remember(CACHE_NAMESPACE, keys[name], run.to_json())
    return {n: runs[n] for n in tasks}


def lm_eval_aggregation(name: str) -> Any:
    """lm-eval's own aggregation function registered under ``name``."""
    from lm_eval.api.registry import get_aggregation

    return get_aggregation(name)
