"""The session's model stores: one per (device, dtype), options winning over a suite's values."""

from __future__ import annotations

from pytest_forgetguard.session import ForgetguardSession
from pytest_forgetguard.settings import Settings


def session(**settings):
    return ForgetguardSession(Settings(base="org/base", cache_dir=None, **settings))


def test_one_store_per_device_and_dtype():
    s = session()
    cpu32 = s.store_for("cpu", "float32")
    assert s.store_for("cpu", "float32") is cpu32
    bf16 = s.store_for("cpu", "bfloat16")
    assert bf16 is not cpu32 and (bf16.device, bf16.dtype) == ("cpu", "bfloat16")
    # `auto` dtype on CPU is float32: the same store as asking for float32.
    assert s.store_for("cpu", "auto") is cpu32


def test_options_win_over_the_suite_values():
    s = session(device="cpu", dtype="float16")
    store = s.store_for("cuda:3", "bfloat16")
    assert (store.device, store.dtype) == ("cpu", "float16")
    assert s.store is store


def test_each_device_and_dtype_has_its_own_handles():
    s = session()
    c32 = s.candidate_handle("org/cand", suite_device="cpu", suite_dtype="float32")
    c16 = s.candidate_handle("org/cand", suite_device="cpu", suite_dtype="bfloat16")
    assert c32 is not c16 and (c32.store.dtype, c16.store.dtype) == ("float32", "bfloat16")
    # The same request again gives the same handle, and the base it is compared with lives in its store.
    assert s.candidate_handle("org/cand", suite_device="cpu", suite_dtype="float32") is c32
    assert s.base_handle(suite_device="cpu", suite_dtype="float32") is c32._run_base
    assert c32._model is None and c16._model is None  # nothing was loaded


def test_suite_seed_applies_unless_the_option_gives_one(tiny):
    plain = ForgetguardSession(Settings(base=str(tiny["base"]), device="cpu", cache_dir=None))
    assert plain.forgetguard(str(tiny["candidate"]), name="x", suite_seed=7).seed == 7
    assert plain.forgetguard(str(tiny["candidate"]), name="x").seed == 1234
    forced = ForgetguardSession(Settings(base=str(tiny["base"]), device="cpu", seed=3, cache_dir=None))
    assert forced.forgetguard(str(tiny["candidate"]), name="x", suite_seed=7).seed == 3
