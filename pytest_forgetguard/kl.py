"""The KL engine: exact, full-vocabulary KL between two models, per response token.

For every response token y_t of every sequence, the two models' next-token
distributions given (prompt, y_<t) are compared over the whole vocabulary:

    forward  KL(base || cand) = sum_v p_b(v) (log p_b(v) - log p_c(v))
    reverse  KL(cand || base) = sum_v p_c(v) (log p_c(v) - log p_b(v))
    symmetric                 = (forward + reverse) / 2

Prompt tokens never count. Memory is bounded by the micro-batch: the
transformer body runs per micro-batch (right-padded, so positions need no
adjustment) and the LM head, log-softmax and KL run over slices of response
positions only, in float32 whatever the model dtype.

Example::

    seqs = [TokenSequence(index=0, prompt_ids=[1, 2, 3], response_ids=[4, 5])]
    result = teacher_forced_kl(base_handle, cand_handle, seqs, direction="forward")
    result.value, result.ci_low, result.ci_high
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import NonFiniteError
from .stats import cluster_bootstrap_ratio, percentiles

if TYPE_CHECKING:
    import torch

    from .models import ModelHandle

DIRECTIONS = ("forward", "reverse", "symmetric")
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
        return (self.forward + self.reverse) / 2.0

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
        return np.quantile(tokens, np.linspace(0.0, 1.0, n))

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
            f"over {self.n_tokens} response tokens of {self.n_prompts} prompts (sampled from "
            f"{self.sample_from}); median {self.median:.4g}, p90 {self.p90:.4g}, p99 {self.p99:.4g}, "
            f"max {self.max:.4g}; forward {self.forward_mean:.6g}, reverse {self.reverse_mean:.6g}; "
            f"top-1 agreement {100 * self.top1_agreement:.1f}%"
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


class _Scorer:
    """Runs one model's body and head; checks once that the split matches ``forward``.

    Computing the LM head only at response positions is what keeps memory
    flat. Models whose logits are not ``lm_head(last_hidden_state)`` (soft-
    capping, scaled logits) fail the self-check and fall back to full logits
    per micro-batch, which is still bounded by the micro-batch.
    """

    def __init__(self, handle: "ModelHandle") -> None:
        self.handle = handle
        self.split: bool | None = None

    def _parts(self, model: Any) -> tuple[Any, Any]:
        raw = model.get_base_model() if hasattr(model, "get_base_model") else model
        return raw.get_decoder(), raw.get_output_embeddings()

    def _validate(self, model: Any, ids: "torch.Tensor", mask: "torch.Tensor") -> bool:
        import torch

        n = min(ids.shape[1], 8)
        try:
            body, head = self._parts(model)
            hidden = body(input_ids=ids[:1, :n], attention_mask=mask[:1, :n], use_cache=False).last_hidden_state
            split = head(hidden).float()
        except Exception:
            return False
        full = model(input_ids=ids[:1, :n], attention_mask=mask[:1, :n], use_cache=False).logits.float()
        return split.shape == full.shape and bool(torch.allclose(split, full, rtol=1e-4, atol=1e-4))

    def hidden(
        self, ids: "torch.Tensor", mask: "torch.Tensor", rows: "torch.Tensor", cols: "torch.Tensor"
    ) -> "torch.Tensor":
        """Hidden states (or logits, in fallback mode) at the given positions."""
        with self.handle.active() as model:
            if self.split is None:
                self.split = self._validate(model, ids, mask)
            if self.split:
                body, _ = self._parts(model)
                out = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            else:
                out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return out[rows, cols]

    def logits(self, states: "torch.Tensor") -> "torch.Tensor":
        if not self.split:
            return states.float()
        with self.handle.active() as model:
            _, head = self._parts(model)
            return head(states).float()


def teacher_forced_kl(
    base: "ModelHandle",
    candidate: "ModelHandle",
    sequences: Sequence[TokenSequence],
    direction: str = "forward",
    sample_from: str = "dataset",
    batch_size: int = 8,
    slice_positions: int = 256,
    vocab: int | None = None,
    seed: int = 0,
    decode: Callable[[int], str] | None = None,
) -> KLResult:
    """Exact per-token KL on fixed (teacher-forced) responses.

    ``vocab`` restricts the comparison to the first ``vocab`` ids (used when
    the user allowed a vocabulary mismatch). Results do not depend on
    ``batch_size`` or on the order of ``sequences``.
    """
    import torch

    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if batch_size < 1 or slice_positions < 1:
        raise ValueError("batch_size and slice_positions must be >= 1")
    if not sequences:
        raise ValueError("no sequences to score")
    for s in sequences:
        if len(s.prompt_ids) == 0 or len(s.response_ids) == 0:
            raise ValueError(f"sequence {s.index}: prompt and response must both be non-empty")
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    scorers = _Scorer(base), _Scorer(candidate)
    results: dict[int, PromptKL] = {}
    # Sorting by length keeps padding (wasted compute) small; results are per sequence.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].prompt_ids) + len(sequences[i].response_ids))
    from . import progress

    with torch.no_grad(), progress.task("scoring KL", total=len(order), unit="prompts") as task:
        for start in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[start : start + batch_size]]
            # The last response token is predicted, never fed.
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
            dev = base.device
            ids, mask = ids.to(dev), mask.to(dev)
            row_t, col_t = torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)
            hb = scorers[0].hidden(ids, mask, row_t, col_t)
            hc = scorers[1].hidden(ids, mask, row_t, col_t)
            fwd, rev, tb, tc = _kl_slices(scorers, hb, hc, slice_positions, vocab)
            offset = 0
            for s in batch:
                n = len(s.response_ids)
                sl = slice(offset, offset + n)
                offset += n
                f, rv = fwd[sl], rev[sl]
                if not (np.isfinite(f).all() and np.isfinite(rv).all()):
                    bad = int(np.flatnonzero(~(np.isfinite(f) & np.isfinite(rv)))[0])
                    raise NonFiniteError(
                        f"KL is NaN/inf at prompt {s.index}, response token {bad}: a model produced "
                        "NaN/inf logits or gives zero probability to a token the other predicts"
                    )
                results[s.index] = PromptKL(
                    index=s.index,
                    label=s.label,
                    response_ids=np.asarray(s.response_ids, dtype=np.int64),
                    forward=f,
                    reverse=rv,
                    base_top1=tb[sl],
                    cand_top1=tc[sl],
                )
            task.advance(len(batch))
    prompts = [results[s.index] for s in sequences]
    return KLResult(direction=direction, sample_from=sample_from, prompts=prompts, decode=decode, seed=seed)


def _kl_slices(
    scorers: tuple[_Scorer, _Scorer],
    hb: "torch.Tensor",
    hc: "torch.Tensor",
    slice_positions: int,
    vocab: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torch

    fwd, rev, tb, tc = [], [], [], []
    for s in range(0, hb.shape[0], slice_positions):
        lb = scorers[0].logits(hb[s : s + slice_positions])
        lc = scorers[1].logits(hc[s : s + slice_positions])
        if vocab is not None:
            lb, lc = lb[:, :vocab], lc[:, :vocab]
        lpb = torch.log_softmax(lb, dim=-1)
        lpc = torch.log_softmax(lc, dim=-1)
        f, r = kl_pair(lpb, lpc)
        fwd.append(f.double().cpu().numpy())
        rev.append(r.double().cpu().numpy())
        tb.append(lb.argmax(-1).cpu().numpy())
        tc.append(lc.argmax(-1).cpu().numpy())
    return np.concatenate(fwd), np.concatenate(rev), np.concatenate(tb), np.concatenate(tc)


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
