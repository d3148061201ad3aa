"""``Forgetguard``: the comparison of a candidate with its base (the fixture's object).

Every check computes a result object first, then decides; assertions raise
subclasses of ``AssertionError`` whose message says what was measured, the
value, the budget, the margin, the confidence interval, n and the worst
examples. Each assertion is also recorded (``record`` callback) for the
session's reports.

Example (in a test)::

    def test_task_kl(forgetguard):
        result = forgetguard.assert_kl_budget("prompts.jsonl", budget=0.05)
        assert result.top1_agreement > 0.9
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import context
from .errors import (
    CapabilityForgotten,
    DriftExceeded,
    ForgetguardError,
    KLBudgetExceeded,
    PromptFileError,
    TokenizerMismatchError,
)
from .kl import DIRECTIONS, METRICS, KLResult, PromptKL, TokenSequence, teacher_forced_kl
from .prompts import PromptRecord, PromptsLike, as_records, encode_prompt, encode_response
from .records import CheckRecord

if TYPE_CHECKING:
    from .cache import ResultCache
    from .distributed import DataParallel
    from .drift import DriftResult
    from .models import ModelHandle
    from .retention import RetentionResult

SAMPLE_FROM = ("base", "candidate", "dataset")
DEFAULT_SAMPLE_FROM = {"forward": "base", "reverse": "candidate", "symmetric": "base"}


def _check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


class Forgetguard:
    """Checks of ``candidate`` against ``base``.

    ``record`` receives a :class:`CheckRecord` for every assertion (pass,
    fail or error); ``name`` defaults to the running test's id.
    """

    def __init__(
        self,
        base: "ModelHandle",
        candidate: "ModelHandle",
        seed: int = 1234,
        record: Callable[[CheckRecord], None] | None = None,
        default_name: str = "forgetguard",
        cache: "ResultCache | None" = None,
        warn: Callable[[str], None] | None = None,
        parallel: "DataParallel | None" = None,
    ) -> None:
        self.base = base
        self.candidate = candidate
        self.seed = seed
        self._sink = record or (lambda rec: None)
        self.default_name = default_name
        self.cache = cache
        self._warn = warn or context.warn
        self._compatible: dict[bool, int] = {}
        self._recorded: set[int] = set()  # ids of the records already handed to ``record``
        # Under torchrun: the ranks that share each KL check's prompts (None: this process scores all).
        self.parallel = parallel

    def __repr__(self) -> str:
        return f"<Forgetguard base={self.base.label!r} candidate={self.candidate.label!r}>"

    # -- KL --------------------------------------------------------------------

    def _vocab(self, allow_vocab_mismatch: bool) -> int:
        from .models import check_compatible

        if allow_vocab_mismatch not in self._compatible:
            try:
                vocab = check_compatible(self.base, self.candidate, allow_vocab_mismatch)
            except TokenizerMismatchError as exc:
                # No option makes this pair comparable: the candidate is unusable for every later check.
                raise self.candidate.fail(exc) from None
            self._compatible[allow_vocab_mismatch] = vocab
        return self._compatible[allow_vocab_mismatch]

    def _context_window_check(
        self, records: Sequence[PromptRecord], prompt_ids: list[list[int]], responses: list[int], sampled: bool
    ) -> None:
        """Every sequence must fit both models' context windows: a truncated one is not the one asked about.

        The models read the prompt and every response token but the last (which is only predicted).
        """
        from .models import context_window

        for handle in (self.base, self.candidate):
            window = context_window(handle)
            if window is None:
                continue
            for rec, ids, more in zip(records, prompt_ids, responses):
                if len(ids) + more - 1 > window:
                    raise PromptFileError(
                        f"{rec.where} is {len(ids)} tokens, + {more} response tokens = {len(ids) + more}, more than "
                        f"the context window of {handle.role} {handle.label!r} ({window} tokens): shorten the "
                        "prompt" + (" or lower max_new_tokens" if sampled else " or its response")
                    )

    @contextlib.contextmanager
    def _measuring(self) -> Iterator[None]:
        """Measurements called directly (``fg.kl(...)`` in a test) run as a check named after the test."""
        if context.current_check() is not None:
            yield
            return
        with context.running_check(self.default_name):
            self._model_notices()
            yield

    def _model_notices(self) -> None:
        """Warnings every check of this pair carries: a candidate identical to its base, adapter notices."""
        cand = self.candidate
        try:
            same = cand.spec.kind != "peft" and self.base.fingerprint == cand.fingerprint  # base first: load order
        except ForgetguardError:
            same = False  # the check itself will say what is wrong with the model
        if same:
            message = (
                f"candidate {cand.label!r} is identical to the base {self.base.label!r} (same fingerprint "
                f"{cand.fingerprint}): every check passes trivially; is this the model you meant to test?"
            )
            if message not in cand.notices:
                cand.notices.append(message)
                self._warn(message)
        for message in cand.notices:
            context.note(message)

    def kl(
        self,
        prompts: PromptsLike,
        direction: str = "forward",
        sample_from: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        batch_size: int = 8,
        limit: int | None = None,
        allow_vocab_mismatch: bool = False,
    ) -> KLResult:
        """Measure the exact per-token KL on ``prompts`` (a JSONL path or a list).

        ``direction``: ``forward`` = KL(base || candidate) (default), ``reverse``,
        ``symmetric`` (their mean). ``sample_from``: ``base`` (default for
        forward and symmetric), ``candidate`` (default for reverse), or
        ``dataset`` (teacher-forced on each prompt's ``response``). Sampling
        is ancestral at ``temperature`` (1.0: the model's own distribution,
        which makes the estimate unbiased), seeded per prompt; the sampled
        token ids are cached in ``cache``, keyed by the sampling model's
        fingerprint, the prompts and the sampling settings, so a rerun with
        an unchanged model generates nothing.

        With ``parallel`` (a ``torchrun`` launch) each rank samples and scores
        every ``world_size``-th prompt and the per-prompt values are gathered,
        so every rank returns the result a single process would (to float
        rounding), in prompt order.

        Example::

            result = forgetguard.kl("prompts.jsonl", sample_from="dataset")
            result.value, result.ci_low, result.ci_high, result.worst(3)
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        sample_from = sample_from or DEFAULT_SAMPLE_FROM[direction]
        if sample_from not in SAMPLE_FROM:
            raise ValueError(f"sample_from must be one of {', '.join(SAMPLE_FROM)}, got {sample_from!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        _check_number("temperature", temperature, minimum=1e-6)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        with self._measuring():
            return self._kl(
                prompts, direction, sample_from, max_new_tokens, temperature, batch_size, limit, allow_vocab_mismatch
            )

    def _kl(
        self,
        prompts: PromptsLike,
        direction: str,
        sample_from: str,
        max_new_tokens: int,
        temperature: float,
        batch_size: int,
        limit: int | None,
        allow_vocab_mismatch: bool,
    ) -> KLResult:
        parallel = self.parallel
        rank, world = (parallel.rank, parallel.world_size) if parallel is not None else (0, 1)
        local: dict[str, Any] = {}  # what this process keeps: the tokenizer, and its own KLResult

        def measure() -> tuple[str, list[PromptKL]]:
            # Every rank reads and encodes every prompt (cheap), so a bad line gives the same
            # error as a single process, and the digest proves all ranks read the same prompts.
            records = as_records(prompts)
            if limit is not None:
                records = records[:limit]
            vocab = self._vocab(allow_vocab_mismatch)
            tok = self.base.tokenizer
            local["tokenizer"] = tok
            prompt_ids = [encode_prompt(tok, r) for r in records]
            fixed = [encode_response(tok, r) for r in records] if sample_from == "dataset" else None
            lengths = [len(f) for f in fixed] if fixed is not None else [max_new_tokens] * len(records)
            self._context_window_check(records, prompt_ids, lengths, sampled=fixed is None)
            digest = _token_digest(prompt_ids, fixed) if world > 1 else ""
            mine = _shard_positions(len(records), rank, world)
            if fixed is not None:
                responses = [fixed[i] for i in mine]
            else:
                from .generation import cached_sample_responses

                source = self.base if sample_from == "base" else self.candidate
                # Cached by the source model's fingerprint: a rerun with an unchanged base samples nothing.
                # Seeded per prompt: a shard's samples are the ones a single process draws for them.
                responses = cached_sample_responses(
                    source,
                    [prompt_ids[i] for i in mine],
                    max_new_tokens,
                    seed=self.seed,
                    temperature=temperature,
                    batch_size=max(batch_size, 16),
                    vocab=vocab,
                    cache=self.cache,
                )
                empty = [records[i].where for i, resp in zip(mine, responses) if not resp]
                if empty:
                    raise PromptFileError(f"sampling gave empty responses for {', '.join(empty[:5])}")
            seqs = [
                TokenSequence(
                    index=records[i].index, prompt_ids=prompt_ids[i], response_ids=resp, label=records[i].display()
                )
                for i, resp in zip(mine, responses)
            ]
            if not seqs and world > 1:  # more ranks than prompts: this rank has nothing to score
                return digest, []
            local["result"] = scored = teacher_forced_kl(
                self.base,
                self.candidate,
                seqs,
                direction=direction,
                sample_from=sample_from,
                batch_size=batch_size,
                vocab=vocab,
                seed=self.seed,
                decode=lambda i: tok.decode([i]),
            )
            # Only the per-prompt values travel: the KLResult's statistics are recomputed from all of them.
            return digest, scored.prompts

        if parallel is None:
            measure()
            result: KLResult = local["result"]
            return result
        what = (
            f"kl({_describe_prompts(prompts)}, direction={direction}, sample_from={sample_from}, "
            f"max_new_tokens={max_new_tokens}, temperature={temperature!r}, limit={limit}, "
            f"base={self.base.label}, candidate={self.candidate.label})"
        )
        parts = self._exchange(what, measure)
        digests = [digest for digest, _ in parts]
        if len(set(digests)) > 1:
            from .distributed import DistributedError

            raise DistributedError(
                f"ranks read different prompts for {what} (token digests {', '.join(d[:12] for d in digests)}): "
                "every rank must see the same prompt file and tokenizer (on several nodes: the same files)"
            )
        from .distributed import unshard

        tok = local["tokenizer"]
        return KLResult(
            direction=direction,
            sample_from=sample_from,
            prompts=unshard([per_prompt for _, per_prompt in parts]),
            decode=lambda i: tok.decode([i]),
            seed=self.seed,
        )

    def _exchange(self, what: str, measure: Callable[[], Any]) -> list[Any]:
        """``parallel.exchange``, keeping the ranks in agreement on which models are unusable."""
        from .distributed import UNUSABLE_ATTR

        parallel = self.parallel
        if parallel is None:
            raise RuntimeError("_exchange is for a torchrun launch only")
        roles = {"base": self.base, "candidate": self.candidate}

        def marked() -> Any:
            try:
                return measure()
            except Exception as exc:
                setattr(exc, UNUSABLE_ATTR, tuple(r for r, h in roles.items() if h.failure is not None))
                raise

        try:
            return parallel.exchange(what, marked, device=self.base.store.device)
        except Exception as exc:
            # Another rank found a model broken: it is as unusable here (ForgetguardErrors only; others
            # become a DistributedError naming them, and mark nothing).
            if isinstance(exc, ForgetguardError):
                for role in getattr(exc, UNUSABLE_ATTR, ()):
                    if roles[role].failure is None:
                        roles[role].fail(exc)
            raise

    def assert_kl_budget(
        self,
        prompts: PromptsLike,
        budget: float,
        name: str | None = None,
        **kl_options: Any,
    ) -> KLResult:
        """Fail with :class:`KLBudgetExceeded` unless the pooled mean KL <= ``budget``.

        Returns the :class:`KLResult` so a test can assert more on it.
        """
        __tracebackhide__ = True
        budget = _check_number("budget", budget)
        direction = kl_options.get("direction", "forward")
        rec = CheckRecord(
            name=name or self.default_name,
            kind="kl",
            candidate=self.candidate.label,
            metric=METRICS.get(direction, str(direction)),
            budget=budget,
        )
        with self._check(rec):
            result = self.kl(prompts, **kl_options)
            result.budget = budget
            rec.value, rec.ci_low, rec.ci_high, rec.n = result.value, result.ci_low, result.ci_high, result.n_prompts
            rec.details = {
                "n_tokens": result.n_tokens,
                "sample_from": result.sample_from,
                "kl_forward_mean": result.forward_mean,
                "kl_reverse_mean": result.reverse_mean,
                "median": result.median,
                "p90": result.p90,
                "p99": result.p99,
                "max": result.max,
                "top1_agreement": result.top1_agreement,
                # The per-token KL distribution (0th..100th percentile) for plots: a fixed 101 numbers
                # whatever the token count, rounded to 6 significant digits to keep JSON short.
                "kl_quantiles": [float(f"{q:.6g}") for q in result.quantiles(101)],
            }
            passed = result.finite and result.value <= budget
            message = None
            if not passed:
                margin = result.value - budget
                message = (
                    f"KL budget exceeded for candidate {self.candidate.label!r} vs base {self.base.label!r}:\n"
                    f"  {result.metric} = {result.value:.6g} nats/token > budget {budget:g} "
                    f"(over by {margin:.4g}{f', {100 * margin / budget:.0f}%' if budget else ''})\n"
                    f"  95% CI {result.ci_low:.4g}..{result.ci_high:.4g}, n = {result.n_prompts} prompts, "
                    f"{result.n_tokens} response tokens\n"
                    f"  {result.summary()}\n"
                    f"  prompts where the models disagree most:\n{result.format_worst()}"
                )
                rec.details["message"] = message
            self._finish(rec, passed=passed)
            if message is not None:
                raise KLBudgetExceeded(message, result)
            return result

    # -- drift -----------------------------------------------------------------

    def drift(self, tolerance: float = 1e-5) -> "DriftResult":
        """Weight change of the candidate relative to the base (see :mod:`.drift`)."""
        from .drift import weight_drift
        from .models import tokenizer_difference

        tolerance = _check_number("tolerance", tolerance)
        with self._measuring():
            result = weight_drift(self.base, self.candidate, tolerance=tolerance)
            differ = tokenizer_difference(self.base, self.candidate)
            if differ is not None:
                self._warn(
                    f"{differ}: the weights were compared, but the two models do not read text the same way "
                    "(a KL or retention check of this pair would say more)"
                )
            return result

    def assert_drift(
        self,
        max_relative_l2: float | None = None,
        max_changed_fraction: float | None = None,
        tolerance: float = 1e-5,
        name: str | None = None,
    ) -> "DriftResult":
        """Fail with :class:`DriftExceeded` when the weights moved more than allowed."""
        __tracebackhide__ = True
        if max_relative_l2 is None and max_changed_fraction is None:
            raise ValueError("assert_drift needs max_relative_l2 and/or max_changed_fraction")
        limits = {
            "relative_l2": None if max_relative_l2 is None else _check_number("max_relative_l2", max_relative_l2),
            "changed_fraction": None
            if max_changed_fraction is None
            else _check_number("max_changed_fraction", max_changed_fraction),
        }
        metric = "relative_l2" if limits["relative_l2"] is not None else "changed_fraction"
        rec = CheckRecord(
            name=name or self.default_name,
            kind="drift",
            candidate=self.candidate.label,
            metric=metric,
            budget=limits[metric],
        )
        with self._check(rec):
            result = self.drift(tolerance)
            values = {"relative_l2": result.relative_l2, "changed_fraction": result.changed_fraction}
            rec.value, rec.n = values[metric], result.n_params
            rec.details = {**values, "tolerance": tolerance, "n_tensors": result.n_tensors}
            over = [
                f"{k} = {values[k]:.6g} > {limit:g}"
                for k, limit in limits.items()
                if limit is not None and not (math.isfinite(values[k]) and values[k] <= limit)
            ]
            message = None
            if over:
                worst = "\n".join(
                    f"    {l.name}: relative L2 {l.relative_l2:.4g}, {100 * l.changed_fraction:.1f}% changed"
                    for l in result.worst_layers(5)
                )
                message = (
                    f"weight drift of candidate {self.candidate.label!r} exceeds its limit: {'; '.join(over)}\n"
                    f"  {result.summary()}\n  layers that moved most:\n{worst}"
                )
                rec.details["message"] = message
            self._finish(rec, passed=not over)
            if message is not None:
                raise DriftExceeded(message, result)
            return result

    # -- retention -------------------------------------------------------------

    def retention(
        self,
        task: str | Sequence[str],
        metric: str | None = None,
        include_path: Any = None,
        num_fewshot: int | None = None,
        limit: int | float | None = None,
        filter: str | None = None,  # noqa: A002 (lm-eval's word)
        batch_size: int = 8,
        apply_chat_template: bool = False,
        backend: str = "hf",
    ) -> "RetentionResult":
        """Run lm-eval task(s) on both models and compare them item by item.

        ``task`` is a task or group name or a list of them (looked up in the
        shipped probes, ``include_path`` and lm-eval's own tasks); ``metric``
        defaults to the task's first metric. Several tasks are pooled over
        their items (lm-eval's size-weighted group score). The base's
        per-item results come from the cache when nothing they depend on
        changed. ``backend="vllm"`` runs lm-eval's vLLM backend (CUDA, ``vllm``
        installed; otherwise a warning and the HF backend).
        """

        names = [task] if isinstance(task, str) else list(task)
        if limit is not None and (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or not (0 < limit <= 1 or (limit > 1 and float(limit).is_integer()))
        ):
            raise ValueError(
                f"limit must be a positive number of items: a whole number (>= 1) or a fraction in (0, 1], got {limit!r}"
            )
        if num_fewshot is not None and (
            isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0
        ):
            raise ValueError(f"num_fewshot must be an integer >= 0, got {num_fewshot!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        with self._measuring():
            return self._retention(
                names, metric, include_path, num_fewshot, limit, filter, batch_size, apply_chat_template, backend
            )

    def _retention(
        self,
        names: list[str],
        metric: str | None,
        include_path: Any,
        num_fewshot: int | None,
        limit: int | float | None,
        filter: str | None,  # noqa: A002
        batch_size: int,
        apply_chat_template: bool,
        backend: str,
    ) -> "RetentionResult":
        from .retention import compare, evaluate, lm_eval_aggregation

        self._vocab(False)
        options = dict(
            include_path=include_path,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            seed=self.seed,
            apply_chat_template=apply_chat_template,
            backend=backend,
            warn=self._warn,
        )
        settings = {"dtype": self.base.store.dtype, "device": self.base.store.device.split(":")[0]}
        misses = self.cache.misses if self.cache is not None else 0
        base_runs = evaluate(self.base, names, cache=self.cache, settings=settings, **options)
        base_cached = self.cache is not None and self.cache.misses == misses
        cand_runs = evaluate(self.candidate, names, **options)
        result = compare(
            base_runs, cand_runs, metric=metric, filter_=filter, seed=self.seed, aggregation_fn=lm_eval_aggregation
        )
        result.base_cached = base_cached
        return result

    def assert_retained(
        self,
        task: str | Sequence[str],
        max_drop: float | None = None,
        max_drop_relative: float | None = None,
        gate: str = "observed",
        name: str | None = None,
        **retention_options: Any,
    ) -> "RetentionResult":
        """Fail with :class:`CapabilityForgotten` when the candidate lost more than allowed.

        ``max_drop`` is absolute (metric units), ``max_drop_relative`` a fraction
        of the base score; with both, the tighter applies. ``gate``: ``observed``
        (default) fails when the observed drop exceeds the allowance;
        ``significant`` only when it does so with 95% confidence; ``strict``
        unless the 95% CI shows the drop is within the allowance.
        """
        __tracebackhide__ = True
        from .retention import GATES, allowance_for, gate_passes

        if gate not in GATES:
            raise ValueError(f"gate must be one of {', '.join(GATES)}, got {gate!r}")
        for label, v in (("max_drop", max_drop), ("max_drop_relative", max_drop_relative)):
            if v is not None:
                _check_number(label, v)
        if max_drop is None and max_drop_relative is None:
            raise ValueError("assert_retained needs max_drop (absolute) and/or max_drop_relative")
        rec = CheckRecord(
            name=name or self.default_name,
            kind="retention",
            candidate=self.candidate.label,
            metric=str(retention_options.get("metric") or "-"),
        )
        with self._check(rec):
            result = self.retention(task, **retention_options)
            allowance = allowance_for(result.base_value, max_drop, max_drop_relative)
            result.allowance, result.gate = allowance, gate
            passed = gate_passes(result, allowance, gate)
            lo, hi = result.drop_ci
            rec.metric = result.metric
            rec.value, rec.base_value, rec.candidate_value, rec.delta = (
                result.candidate_value,
                result.base_value,
                result.candidate_value,
                result.delta,
            )
            rec.budget, rec.ci_low, rec.ci_high, rec.n = allowance, result.ci_low, result.ci_high, result.n
            rec.p_value = result.p_value
            rec.details = {
                "tasks": list(result.tasks),
                "gate": gate,
                "drop": result.drop,
                "drop_ci": [lo, hi],
                # How the allowance (``budget``) was derived, so a plot or reader can say "5% of base".
                "max_drop": max_drop,
                "max_drop_relative": max_drop_relative,
                "higher_is_better": result.higher_is_better,
                "p_value": result.p_value,
                "base_cached": result.base_cached,
                "lost": result.lost,
                "gained": result.gained,
                "per_task": [vars(t) for t in result.per_task],
            }
            width = hi - lo
            underpowered = None
            if width > allowance:
                needed = math.ceil(result.n * (width / allowance) ** 2) if allowance > 0 else None
                rec.details["underpowered"] = True
                underpowered = (
                    f"retention check {rec.name!r} is underpowered: its 95% CI of the drop is {width:.3g} wide, "
                    f"wider than the allowance {allowance:.3g}"
                    + (f"; about {needed} items would be needed (it has {result.n})" if needed else "")
                )
            message = None
            if not passed:
                flips = "\n".join(
                    f"    [{f.task} #{f.doc_id}] ...{f.prompt[-120:]!r} -> right {f.target!r}; base said "
                    f"{f.base_answer!r}, candidate said {f.candidate_answer!r}"
                    for f in result.flipped
                )
                per_task = "\n".join(
                    f"    {t.task}: {t.base_value:.4g} -> {t.candidate_value:.4g} ({t.n} items)"
                    for t in result.per_task
                )
                message = (
                    f"capability forgotten by candidate {self.candidate.label!r} (gate: {gate}):\n"
                    f"  {result.summary()}\n"
                    f"  drop {result.drop:+.4g} (95% CI {lo:+.4g}..{hi:+.4g}) vs allowed {allowance:.4g}\n"
                    + (f"  per task:\n{per_task}\n" if len(result.per_task) > 1 else "")
                    + (
                        f"  items the base got right and the candidate got wrong (first {len(result.flipped)}):\n{flips}"
                        if flips
                        else ""
                    )
                    + (f"\n  note: {underpowered}" if underpowered else "")
                )
                rec.details["message"] = message
            if underpowered:
                context.note(underpowered)
            self._finish(rec, passed=passed)
            if message is not None:
                raise CapabilityForgotten(message, result)
            if underpowered:
                # After recording: a warnings-as-errors setting must not lose the check's record.
                self._warn(underpowered)
            return result

    @contextlib.contextmanager
    def _check(self, rec: CheckRecord) -> Iterator[None]:
        """Run one check: named (for the errors of models it breaks), its warnings into its record,
        both models usable (a model that failed an earlier check fails this one the same way), and a
        check that cannot measure recorded as an error before the exception goes on."""
        __tracebackhide__ = True
        with context.running_check(rec.name):
            try:
                self._model_notices()
                self.base.ensure_usable()
                self.candidate.ensure_usable()
                yield
            except Exception as exc:
                if id(rec) not in self._recorded:  # a failure, or a warning turned error after it, is recorded
                    self._finish(rec, error=f"{type(exc).__name__}: {exc}")
                raise

    def _finish(self, rec: CheckRecord, passed: bool = False, error: str | None = None) -> None:
        self._recorded.add(id(rec))
        rec.settle(passed, error)
        notes = context.current_notes()
        if notes:
            rec.details["warnings"] = notes
        rec.base_info, rec.candidate_info = _model_info(self.base), _model_info(self.candidate)
        self._sink(rec)


def _shard_positions(n: int, rank: int, world: int) -> list[int]:
    """Positions (in the prompt list) this rank samples and scores; all of them in a single process."""
    from .distributed import shard

    return shard(range(n), rank, world) if world > 1 else list(range(n))


def _token_digest(prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]] | None) -> str:
    """sha256 of the encoded prompts (and fixed responses): equal on ranks that read the same data."""
    import hashlib
    import json

    blob = json.dumps([[list(map(int, p)) for p in prompt_ids], responses and [list(map(int, r)) for r in responses]])
    return hashlib.sha256(blob.encode()).hexdigest()


def _describe_prompts(prompts: PromptsLike) -> str:
    """A short name for a prompt source, for messages about ranks out of step."""
    if isinstance(prompts, (str, os.PathLike)):
        return str(prompts)
    return f"<{type(prompts).__name__} of {len(prompts)} prompts>" if hasattr(prompts, "__len__") else "<prompts>"


def _model_info(handle: "ModelHandle") -> dict[str, Any]:
    """What a report says about a model: its SPEC and, when it can be computed, its content fingerprint."""
    from .errors import ForgetguardError

    try:
        fingerprint: str | None = handle.fingerprint
    except ForgetguardError:
        fingerprint = None
    return {"spec": handle.label, "fingerprint": fingerprint}
