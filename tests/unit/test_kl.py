"""The KL engine against an independent float64 reference, on tiny real transformers models."""

from __future__ import annotations

import numpy as np
import pytest
from reference import reference_kl

from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.errors import ForgetguardWarning, IncompatibleModelsError, NonFiniteError
from pytest_forgetguard.generation import sample_responses
from pytest_forgetguard.kl import TokenSequence, kl_pair, teacher_forced_kl
from pytest_forgetguard.models import ModelStore
from pytest_forgetguard.prompts import encode_prompt, encode_response, parse_prompts

TEXTS = [
    "The for statement",
    "Comparisons can be chained arbitrarily, e.g., x < y <= z is equivalent to",
    "A class definition",
    "Identifiers",
    "The import statement is used to bring names into scope; the basic import statement (no from clause) is",
    "Boolean operations",
    "with",
    "Exceptions are raised",
]
RESPONSES = [
    " executes the suite once for each item.",
    " x < y and y <= z, except that y is evaluated only once.",
    " defines a class object.",
    " are unlimited in length.",
    " executed in two steps: find a module, loading and initializing it if necessary.",
    " are or, and and not.",
    " statement wraps a block",
    " by the raise statement and handled by try.",
]


def dataset_items():
    items = [{"prompt": p, "response": r} for p, r in zip(TEXTS, RESPONSES)]
    items.append({"messages": [{"role": "user", "content": "What does pass do?"}], "response": "Nothing at all."})
    return items


def fg_for(store: ModelStore, base, cand) -> Forgetguard:
    b = store.get(str(base), role="base")
    return Forgetguard(b, store.get(str(cand), base=b))


def pairs_of(fg: Forgetguard, items):
    tok = fg.base.tokenizer
    recs = parse_prompts(items)
    return [(encode_prompt(tok, r), encode_response(tok, r)) for r in recs]


def test_dataset_kl_equals_float64_reference(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    items = dataset_items()
    result = fg.kl(items, sample_from="dataset", batch_size=4)
    ref_f, ref_r = reference_kl(tiny["base"], tiny["candidate"], pairs_of(fg, items))
    for p, f, r in zip(result.prompts, ref_f, ref_r):
        np.testing.assert_allclose(p.forward, f, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(p.reverse, r, rtol=1e-4, atol=1e-6)
    pooled_f = np.concatenate(ref_f).mean()
    pooled_r = np.concatenate(ref_r).mean()
    assert result.value == pytest.approx(pooled_f, rel=1e-5)
    assert result.forward_mean == pytest.approx(pooled_f, rel=1e-5)
    assert result.reverse_mean == pytest.approx(pooled_r, rel=1e-5)
    assert result.metric == "kl_forward_mean"
    # Prompt tokens never count: exactly one value per response token.
    assert result.n_tokens == sum(len(r) for _, r in pairs_of(fg, items))
    assert result.value > 0.05, "the noisy candidate should be measurably different"
    assert result.ci_low <= result.value <= result.ci_high


def test_directions(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    items = dataset_items()
    fwd = fg.kl(items, sample_from="dataset")
    rev = fg.kl(items, direction="reverse", sample_from="dataset")
    sym = fg.kl(items, direction="symmetric", sample_from="dataset")
    assert rev.value == pytest.approx(fwd.reverse_mean)
    assert rev.metric == "kl_reverse_mean"
    assert sym.value == pytest.approx((fwd.forward_mean + fwd.reverse_mean) / 2)
    assert fwd.value != pytest.approx(rev.value), "forward and reverse KL differ for distinct models"


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_batch_size_invariance(tiny, store, direction):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    items = dataset_items() * 3  # 27 sequences of many lengths: real padding in every batch
    results = [fg.kl(items, direction=direction, sample_from="dataset", batch_size=b) for b in (1, 4, 16)]
    for other in results[1:]:
        assert abs(other.value - results[0].value) < 1e-6
        for a, b in zip(results[0].prompts, other.prompts):
            # float32 matmuls of other shapes differ in the last bits; pooled values agree to
            # 1e-6 (above), single tokens to a few 1e-6 relative.
            np.testing.assert_allclose(a.forward, b.forward, atol=1e-7, rtol=2e-5)
            np.testing.assert_allclose(a.reverse, b.reverse, atol=1e-7, rtol=2e-5)


def test_slicing_does_not_change_values(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    tok = fg.base.tokenizer
    seqs = [TokenSequence(i, p, r) for i, (p, r) in enumerate(pairs_of(fg, dataset_items()))]
    whole = teacher_forced_kl(fg.base, fg.candidate, seqs, slice_positions=10_000)
    sliced = teacher_forced_kl(fg.base, fg.candidate, seqs, slice_positions=3)
    assert tok is not None
    assert abs(whole.value - sliced.value) < 1e-7


def test_identical_models_have_zero_kl(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["twin"])
    with pytest.warns(ForgetguardWarning, match="is identical to the base .* every check passes trivially"):
        result = fg.kl(dataset_items(), sample_from="dataset")
    assert result.value < 1e-7 and result.reverse_mean < 1e-7
    assert result.top1_agreement == 1.0


def test_sampled_responses_do_not_depend_on_batching(tiny, store):
    base = store.get(str(tiny["base"]), role="base")
    prompts = [encode_prompt(base.tokenizer, r) for r in parse_prompts(TEXTS)]
    one = sample_responses(base, prompts, max_new_tokens=12, seed=7, batch_size=1)
    many = sample_responses(base, prompts, max_new_tokens=12, seed=7, batch_size=16)
    assert one == many
    assert all(len(r) >= 1 for r in one)
    other_seed = sample_responses(base, prompts, max_new_tokens=12, seed=8, batch_size=16)
    assert other_seed != one, "the seed must matter"


def test_base_sampled_kl_matches_reference(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    result = fg.kl(TEXTS, max_new_tokens=10, batch_size=3)
    assert result.sample_from == "base"
    prompts = [encode_prompt(fg.base.tokenizer, r) for r in parse_prompts(TEXTS)]
    responses = sample_responses(fg.base, prompts, max_new_tokens=10, seed=fg.seed)
    ref_f, _ = reference_kl(tiny["base"], tiny["candidate"], list(zip(prompts, responses)))
    assert result.value == pytest.approx(np.concatenate(ref_f).mean(), rel=1e-5)
    again = fg.kl(TEXTS, max_new_tokens=10, batch_size=8)
    assert again.value == pytest.approx(result.value, abs=1e-6), "seeded runs repeat"


def test_lora_candidate_kl_matches_merged_reference(tiny):
    store = ModelStore(device="cpu", dtype="float32")
    fg = fg_for(store, tiny["base"], tiny["lora"])
    assert fg.candidate.model is fg.base._peft, "adapter on the run's base shares its weights"
    items = dataset_items()
    result = fg.kl(items, sample_from="dataset")
    ref_f, ref_r = reference_kl(tiny["base"], tiny["lora"], pairs_of(fg, items))
    assert result.value == pytest.approx(np.concatenate(ref_f).mean(), rel=1e-4)
    assert result.reverse_mean == pytest.approx(np.concatenate(ref_r).mean(), rel=1e-4)
    assert result.value > 1e-3


def test_nan_weights_are_reported_at_load(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["nan"])
    with pytest.raises(NonFiniteError, match=r"layers\.1\.mlp\.down_proj\.weight has 1 NaN"):
        fg.kl(TEXTS[:2], sample_from="base", max_new_tokens=4)


def test_nan_logits_never_average_away(tiny):
    store = ModelStore(device="cpu", dtype="float32", check_weights=False)
    fg = fg_for(store, tiny["base"], tiny["nan"])
    with pytest.raises(NonFiniteError, match=r"KL is NaN/inf at prompt \d+, response token \d+"):
        fg.kl(dataset_items(), sample_from="dataset")


def test_tokenizer_mismatch_names_the_token(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["other_vocab"])
    with pytest.raises(
        IncompatibleModelsError, match=r"tokenizers differ at token id \d+: base .* has '.*', candidate"
    ):
        fg.kl(TEXTS[:1], max_new_tokens=2)


def test_vocab_size_mismatch_needs_opt_in(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["bigvocab"])
    with pytest.raises(IncompatibleModelsError, match="vocabulary sizes differ.*allow_vocab_mismatch"):
        fg.kl(dataset_items(), sample_from="dataset")
    result = fg.kl(dataset_items(), sample_from="dataset", allow_vocab_mismatch=True)
    vocab = fg.base.raw_model.get_output_embeddings().weight.shape[0]
    ref_f, _ = reference_kl(tiny["base"], tiny["bigvocab"], pairs_of(fg, dataset_items()), vocab=vocab)
    assert result.value == pytest.approx(np.concatenate(ref_f).mean(), rel=1e-4)


def test_kl_pair_handles_zero_probabilities():
    import torch

    lp = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))
    lq = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    fwd, rev = kl_pair(lp, lq)
    assert fwd.item() == pytest.approx(np.log(2))
    assert rev.item() == float("inf"), "q puts mass where p has none: reverse KL is infinite"
    nan = torch.tensor([[float("nan"), 0.0, 0.0]])
    f2, r2 = kl_pair(nan, lq)
    assert torch.isnan(f2).all() and torch.isnan(r2).all()


def test_worst_prompts_are_decoded(tiny, store):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    result = fg.kl(dataset_items(), sample_from="dataset")
    worst = result.worst(2)
    assert len(worst) == 2 and worst[0].mean_kl >= worst[1].mean_kl
    assert worst[0].mean_kl == pytest.approx(result.per_prompt.max())
    assert all(isinstance(d.token, str) for d in worst[0].positions)
    assert "prompt" in result.format_worst()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"direction": "sideways"}, "direction must be one of"),
        ({"sample_from": "nowhere"}, "sample_from must be one of"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
    ],
)
def test_bad_arguments(tiny, store, kwargs, message):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    with pytest.raises(ValueError, match=message):
        fg.kl(TEXTS, **kwargs)


def test_kl_pair_fast_path_equals_the_definition():
    import torch

    gen = torch.Generator().manual_seed(0)
    lb = torch.randn(7, 50, generator=gen, dtype=torch.float64) * 3
    lc = lb + torch.randn(7, 50, generator=gen, dtype=torch.float64) * 0.2
    lc[2, 4] = float("-inf")  # a masked token on one row takes the careful path
    lp, lq = lb.log_softmax(-1), lc.log_softmax(-1)
    fwd, rev = kl_pair(lp, lq)
    p, q = lp.exp().numpy(), lq.exp().numpy()
    ref_f = np.array(
        [sum(pi * (np.log(pi) - np.log(qi)) if qi > 0 else np.inf for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]
    )
    ref_r = np.array([sum(qi * (np.log(qi) - np.log(pi)) for pi, qi in zip(pr, qr) if qi > 0) for pr, qr in zip(p, q)])
    np.testing.assert_allclose(fwd.numpy(), ref_f, rtol=1e-10)
    np.testing.assert_allclose(rev.numpy(), ref_r, rtol=1e-10)
    assert fwd[2].item() == float("inf") and np.isfinite(rev[2].item())


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limit(tiny, store, limit):
    fg = fg_for(store, tiny["base"], tiny["candidate"])
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        fg.kl(TEXTS, limit=limit)


def _float64_kl(zb, zc):
    """KL both ways from logits, in float64 numpy, straight from the definition."""
    lp = zb.double().log_softmax(-1).numpy()
    lq = zc.double().log_softmax(-1).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        p, q = np.exp(lp), np.exp(lq)
        fwd = np.where(p > 0, p * (lp - lq), 0.0).sum(-1)
        rev = np.where(q > 0, q * (lq - lp), 0.0).sum(-1)
    return fwd, rev


def _engine_kl(zb, zc):
    import torch

    from pytest_forgetguard.kl import _kl_logits, _Workspace

    n = zb.shape[0]
    fwd, rev = torch.empty(n), torch.empty(n)
    tb, tc = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    _kl_logits(torch.stack([zb, zc]), fwd, rev, tb, tc, _Workspace())
    return fwd.double().numpy(), rev.double().numpy(), tb, tc


@pytest.mark.parametrize("vocab", [1000, 1536, 49152])
def test_fused_kl_arithmetic_equals_the_definition(vocab):
    import torch

    gen = torch.Generator().manual_seed(1)
    zb = torch.randn(40, vocab, generator=gen) * 4
    zc = zb + torch.randn(40, vocab, generator=gen) * 0.1
    zc[3] = zb[3]  # identical rows: exactly zero, not round-off
    zc[4] = zb[4] + 60.0  # a shift of all logits changes nothing
    zc[5] = zb[5] * 0.0  # uniform candidate
    fwd, rev, tb, tc = _engine_kl(zb, zc)
    ref_f, ref_r = _float64_kl(zb, zc)
    np.testing.assert_allclose(fwd, ref_f, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rev, ref_r, rtol=1e-4, atol=1e-6)
    assert fwd[3] == 0.0 and rev[3] == 0.0
    assert torch.equal(tb, zb.argmax(-1)) and torch.equal(tc, zc.argmax(-1))


def test_fused_kl_arithmetic_keeps_infinities_and_nans():
    import torch

    gen = torch.Generator().manual_seed(2)
    zb = torch.randn(20, 1100, generator=gen)
    zc = zb + 0.05
    zc[1, 7] = float("-inf")  # the candidate rules out a token the base allows: forward KL is infinite
    zb[2, 9] = float("-inf")  # and the other way round
    zb[3, 0] = float("nan")
    zc[4, 1099] = float("inf")
    fwd, rev, _, _ = _engine_kl(zb, zc)
    ref_f, ref_r = _float64_kl(zb, zc)
    assert fwd[1] == float("inf") and np.isfinite(rev[1]) and rev[1] == pytest.approx(ref_r[1], rel=1e-4, abs=1e-6)
    assert rev[2] == float("inf") and np.isfinite(fwd[2]) and fwd[2] == pytest.approx(ref_f[2], rel=1e-4, abs=1e-6)
    assert np.isnan(fwd[3]) and np.isnan(rev[3]) and np.isnan(fwd[4]) and np.isnan(rev[4])
    fine = [i for i in range(20) if i not in (1, 2, 3, 4)]
    np.testing.assert_allclose(fwd[fine], ref_f[fine], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("width", [7, 512, 1024, 1500])
def test_row_max_is_argmax_first_maximum(width):
    import torch

    from pytest_forgetguard.kl import _row_max

    gen = torch.Generator().manual_seed(3)
    z = torch.randint(0, 5, (2, 30, width), generator=gen).float()  # many ties
    z[0, 0, -1] = 9.0  # the maximum in the last entry (a partial block when width % 512)
    z[1, 1, 0] = 9.0
    z[1, 1, width // 2] = 9.0  # a tie across blocks: the first wins
    z[0, 2, 3] = float("nan")
    top, peak = _row_max(z)
    assert torch.equal(top, z.argmax(-1))
    assert torch.equal(peak.squeeze(-1)[~z.isnan().any(-1)], z.amax(-1)[~z.isnan().any(-1)])
    assert torch.isnan(peak[0, 2]).all()


def test_head_fast_path_equals_the_module():
    import torch

    from pytest_forgetguard.kl import _project

    gen = torch.Generator().manual_seed(4)
    head = torch.nn.Linear(16, 300, bias=True)
    states = torch.randn(5, 16, generator=gen)
    with torch.no_grad():
        want = head(states)
        out = torch.empty(5, 200)
        got = _project(head, states, 200, out)
        assert got.data_ptr() == out.data_ptr(), "a plain float32 head writes into the buffer"
        torch.testing.assert_close(got, want[:, :200])
        # A hooked head (e.g. accelerate's offloading) runs as a module, hooks included.
        head.register_forward_hook(lambda mod, inp, res: res * 2)
        torch.testing.assert_close(_project(head, states, None, None), want * 2)
