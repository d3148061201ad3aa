"""KL checks: the exact per-token KL between base and candidate on a new task's prompts, and its budget.

Options (their enums and defaults are :data:`~pytest_forgetguard.schema.KL_KEYS`):
``direction`` (forward = KL(base || candidate), reverse, symmetric),
``sample_from`` (who writes the responses: base, candidate, or the dataset's
``response``), ``max_new_tokens``, ``temperature``, ``batch_size``, ``limit``,
``allow_vocab_mismatch``. The measurement reads and encodes the prompts,
checks they fit both context windows, samples the responses (cached by the
sampling model's fingerprint) and scores them with
:func:`~pytest_forgetguard.kl.teacher_forced_kl`; under torchrun the ranks
share the prompts (:func:`~pytest_forgetguard.distributed.run_sharded`).

Example (in a test)::

    def test_task_kl(forgetguard):
        result = forgetguard.assert_kl_budget("prompts.jsonl", budget=0.05)
        assert result.top1_agreement > 0.9
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cache import cache_key
from ..errors import KLBudgetExceeded, PromptFileError
from ..kl import METRICS, KLOptions, KLResult, PromptKL, TokenSequence, teacher_forced_kl
from ..prompts import PromptRecord, PromptsLike, as_records, encode_prompt, encode_response, token_digest
from ..schema import KL_KEYS, range_text
from .base import LARGE_INPUT, PairChecks, check_number

if TYPE_CHECKING:
    from ..distributed import DataParallel
    from ..models import ModelLike

DIRECTIONS: tuple[str, ...] = KL_KEYS["direction"].enum
SAMPLE_FROM: tuple[str, ...] = KL_KEYS["sample_from"].enum
# The schema documents this default in words ("base, candidate when reverse"); this is the rule.
DEFAULT_SAMPLE_FROM = {"forward": "base", "reverse": "candidate", "symmetric": "base"}


@dataclass(frozen=True)
class _KLRequest:
    """One :meth:`KLChecks.kl` call's arguments, validated (``sample_from`` resolved from the direction)."""

    prompts: PromptsLike
    direction: str
    sample_from: str
    max_new_tokens: int
    temperature: float
    batch_size: int
    limit: int | None
    allow_vocab_mismatch: bool


@dataclass(frozen=True)
class _Prepared:
    """The prompts as read and encoded once per call; ``fixed`` is the dataset's responses, None when sampled."""

    records: list[PromptRecord]
    prompt_ids: list[list[int]]
    fixed: list[list[int]] | None
    vocab: int
    tokenizer: Any

    def decode(self, token: int) -> str:
        """One token id as text, for the report of the worst positions."""
        text: str = self.tokenizer.decode([token])
        return text


class KLChecks(PairChecks):
    """``kl()`` measures; ``assert_kl_budget()`` gates on it."""

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
        _check_range("max_new_tokens", max_new_tokens, integer=True)
        _check_range("temperature", temperature)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        request = _KLRequest(
            prompts, direction, sample_from, max_new_tokens, temperature, batch_size, limit, allow_vocab_mismatch
        )
        with self._measuring():
            return self._measure_kl(request)

    def assert_kl_budget(
        self,
        prompts: PromptsLike,
        budget: float,
        name: str | None = None,
        **kl_options: Any,
    ) -> KLResult:
        """Fail with :class:`~pytest_forgetguard.errors.KLBudgetExceeded` unless the pooled mean KL <= ``budget``.

        ``kl_options`` are :meth:`kl`'s. Returns the :class:`~pytest_forgetguard.kl.KLResult`
        so a test can assert more on it.
        """
        __tracebackhide__ = True
        direction = kl_options.get("direction", "forward")
        metric = METRICS.get(direction, str(direction))
        with self._running(name, kind="kl", metric=metric) as run:  # a bad argument is recorded too
            budget = run.pending.budget = check_number("budget", budget)
            result = self.kl(prompts, **kl_options)
            result.budget = budget
            message = (
                None if result.passed else result.failure_message(self.candidate.short_label, self.base.short_label)
            )
            run.finish(result.to_record(run.name, run.candidate), result.passed, message)
            if message is not None:
                raise KLBudgetExceeded(message, result)
            return result

    # -- the measurement ----------------------------------------------------------------

    def _measure_kl(self, request: _KLRequest) -> KLResult:
        """Read and encode the prompts, then score them here or shared among the torchrun ranks."""
        prepared = self._prepare(request)
        series = kl_series(
            self.base,
            prepared.prompt_ids,
            prepared.fixed,
            request.direction,
            request.sample_from,
            request.max_new_tokens,
            request.temperature,
            self.seed,
            prepared.vocab,
        )
        if self.parallel is None:
            result = self._score(request, prepared, list(range(len(prepared.records))))
        else:
            result = self._score_sharded(request, prepared, self.parallel)
        result.series = series
        return result

    def _prepare(self, request: _KLRequest) -> _Prepared:
        """The prompts read, encoded and checked, before any forward pass.

        Every rank reads and encodes every prompt (cheap), so a bad line gives the same error as
        a single process, and the token digest proves all ranks read the same prompts.
        """
        records = as_records(request.prompts)
        if request.limit is not None:
            records = records[: request.limit]
        vocab = self._vocab(request.allow_vocab_mismatch)
        tok = self.base.tokenizer
        prompt_ids = [encode_prompt(tok, r) for r in records]
        fixed = [encode_response(tok, r) for r in records] if request.sample_from == "dataset" else None
        lengths = [len(f) for f in fixed] if fixed is not None else [request.max_new_tokens] * len(records)
        self._context_window_check(records, prompt_ids, lengths, sampled=fixed is None)
        source = str(request.prompts) if isinstance(request.prompts, (str, os.PathLike)) else None
        large = large_prompt_set(source, prompt_ids, lengths, request.batch_size, sampled=fixed is None)
        if large is not None:  # before any forward pass: a run that will take hours says so first
            self._warn(large)
        return _Prepared(records, prompt_ids, fixed, vocab, tok)

    def _responses(self, request: _KLRequest, prepared: _Prepared, positions: list[int]) -> list[list[int]]:
        """The responses scored at ``positions``: the dataset's, or sampled (and cached) from the source model.

        Cached by the source model's fingerprint: a rerun with an unchanged base samples nothing.
        Seeded per prompt: a shard's samples are the ones a single process draws for them.
        """
        if prepared.fixed is not None:
            return [prepared.fixed[i] for i in positions]
        from ..generation import cached_sample_responses, decode_batch_size

        source = self.base if request.sample_from == "base" else self.candidate
        todo = [prepared.prompt_ids[i] for i in positions]
        responses = cached_sample_responses(
            source,
            todo,
            request.max_new_tokens,
            seed=self.seed,
            temperature=request.temperature,
            batch_size=decode_batch_size(source, todo, request.max_new_tokens, at_least=request.batch_size),
            vocab=prepared.vocab,
            cache=self.cache,
        )
        empty = [prepared.records[i].where for i, resp in zip(positions, responses) if not resp]
        if empty:
            raise PromptFileError(f"sampling gave empty responses for {', '.join(empty[:5])}")
        return responses

    def _score(self, request: _KLRequest, prepared: _Prepared, positions: list[int]) -> KLResult:
        """The KL over the prompts at ``positions`` (all of them, or one rank's share)."""
        responses = self._responses(request, prepared, positions)
        records = prepared.records
        seqs = [
            TokenSequence(records[i].index, prepared.prompt_ids[i], resp, label=records[i].display())
            for i, resp in zip(positions, responses)
        ]
        options = KLOptions(
            direction=request.direction,
            sample_from=request.sample_from,
            batch_size=request.batch_size,
            vocab=prepared.vocab,
            seed=self.seed,
            decode=prepared.decode,
        )
        return teacher_forced_kl(self.base, self.candidate, seqs, options, base_states=self.base_states)

    def _score_sharded(self, request: _KLRequest, prepared: _Prepared, parallel: "DataParallel") -> KLResult:
        """Each rank scores its share; only the per-prompt values travel, the statistics are recomputed."""
        from ..distributed import run_sharded

        what = (
            f"kl({_describe(request.prompts)}, direction={request.direction}, sample_from={request.sample_from}, "
            f"max_new_tokens={request.max_new_tokens}, temperature={request.temperature!r}, limit={request.limit}, "
            f"base={self.base.label}, candidate={self.candidate.label})"
        )
        per_prompt: list[PromptKL] = run_sharded(
            parallel,
            what,
            len(prepared.records),
            token_digest(prepared.prompt_ids, prepared.fixed),
            lambda positions: self._score(request, prepared, positions).prompts,
            models={"base": self.base, "candidate": self.candidate},
        )
        return KLResult(request.direction, request.sample_from, per_prompt, decode=prepared.decode, seed=self.seed)

    def _context_window_check(
        self, records: Sequence[PromptRecord], prompt_ids: list[list[int]], responses: list[int], sampled: bool
    ) -> None:
        """Every sequence must fit both models' context windows: a truncated one is not the one asked about.

        The models read the prompt and every response token but the last (which is only predicted).
        """
        from ..models import context_window

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


def large_prompt_set(
    source: str | None, prompt_ids: Sequence[Sequence[int]], responses: Sequence[int], batch_size: int, sampled: bool
) -> str | None:
    """A warning for a KL check over more than :data:`~.base.LARGE_INPUT` prompts, with the work it costs.

    >>> message = large_prompt_set("p.jsonl", [[1, 2, 3]] * 6000, [4] * 6000, batch_size=8, sampled=False)
    >>> message.split(", in ")[0]
    'KL check over 6,000 prompts (p.jsonl): about 42,000 tokens through each of base and candidate'
    >>> large_prompt_set("p.jsonl", [[1, 2, 3]] * 5000, [4] * 5000, batch_size=8, sampled=False) is None
    True
    """
    n = len(prompt_ids)
    if n <= LARGE_INPUT:
        return None
    tokens = sum(len(p) for p in prompt_ids) + sum(responses)
    passes = -(-n // batch_size)
    where = f" ({source})" if source else ""
    sampling = f", after sampling up to {max(responses)} tokens for each prompt" if sampled else ""
    return (
        f"KL check over {n:,} prompts{where}: about {tokens:,} tokens through each of base and candidate, in "
        f"{passes:,} forward passes of each (batch_size {batch_size}){sampling}. Cut it with limit (suite: "
        "`limit: 1000`) or use fewer prompts"
    )


def _check_range(name: str, value: Any, integer: bool = False) -> None:
    """A sampling option within the suite schema's range for it (one source: :data:`~..schema.KL_KEYS`).

    >>> _check_range("temperature", 1e-320)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a finite number in [0.01, 100], got 1e-320
    """
    key = KL_KEYS[name]
    typed = not isinstance(value, bool) and (isinstance(value, int) or (not integer and isinstance(value, float)))
    low = -math.inf if key.minimum is None else key.minimum
    high = math.inf if key.maximum is None else key.maximum
    if not typed or not low <= value <= high:
        what = f"a positive integer, at most {high:g}" if integer else f"a finite number in {range_text(key)}"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def kl_series(
    base: "ModelLike",
    prompt_ids: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]] | None,
    direction: str,
    sample_from: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    vocab: int | None,
) -> str:
    """A KL check's series in the run history: everything that changes its number, hashed.

    The exact prompt (and fixed response) token ids, the direction, who writes the responses and how
    (tokens, temperature and seed when sampled), the vocabulary compared, the base's content, its
    dtype and device class. Not the batch size, nor the prompt file's name: they change no number.
    """
    sampled = responses is None
    return cache_key(
        kind="kl",
        tokens=token_digest(prompt_ids, responses),
        direction=direction,
        sample_from=sample_from,
        max_new_tokens=max_new_tokens if sampled else None,
        temperature=repr(float(temperature)) if sampled else None,
        seed=seed if sampled else None,
        vocab=vocab,
        base=base.fingerprint,
        dtype=base.dtype,
        device=base.device_class,
    )


def _describe(prompts: PromptsLike) -> str:
    """A short name for a prompt source, for messages about ranks out of step."""
    if isinstance(prompts, (str, os.PathLike)):
        return str(prompts)
    return f"<{type(prompts).__name__} of {len(prompts)} prompts>" if hasattr(prompts, "__len__") else "<prompts>"


def run_suite_check(fg: KLChecks, name: str, options: dict[str, Any]) -> KLResult:
    """A suite's ``kl:`` check through the same gate as the fixture."""
    __tracebackhide__ = True
    opts = dict(options)
    prompts, budget = opts.pop("prompts"), opts.pop("budget")
    return fg.assert_kl_budget(prompts, budget, name=name, **opts)
