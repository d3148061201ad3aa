"""One source for every contract: the Python API, the suite schema and the registry of check kinds agree.

The schema tables (pytest_forgetguard/schema.py) say what every option accepts and defaults to; the
API's signatures must say the same, or a suite and a test with the same options would measure
different things.
"""

from __future__ import annotations

import inspect

import pytest

from pytest_forgetguard.checks import SUITE_RUNNERS, DriftChecks, KLChecks, PairChecks, RetentionChecks
from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.schema import DRIFT_KEYS, KIND_KEYS, KINDS, KL_KEYS, REQUIRED, RETENTION_KEYS, TOP_KEYS
from pytest_forgetguard.settings import DEFAULT_SEED

# The methods that take each kind's options: the measurement and the gate.
API = {
    "kl": (KLChecks.kl, KLChecks.assert_kl_budget),
    "retention": (RetentionChecks.retention, RetentionChecks.assert_retained),
    "drift": (DriftChecks.drift, DriftChecks.assert_drift),
}
# Positional arguments of the API: required in a suite, no default anywhere.
POSITIONAL = {"kl": {"prompts", "budget"}, "retention": {"task"}, "drift": set()}


def parameters(kind):
    out = {}
    for method in API[kind]:
        for name, param in inspect.signature(method).parameters.items():
            if name not in ("self", "name") and param.kind is not inspect.Parameter.VAR_KEYWORD:
                out[name] = param
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_suite_key_is_an_api_argument_with_the_schema_default(kind):
    params = parameters(kind)
    for key, spec in KIND_KEYS[kind].items():
        assert key in params, f"suite key {kind}.{key} has no API argument"
        default = params[key].default
        if key in POSITIONAL[kind]:
            assert default is inspect.Parameter.empty, f"{kind}.{key} is required in suites, optional in the API"
        elif spec.default is not None:
            assert default == spec.default, f"{kind}.{key}: API default {default!r}, schema default {spec.default!r}"
        else:
            # No literal default: the API's None means what the schema says in words (default_doc), or the
            # key belongs to a group of which a check must give one (max_drop / max_drop_relative).
            in_group = any(key in group for group in REQUIRED[kind])
            assert default is None and (spec.default_doc or in_group), f"{kind}.{key}: API default {default!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_api_argument_is_a_suite_key(kind):
    assert set(parameters(kind)) == set(KIND_KEYS[kind]), "the API and the suite schema offer different options"


def test_enums_come_from_the_schema():
    from pytest_forgetguard.checks.kl import DIRECTIONS, SAMPLE_FROM
    from pytest_forgetguard.kl import METRICS
    from pytest_forgetguard.lmeval import BACKENDS
    from pytest_forgetguard.retention import GATES

    assert DIRECTIONS == KL_KEYS["direction"].enum == tuple(METRICS)
    assert SAMPLE_FROM == KL_KEYS["sample_from"].enum
    assert GATES == RETENTION_KEYS["gate"].enum and BACKENDS == RETENTION_KEYS["backend"].enum


def test_one_default_seed():
    assert TOP_KEYS["seed"].default == DEFAULT_SEED
    assert inspect.signature(PairChecks.__init__).parameters["seed"].default == DEFAULT_SEED
    from pytest_forgetguard.lmeval import evaluate

    assert inspect.signature(evaluate).parameters["seed"].default == DEFAULT_SEED


def test_every_kind_has_a_module_a_suite_runner_and_a_place_in_forgetguard():
    assert set(SUITE_RUNNERS) == set(KINDS) == set(API)
    for methods in API.values():
        for method in methods:
            assert getattr(Forgetguard, method.__name__) is method
    assert set(DRIFT_KEYS) <= set(parameters("drift"))


def test_forgetguard_is_a_thin_front():
    import pytest_forgetguard.comparison as comparison

    assert len(inspect.getsource(comparison).splitlines()) < 200
    assert Forgetguard.__dict__.keys() <= {"__module__", "__doc__", "__qualname__", "__firstlineno__",
                                           "__static_attributes__"}  # fmt: skip


def test_the_training_callback_has_the_contract_signature():
    # CONTRACT.md: ForgetguardCallback(suite, every_n_steps=50, stop_on_budget=False, base=None)
    from pytest_forgetguard.integrations.transformers import ForgetguardCallback

    params = list(inspect.signature(ForgetguardCallback).parameters.values())
    assert [(p.name, p.default) for p in params[1:4]] == [
        ("every_n_steps", 50),
        ("stop_on_budget", False),
        ("base", None),
    ]
    assert params[0].name == "suite"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[4:]), "more options stay keyword-only"
