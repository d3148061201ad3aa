"""The measuring code needs only :class:`~pytest_forgetguard.models.ModelLike`: it runs on a small fake.

The fake wraps an already-loaded transformers model (no store, no SPEC, no files): the KL engine,
sampling, drift and the compatibility checks give the same numbers as on the store's handles.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

from pytest_forgetguard.drift import weight_drift
from pytest_forgetguard.errors import ForgetguardError, NonFiniteError
from pytest_forgetguard.generation import sample_responses
from pytest_forgetguard.kl import TokenSequence, teacher_forced_kl
from pytest_forgetguard.models import ModelLike, ModelStore, check_compatible


class Fake:
    """Just what ModelLike asks for."""

    def __init__(self, model: Any, tokenizer: Any, role: str) -> None:
        self.raw_model, self.tokenizer, self.role, self.label = model, tokenizer, role, f"fake {role}"
        self.short_label = self.label
        self.fingerprint, self.adapter_name, self.dtype, self.device_class = role, None, "float32", "cpu"
        self.is_adapter, self.device, self.failure = False, torch.device("cpu"), None

    def load(self) -> None:
        if self.failure is not None:
            raise self.failure[0]

    @contextlib.contextmanager
    def active(self):
        self.load()
        yield self.raw_model

    def fail(self, exc: ForgetguardError) -> ForgetguardError:
        self.failure = self.failure or (exc, None)
        return exc


def fakes(tiny, cand="candidate"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def one(name, role):
        model = AutoModelForCausalLM.from_pretrained(tiny[name]).eval()
        return Fake(model, AutoTokenizer.from_pretrained(tiny[name]), role)

    return one("base", "base"), one(cand, "candidate")


SEQS = [TokenSequence(0, [5, 17, 42], [7, 9, 11]), TokenSequence(1, [3, 4], [8, 8, 2, 1])]


def test_the_fake_satisfies_the_protocol(tiny):
    base, cand = fakes(tiny)
    model_like: ModelLike = base  # mypy checks this assignment; at runtime it is just an object
    assert model_like.role == "base"


def test_kl_drift_and_sampling_on_fakes_equal_the_handles(tiny):
    base, cand = fakes(tiny)
    store = ModelStore()
    hb = store.get(str(tiny["base"]), role="base")
    hc = store.get(str(tiny["candidate"]), base=hb)
    assert check_compatible(base, cand) == check_compatible(hb, hc)
    assert teacher_forced_kl(base, cand, SEQS).value == teacher_forced_kl(hb, hc, SEQS).value
    assert weight_drift(base, cand).relative_l2 == weight_drift(hb, hc).relative_l2
    assert sample_responses(cand, [[5, 17, 42]], 4, seed=3) == sample_responses(hc, [[5, 17, 42]], 4, seed=3)


def test_a_fake_that_produces_nan_is_marked_unusable(tiny):
    base, cand = fakes(tiny)
    with torch.no_grad():
        cand.raw_model.model.layers[0].mlp.down_proj.weight.mul_(1e37)  # finite weights, NaN outputs
    with pytest.raises(NonFiniteError, match="candidate 'fake candidate' produced NaN/inf"):
        teacher_forced_kl(base, cand, SEQS)
    assert cand.failure is not None
