"""The KL engine: exact, full-vocabulary KL between two models, per response token.

For every response token y_t of every sequence, the two models' next-token
distributions given (prompt, y_<t) are compared over the whole vocabulary:

    forward  KL(base || cand) = sum_v p_b(v) (log p_b(v) - log p_c(v))
    reverse  KL(cand || base) = sum_v p_c(v) (log p_c(v) - log p_b(v))
    symmetric                 = (forward + reverse) / 2

Prompt tokens never count. Memory is bounded by the micro-batch: the
transformer body runs per micro-batch (right-padded, so positions need no
adjustment) and the LM head and the KL arithmetic run over slices of response
positions only, in float32 whatever the model dtype.

Example::

    seqs = [TokenSequence(index=0, prompt_ids=[1, 2, 3], response_ids=[4, 5])]
    result = teacher_forced_kl(base_handle, cand_handle, seqs, KLOptions(direction="forward", batch_size=4))
    result.value, result.ci_low, result.ci_high
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import NonFiniteError
from .records import CheckRecord
from .schema import KL_KEYS
from .stats import cluster_bootstrap_ratio, percentiles

if TYPE_CHECKING:
    import torch

    from .base_states import BaseStates
    from .models import ModelLike

DIRECTIONS: tuple[str, ...] = KL_KEYS["direction"].enum
METRICS = {"forward": "kl_forward_mean", "reverse": "kl_reverse_mean", "symmetric": "kl_symmetric_mean"}


@dataclass(frozen=True)
class TokenSequence:
    """One prompt and the response whose tokens are scored."""

    index: int
    prompt_ids: Sequence[int]
    response_ids: Sequence[int]
    label: str = ""


@dataclass
class PromptKL:
    """Per-token values of one prompt's response."""

    index: int
    label: str
    response_ids: np.ndarray
    forward: np.ndarray
    reverse: np.ndarray
    base_top1: np.ndarray
    cand_top1: np.ndarray

    def values(self, direction: str) -> np.ndarray:
        if direction == "forward":
            return self.forward
        if direction == "reverse":
            return self.reverse
        return np.asarray((self.forward + self.reverse) / 2.0)

    @property
    def n_tokens(self) -> int:
        return int(self.forward.size)


@dataclass(frozen=True)
class Disagreement:
    """One token position where the two models disagree most."""

    position: int
    token: str
    base_top1: str
    cand_top1: str
    kl: float


@dataclass(frozen=True)
class WorstPrompt:
    index: int
    label: str
    mean_kl: float
    n_tokens: int
    positions: tuple[Disagreement, ...]


@dataclass
class KLResult:
    """The outcome of a KL measurement; numbers in nats per response token.

    ``value`` is the pooled mean over all response tokens of the gated
    direction; ``forward_mean`` and ``reverse_mean`` are always available.
    """

    direction: str
    sample_from: str
    prompts: list[PromptKL]
    decode: Callable[[int], str] | None = field(default=None, repr=False)
    seed: int = 0
    budget: float | None = None
    series: str | None = None  # what makes this number comparable across runs (the run history's key)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        counts = np.array([p.n_tokens for p in self.prompts], dtype=np.float64)
        self.n_prompts = len(self.prompts)
        self.n_tokens = int(counts.sum())
        if self.n_tokens == 0:
            raise NonFiniteError("KL over zero response tokens is undefined: every response was empty")
        fwd = np.concatenate([p.forward for p in self.prompts])
        rev = np.concatenate([p.reverse for p in self.prompts])
        self.forward_mean = float(fwd.mean())
        self.reverse_mean = float(rev.mean())
        self.symmetric_mean = (self.forward_mean + self.reverse_mean) / 2.0
        tokens = np.concatenate([p.values(self.direction) for p in self.prompts])
        self.value = float(tokens.mean())
        self.median, self.p90, self.p99 = percentiles(tokens, (0.5, 0.9, 0.99))
        self.max = float(tokens.max())
        agree = np.concatenate([p.base_top1 == p.cand_top1 for p in self.prompts])
        self.top1_agreement = float(agree.mean())
        sums = np.array([p.values(self.direction).sum() for p in self.prompts])
        self.ci_low, self.ci_high = cluster_bootstrap_ratio(sums, counts, seed=self.seed)
        self.finite = bool(np.isfinite([self.value, self.ci_low, self.ci_high]).all())

    @property
    def metric(self) -> str:
        return METRICS[self.direction]

    @property
    def per_prompt(self) -> np.ndarray:
        """Mean KL per response token of each prompt (the gated direction)."""
        return np.array([p.values(self.direction).mean() for p in self.prompts])

    def quantiles(self, n: int = 101) -> np.ndarray:
        """Quantiles of the per-token KL (gated direction), pooled over all response tokens.

        ``n`` evenly spaced levels from 0 to 1 inclusive: the default 101 gives
        the 0th..100th percentiles, so element 0 is the minimum and element -1
        the maximum. This fixed-size summary is what reports and plots carry
        instead of every token's value (records must stay small plain data).

        Example: ``result.quantiles(5)`` gives min, p25, median, p75 and max.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an integer >= 2 (the 0 and 1 levels), got {n!r}")
        tokens = np.concatenate([p.values(self.direction) for p in self.prompts])
        # numpy's default (linear) interpolation, as for median/p90/p99 above.
        return np.asarray(np.quantile(tokens, np.linspace(0.0, 1.0, n)))

    def worst(self, k: int = 3, positions: int = 3) -> list[WorstPrompt]:
        """The ``k`` prompts with the highest mean KL, each with its worst positions."""
        order = np.argsort(-self.per_prompt, kind="stable")[:k]
        decode = self.decode or (lambda i: f"<{i}>")
        out = []
        for i in order:
            p = self.prompts[int(i)]
            vals = p.values(self.direction)
            top = np.argsort(-vals, kind="stable")[:positions]
            out.append(
                WorstPrompt(
                    index=p.index,
                    label=p.label,
                    mean_kl=float(vals.mean()),
                    n_tokens=p.n_tokens,
                    positions=tuple(
                        Disagreement(
                            position=int(t),
                            token=decode(int(p.response_ids[t])),
                            base_top1=decode(int(p.base_top1[t])),
                            cand_top1=decode(int(p.cand_top1[t])),
                            kl=float(vals[t]),
                        )
                        for t in top
                    ),
                )
            )
        return out

    def summary(self) -> str:
        """llama.cpp-style one-paragraph summary."""
        return (
            f"{self.metric} = {self.value:.6g} nats/token (95% CI {self.ci_low:.4g}..{self.ci_high:.4g}) "
            f"over {self.n_tokens} response tokens of {self.n_prompts} prompts; {self.distribution()}"
        )

    def distribution(self) -> str:
        """How the per-token KL is spread, both directions, and how often the two models' top tokens agree."""
        return (
            f"responses sampled from {self.sample_from}; per token: median {self.median:.4g}, p90 {self.p90:.4g}, "
            f"p99 {self.p99:.4g}, max {self.max:.4g}; forward {self.forward_mean:.6g}, reverse "
            f"{self.reverse_mean:.6g}; top-1 agreement {100 * self.top1_agreement:.1f}%"
        )

    @property
    def passed(self) -> bool:
        """Whether the gated value is finite and within ``budget`` (False while no budget is set)."""
        return self.finite and self.budget is not None and self.value <= self.budget

    def to_record(self, name: str, candidate: str) -> CheckRecord:
        """The check's row in the reports: the value, budget, CI, n and the per-token KL distribution."""
        return CheckRecord(
            name=name,
            kind="kl",
            candidate=candidate,
            metric=self.metric,
            value=self.value,
            budget=self.budget,
            ci_low=self.ci_low,
            ci_high=self.ci_high,
            n=self.n_prompts,
            details={
                "n_tokens": self.n_tokens,
                "sample_from": self.sample_from,
                "kl_forward_mean": self.forward_mean,
                "kl_reverse_mean": self.reverse_mean,
                "median": self.median,
                "p90": self.p90,
                "p99": self.p99,
                "max": self.max,
                "top1_agreement": self.top1_agreement,
                # The per-token KL distribution (0th..100th percentile) for plots: a fixed 101 numbers
                # whatever the token count, rounded to 6 significant digits to keep JSON short.
                "kl_quantiles": [float(f"{q:.6g}") for q in self.quantiles(101)],
                "series": self.series,
            },
        )

    def failure_message(self, candidate: str, base: str) -> str:
        """What a failed budget says: the value against the budget, the margin, the CI, n and where the
        two models disagree most."""
        budget = self.budget if self.budget is not None else float("nan")
        margin = self.value - budget
        return (
            f"KL budget exceeded for candidate {candidate!r} vs base {base!r}:\n"
            f"  {self.metric} = {self.value:.6g} nats/token > budget {budget:g} "
            f"(over by {margin:.4g}{f', {100 * margin / budget:.0f}%' if budget else ''})\n"
            f"  95% CI {self.ci_low:.4g}..{self.ci_high:.4g}, n = {self.n_prompts} prompts, "
            f"{self.n_tokens} response tokens\n"
            f"  {self.distribution()}\n"
            f"  prompts where the models disagree most:\n{self.format_worst()}"
        )

    def format_worst(self, k: int = 3) -> str:
        lines = []
        for w in self.worst(k):
            lines.append(f"  prompt {w.index} (mean {w.mean_kl:.4g} over {w.n_tokens} tokens): {w.label}")
            for d in w.positions:
                lines.append(
                    f"    token {d.position} {d.token!r}: KL {d.kl:.4g}, base top-1 {d.base_top1!r}, "
                    f"candidate top-1 {d.cand_top1!r}"
                )
        return "\n".join(lines)


class _Workspace:
    """float32 scratch tensors reused across slices and micro-batches of one KL run.

    A fresh [positions, vocab] tensor per slice pays page faults and zeroing
    on every allocation (blocks that large go straight back to the OS):
    writing SmolLM2's LM head into a reused buffer took it from about 0.28 s
    to 0.22 s per 1,024 positions on a 2-core CPU (measured in isolation). A buffer grows to the
    largest request; each request is a contiguous view, as ``out=`` needs.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, "torch.Tensor"] = {}

    def get(self, name: str, shape: tuple[int, ...], device: "torch.device") -> "torch.Tensor":
        import torch

        numel = 1
        for n in shape:
            numel *= n
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.device != device:
            buf = torch.empty(numel, dtype=torch.float32, device=device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


class _Scorer:
    """Runs one model's body and head; checks once that the split matches ``forward``.

    Computing the LM head only at response positions is what keeps memory
    flat. Models whose logits are not ``lm_head(last_hidden_state)`` (soft-
    capping, scaled logits) fail the self-check and fall back to full logits
    per micro-batch, which is still bounded by the micro-batch.
    """

    def __init__(self, handle: "ModelLike") -> None:
        self.handle = handle
        self.split: bool | None = None
        self.head: Any = None  # the LM head module, once the body has run

    def _parts(self, model: Any) -> tuple[Any, Any]:
        raw = model.get_base_model() if hasattr(model, "get_base_model") else model
        return raw.get_decoder(), raw.get_output_embeddings()

    def _validate(self, model: Any, ids: "torch.Tensor", mask: "torch.Tensor") -> bool:
        import torch

        n = min(ids.shape[1], 8)
        try:
            body, head = self._parts(model)
            hidden = body(input_ids=ids[:1, :n], attention_mask=mask[:1, :n], use_cache=False).last_hidden_state
            # The projection checked is the one that scores (a plain matmul where it can be).
            split = _project(head, hidden[0], None, None)
        except Exception:
            return False
        full = model(input_ids=ids[:1, :n], attention_mask=mask[:1, :n], use_cache=False).logits[0].float()
        return split.shape == full.shape and bool(torch.allclose(split, full, rtol=1e-4, atol=1e-4))

    def prepare(self, ids: "torch.Tensor", mask: "torch.Tensor") -> bool:
        """Decide (once) whether body and head run apart, and find the head; returns that decision.

        Decided, it returns at once: selecting a PEFT model's adapter walks every module, and this
        runs for every batch.
        """
        if self.split is not None and (not self.split or self.head is not None):
            return self.split
        with self.handle.active() as model:
            if self.split is None:
                self.split = self._validate(model, ids, mask)
            if self.split:
                self.head = self._parts(model)[1]
        return self.split

    def hidden(
        self, ids: "torch.Tensor", mask: "torch.Tensor", rows: "torch.Tensor", cols: "torch.Tensor"
    ) -> "torch.Tensor":
        """Hidden states (or logits, in fallback mode) at the given positions."""
        split = self.prepare(ids, mask)
        with self.handle.active() as model:
            if split:
                body = self._parts(model)[0]
                out = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            else:
                out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            picked: torch.Tensor = out[rows, cols]
            return picked

    def first_non_finite(self, states: "torch.Tensor") -> int | None:
        """The first position whose hidden state (or logits, in fallback mode) is NaN/inf; None when all are finite.

        A sum first, a full scan only when it is not finite. A -inf logit
        rules a token out and is allowed (it gives an infinite KL instead);
        NaN or +inf never is.
        """
        import torch

        if bool(torch.isfinite(states.sum(dtype=torch.float32))):
            return None
        bad = torch.isnan(states) | (torch.isinf(states) if self.split else torch.isposinf(states))
        rows = bad.any(-1).nonzero()
        return int(rows[0, 0]) if rows.numel() else None

    def width(self, vocab: int | None) -> int | None:
        """How many logits :meth:`logits` gives per position, where known before computing them."""
        if vocab is not None:
            return vocab
        weight = _plain_weight(self.head) if self.split else None
        return None if weight is None else int(weight.shape[0])

    def logits(self, states: "torch.Tensor", vocab: int | None, out: "torch.Tensor | None" = None) -> "torch.Tensor":
        """float32 logits of the first ``vocab`` ids at ``states`` ([positions, hidden]), into ``out`` if given."""
        if not self.split:
            z = states.float()[:, :vocab]
            return z if out is None else out.copy_(z)
        if _plain_weight(self.head) is not None:
            # A plain head holds no adapter layer, so it computes the same whichever adapter is
            # active: no need to switch. Switching walks every module of a PeftModel, and the
            # head runs several times per micro-batch.
            return _project(self.head, states, vocab, out)
        with self.handle.active() as model:
            return _project(self._parts(model)[1], states, vocab, out)


def _plain_weight(head: Any) -> "torch.Tensor | None":
    """The weight of a head that is exactly a float32 ``nn.Linear`` (no hooks, not an adapter layer)."""
    import torch

    weight = getattr(head, "weight", None)
    plain = type(head) is torch.nn.Linear and not (
        head._forward_hooks or head._forward_pre_hooks or "forward" in vars(head)
    )
    if plain and isinstance(weight, torch.Tensor) and weight.dtype == torch.float32:
        return weight
    return None


def _project(head: Any, states: "torch.Tensor", vocab: int | None, out: "torch.Tensor | None") -> "torch.Tensor":
    """The LM head on [positions, hidden] states: float32 logits of the first ``vocab`` ids.

    A plain float32 head is one matmul over only the rows of the weight that
    are compared, written straight into ``out``; any other head runs as a
    module and is copied. :meth:`_Scorer._validate` checks this very
    function against the model's own logits before it is trusted.
    """
    import torch

    weight = _plain_weight(head)
    if weight is None or states.dtype != torch.float32:
        z = head(states).float()[:, :vocab]
        return z if out is None else out.copy_(z)
    weight = weight[:vocab]
    if out is None:
        out = torch.empty((states.shape[0], weight.shape[0]), dtype=torch.float32, device=states.device)
    torch.mm(states, weight.t(), out=out)
    if head.bias is not None:
        out.add_(head.bias[:vocab])
    return out


@dataclass(frozen=True)
class KLOptions:
    """How :func:`teacher_forced_kl` runs and what its result is labelled with.

    ``direction`` is the gated one (forward = KL(base || candidate), reverse,
    symmetric); ``sample_from`` and ``seed`` only label the result (who wrote
    the responses; the bootstrap's seed). ``batch_size`` sequences run through
    the transformer bodies together and the LM heads run on ``slice_positions``
    positions at a time: both bound memory and change no number. ``vocab``
    restricts the comparison to the first ``vocab`` ids (used when the user
    allowed a vocabulary mismatch). ``decode`` names token ids in reports.
    Checked when built, so a bad value fails before any model runs.

    Example::

        teacher_forced_kl(base, candidate, seqs, KLOptions(direction="reverse", batch_size=4))
    """

    direction: str = "forward"
    sample_from: str = "dataset"
    batch_size: int = 8
    slice_positions: int = 256
    vocab: int | None = None
    seed: int = 0
    decode: Callable[[int], str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.batch_size < 1 or self.slice_positions < 1:
            raise ValueError("batch_size and slice_positions must be >= 1")


def teacher_forced_kl(
    base: "ModelLike",
    candidate: "ModelLike",
    sequences: Sequence[TokenSequence],
    options: KLOptions | None = None,
    *,
    base_states: "BaseStates | None" = None,
    **overrides: Any,
) -> KLResult:
    """Exact per-token KL on fixed (teacher-forced) responses, run as ``options`` say.

    Results do not depend on ``batch_size`` or on the order of ``sequences``.
    ``base_states`` keeps the base's hidden states by batch
    (:mod:`~pytest_forgetguard.base_states`): the base runs once for every
    candidate scored on the same sequences. ``overrides`` are
    :class:`KLOptions` fields by keyword (``batch_size=4``), applied over
    ``options``: the call path of the callers written before the options object.
    """
    import torch

    from . import progress

    opts = options or KLOptions()
    if overrides:
        opts = replace(opts, **overrides)
    _check_sequences(sequences)
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    scorers = _Scorer(base), _Scorer(candidate)
    work = _Workspace()
    out = _Outputs(sequences)
    # Sorting by length keeps padding (wasted compute) small; results are per sequence.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].prompt_ids) + len(sequences[i].response_ids))
    with torch.no_grad(), progress.task("scoring KL", total=len(order), unit="prompts") as task:
        for start in range(0, len(order), opts.batch_size):
            picked = order[start : start + opts.batch_size]
            batch = _Batch.right_padded([sequences[i] for i in picked], pad_id, base.device)
            hb, hc = _scored_states(scorers, batch, base_states)
            out.fill(picked, batch.sequences, _kl_slices(scorers, hb, hc, opts.slice_positions, opts.vocab, work))
            task.advance(len(picked))
    prompts = out.in_order()
    return KLResult(
        direction=opts.direction, sample_from=opts.sample_from, prompts=prompts, decode=opts.decode, seed=opts.seed
    )


def _check_sequences(sequences: Sequence[TokenSequence]) -> None:
    """Refuse, before any model runs, what cannot be scored: no sequences, or an empty prompt or response."""
    if not sequences:
        raise ValueError("no sequences to score")
    for s in sequences:
        if len(s.prompt_ids) == 0 or len(s.response_ids) == 0:
            raise ValueError(f"sequence {s.index}: prompt and response must both be non-empty")


@dataclass(frozen=True)
class _Batch:
    """One micro-batch on the device: token ids, mask, and the (row, column) of every scored position."""

    sequences: list[TokenSequence]
    ids: "torch.Tensor"
    mask: "torch.Tensor"
    rows: "torch.Tensor"
    cols: "torch.Tensor"
    device: "torch.device"

    @classmethod
    def right_padded(cls, batch: list[TokenSequence], pad_id: int, device: "torch.device") -> "_Batch":
        """Right padding, so a row's positions need no adjustment; the mask hides the pads.

        The last response token is predicted, never fed: position ``len(prompt) - 1 + t``
        predicts response token ``t``.
        """
        import torch

        inputs = [list(s.prompt_ids) + list(s.response_ids[:-1]) for s in batch]
        width = max(len(x) for x in inputs)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows: list[int] = []
        cols: list[int] = []
        for r, (s, x) in enumerate(zip(batch, inputs)):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
            first = len(s.prompt_ids) - 1
            rows.extend([r] * len(s.response_ids))
            cols.extend(range(first, first + len(s.response_ids)))
        row_t, col_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        return cls(batch, ids.to(device), mask.to(device), row_t, col_t, device)


def _scored_states(
    scorers: tuple[_Scorer, _Scorer], batch: _Batch, base_states: "BaseStates | None"
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Both models' hidden states at the scored positions; the base's served from ``base_states`` when kept.

    Only hidden states are kept (in fallback mode the base's "states" are whole logits), and only
    after the finiteness check: a bad base pass is never stored.
    """
    ids, mask, rows, cols = batch.ids, batch.mask, batch.rows, batch.cols
    hb = None
    key = base_states.key(scorers[0].handle, ids, mask, rows, cols) if base_states is not None else None
    if key is not None and base_states is not None and scorers[0].prepare(ids, mask):
        hb = base_states.load(key, len(rows), batch.device)
    fresh = hb is None
    if hb is None:
        hb = scorers[0].hidden(ids, mask, rows, cols)
    hc = scorers[1].hidden(ids, mask, rows, cols)
    _refuse_non_finite(scorers, (hb, hc), batch.sequences)
    if fresh and key is not None and base_states is not None and scorers[0].split:
        base_states.store(key, hb)
    return hb, hc


class _Outputs:
    """The run's per-token results: one float64 (or int64) array per kind, a view per prompt.

    Small arrays allocated per micro-batch and kept among the transformer's large temporaries
    fragmented the heap: peak memory crept up with the number of prompts (+128 MiB from 64 to
    256 on SmolLM2).
    """

    def __init__(self, sequences: Sequence[TokenSequence]) -> None:
        self.sequences = sequences
        self.starts = np.cumsum([0] + [len(s.response_ids) for s in sequences])
        total = int(self.starts[-1])
        self.forward, self.reverse = np.empty(total), np.empty(total)
        self.base_top1, self.cand_top1 = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
        self.ids = np.fromiter((t for s in sequences for t in s.response_ids), dtype=np.int64, count=total)
        self.prompts: dict[int, PromptKL] = {}

    def fill(
        self,
        picked: Sequence[int],
        batch: Sequence[TokenSequence],
        values: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Store one micro-batch's values (``picked`` are the positions of ``batch`` in ``sequences``).

        A non-finite KL is refused here, naming the prompt and response token.
        """
        fwd, rev, tb, tc = values
        offset = 0
        for i, s in zip(picked, batch):
            n = len(s.response_ids)
            sl = slice(int(self.starts[i]), int(self.starts[i + 1]))
            self.forward[sl], self.reverse[sl] = fwd[offset : offset + n], rev[offset : offset + n]
            self.base_top1[sl], self.cand_top1[sl] = tb[offset : offset + n], tc[offset : offset + n]
            offset += n
            f, rv = self.forward[sl], self.reverse[sl]
            if not (np.isfinite(f).all() and np.isfinite(rv).all()):
                bad = int(np.flatnonzero(~(np.isfinite(f) & np.isfinite(rv)))[0])
                raise NonFiniteError(
                    f"KL is NaN/inf at prompt {s.index}, response token {bad}: a model produced "
                    "NaN/inf logits or gives zero probability to a token the other predicts"
                )
            self.prompts[s.index] = PromptKL(
                index=s.index,
                label=s.label,
                response_ids=self.ids[sl],
                forward=f,
                reverse=rv,
                base_top1=self.base_top1[sl],
                cand_top1=self.cand_top1[sl],
            )

    def in_order(self) -> list[PromptKL]:
        """Every prompt's values, in the order of ``sequences``."""
        return [self.prompts[s.index] for s in self.sequences]


def _refuse_non_finite(
    scorers: tuple[_Scorer, _Scorer], states: tuple["torch.Tensor", "torch.Tensor"], batch: Sequence[TokenSequence]
) -> None:
    """Raise, and mark the model unusable, when a model's hidden states (or logits) are NaN/inf.

    Per model, before the two are combined: the error names the model at fault, which is then
    unusable for every later check.
    """
    for scorer, hidden in zip(scorers, states):
        at = scorer.first_non_finite(hidden)
        if at is not None:
            what = "hidden states" if scorer.split else "logits"
            raise scorer.handle.fail(
                NonFiniteError(
                    f"KL is NaN/inf at {_locate(batch, at)}: {scorer.handle.role} {scorer.handle.label!r} "
                    f"produced NaN/inf {what} there (weights that overflow, or a diverged fine-tune)"
                )
            )


def _locate(batch: Sequence[TokenSequence], position: int) -> str:
    """``prompt I, response token T`` for the ``position``-th scored position of a micro-batch."""
    for seq in batch:
        if position < len(seq.response_ids):
            return f"prompt {seq.index}, response token {position}"
        position -= len(seq.response_ids)
    return "an unknown position"


# Logits per model per step of the KL arithmetic (8 positions of a 49,152-token
# vocabulary). A step makes ~8 passes over its entries; at this size (3 MiB
# a tensor, both models) they stay in cache, where passes over a whole
# 256-position slice (96 MiB a tensor) each went to memory: 2-3x slower on a
# 2-core CPU. Counted in entries, so a small vocabulary takes more positions
# a step instead of paying per-call overhead on tiny tensors.
_STEP_ENTRIES = 8 * 49152
# Width of the blocks in which the row maximum and its position are found (see _row_max).
_BLOCK = 512


def _kl_slices(
    scorers: tuple[_Scorer, _Scorer],
    hb: "torch.Tensor",
    hc: "torch.Tensor",
    slice_positions: int,
    vocab: int | None,
    work: _Workspace | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward and reverse KL and both top-1 ids at every position of ``hb``/``hc``.

    The LM heads run on slices of ``slice_positions`` positions (a large
    matmul streams the head's weights once per slice) and write base and
    candidate logits side by side into one [2, positions, vocab] buffer, so
    every step of the arithmetic treats both models in one call.
    """
    import torch

    work = work or _Workspace()
    n = hb.shape[0]
    fwd = torch.empty(n, dtype=torch.float32, device=hb.device)
    rev = torch.empty_like(fwd)
    tb = torch.empty(n, dtype=torch.long, device=hb.device)
    tc = torch.empty_like(tb)
    width = scorers[0].width(vocab)
    for s in range(0, n, slice_positions):
        e = min(n, s + slice_positions)
        if width is None:  # a head that is not a plain matmul: its logits are copied side by side
            z = torch.stack([scorers[0].logits(hb[s:e], vocab), scorers[1].logits(hc[s:e], vocab)])
        else:
            z = work.get("logits", (2, e - s, width), hb.device)
            scorers[0].logits(hb[s:e], vocab, out=z[0])
            scorers[1].logits(hc[s:e], vocab, out=z[1])
        _kl_logits(z, fwd[s:e], rev[s:e], tb[s:e], tc[s:e], work)
    return fwd.double().cpu().numpy(), rev.double().cpu().numpy(), tb.cpu().numpy(), tc.cpu().numpy()


def _kl_logits(
    z: "torch.Tensor",
    fwd: "torch.Tensor",
    rev: "torch.Tensor",
    top_b: "torch.Tensor",
    top_c: "torch.Tensor",
    work: _Workspace,
) -> None:
    """Row-wise KL both ways and top-1 ids from float32 logits ``z`` = [base, candidate], into the outputs.

    With a = z - max(z) per row (exactly 0 at the top token), s = sum exp(a),
    log p = a - log s and d = a_b - a_c:

        KL(b||c) = sum_v p_b (log p_b - log p_c) = (exp(a_b) . d) / s_b - log(s_b / s_c)
        KL(c||b) = log(s_b / s_c) - (exp(a_c) . d) / s_c

    The definition rearranged, not an approximation. It takes one max (which
    also gives the top-1 id), one exp and one sum per model and one shared
    difference, where two log-softmaxes, two exps and two argmaxes did; and
    it is more accurate in float32: d is formed from max-shifted logits, so
    where p is large both terms are near 0 and d is exact, and identical
    rows give exactly 0 (against float64 on SmolLM2, the largest per-token
    error fell from 3e-6..1e-5 to 7e-7). Rows where the result is not finite
    (NaN logits, a token a model rules out with -inf) are redone by
    :func:`_kl_pair_careful` from log-softmax, which keeps NaN as NaN and
    gives +inf where the definition does.
    """
    import torch

    n, cols = z.shape[1], z.shape[2]
    step = max(1, _STEP_ENTRIES // max(cols, 1))
    for s in range(0, n, step):
        e = min(n, s + step)
        zz = z[:, s:e]
        top, peak = _row_max(zz)
        a = torch.sub(zz, peak, out=work.get("shifted", (2, e - s, cols), z.device))
        ex = torch.exp(a, out=work.get("exp", (2, e - s, cols), z.device))
        sums = ex.sum(-1)
        d = a[0].sub_(a[1])
        # exp(a) . d, the product in a reused buffer like every [positions, vocab] temporary here.
        means = torch.mul(ex, d, out=work.get("product", (2, e - s, cols), z.device)).sum(-1).div_(sums)
        # log of the ratio: exact to float32 round-off of 1 when the two sums are close.
        shift = torch.log(sums[0] / sums[1])
        f = means[0].sub_(shift)
        r = means[1].neg_().add_(shift)
        bad = ~(torch.isfinite(f) & torch.isfinite(r))
        if bool(bad.any()):
            rows = bad.nonzero().squeeze(-1)
            lp = torch.log_softmax(zz[:, rows], -1)
            f[rows], r[rows] = _kl_pair_careful(lp[0], lp[1])
        # Round-off can give -1e-9 on identical rows; KL is >= 0 by definition (NaN stays NaN).
        torch.clamp_min(f, 0.0, out=fwd[s:e])
        torch.clamp_min(r, 0.0, out=rev[s:e])
        top_b[s:e], top_c[s:e] = top[0], top[1]


def _row_max(z: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Position of the first maximum of each row of ``z`` [..., V], and the maximum (kept dim).

    ``max(dim)`` and ``argmax`` track an index per element in scalar code:
    on SmolLM2 they were half the cost of the whole KL arithmetic. Here the
    maximum of each block of ``_BLOCK`` entries is a vectorised ``amax``;
    the first block holding the row's maximum and the first maximum inside
    it are searched on small tensors. Same result as ``argmax`` (the first
    maximal entry; NaN counts as maximal).
    """
    import torch

    width = z.shape[-1]
    nb = width // _BLOCK
    cut = nb * _BLOCK
    if nb == 0:
        peak, top = z.max(-1, keepdim=True)
        return top.squeeze(-1), peak
    body = z[..., :cut].reshape(*z.shape[:-1], nb, _BLOCK)
    block_max = body.amax(-1)
    if cut < width:  # the entries after the last whole block: one more "block"
        tail_max, tail_top = z[..., cut:].max(-1, keepdim=True)
        block_max = torch.cat([block_max, tail_max], -1)
    peak, block = block_max.max(-1, keepdim=True)
    pick = block.clamp(max=nb - 1).unsqueeze(-1).expand(*block.shape, _BLOCK)
    top = block.squeeze(-1) * _BLOCK + torch.gather(body, -2, pick).squeeze(-2).argmax(-1)
    if cut < width:
        top = torch.where(block.squeeze(-1) == nb, cut + tail_top.squeeze(-1), top)
    return top, peak


def kl_pair(lp: "torch.Tensor", lq: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Row-wise KL(p||q) and KL(q||p) from log-probabilities.

    The fast path is a few passes over the [positions, vocab] slice. Rows it
    cannot settle (a token with zero probability gives 0 * inf) are redone
    the careful way: a zero-probability token contributes nothing from its
    own side (0 log 0 = 0), NaN logits stay NaN so they are caught, and mass
    where the other model has none gives +inf, which is caught too.
    """
    import torch

    diff = lp - lq
    fwd = torch.linalg.vecdot(lp.exp(), diff)
    rev = -torch.linalg.vecdot(lq.exp(), diff)
    bad = ~(torch.isfinite(fwd) & torch.isfinite(rev))
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(-1)
        f_slow, r_slow = _kl_pair_careful(lp[rows], lq[rows])
        fwd, rev = fwd.clone(), rev.clone()
        fwd[rows], rev[rows] = f_slow, r_slow
    # Round-off can give -1e-9 on identical rows; KL is >= 0 by definition (NaN stays NaN).
    return fwd.clamp_min(0.0), rev.clamp_min(0.0)


def _kl_pair_careful(lp: "torch.Tensor", lq: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    diff = lp - lq
    p, q = lp.exp(), lq.exp()
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    fwd = torch.where(p > 0, p * diff, zero).sum(-1)
    rev = torch.where(q > 0, -q * diff, zero).sum(-1)
    nan_rows = torch.isnan(lp).any(-1) | torch.isnan(lq).any(-1)
    nan = torch.full_like(fwd, float("nan"))
    return torch.where(nan_rows, nan, fwd), torch.where(nan_rows, nan, rev)
