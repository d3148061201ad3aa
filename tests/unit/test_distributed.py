"""Data-parallel KL: the launch variables, sharding and merging, and the exchange over a real gloo group.

The merge test runs the same computation a rank runs (sample and score a shard) without a process
group, and checks that the shards put back together give the single-process result. The exchange
tests start two real processes that form a gloo group on this machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pytest_forgetguard.comparison import Forgetguard
from pytest_forgetguard.distributed import (
    DEFAULT_TIMEOUT_S,
    DataParallel,
    DistributedError,
    Launch,
    RankFailure,
    shard,
    unshard,
)
from pytest_forgetguard.errors import NonFiniteError, PromptFileError
from pytest_forgetguard.generation import sample_responses
from pytest_forgetguard.kl import KLResult, TokenSequence, teacher_forced_kl
from pytest_forgetguard.prompts import encode_prompt, encode_response, parse_prompts
from pytest_forgetguard.session import ForgetguardSession
from pytest_forgetguard.settings import Settings

LAUNCH = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


# -- sharding ------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 12])
def test_shards_cover_every_item_once_and_merge_back_in_order(n, world):
    items = [f"prompt-{i}" for i in range(n)]
    shards = [shard(items, rank, world) for rank in range(world)]
    assert sorted(x for s in shards for x in s) == sorted(items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced, also with more ranks than items
    assert unshard(shards) == items


def test_merging_shards_of_the_wrong_sizes_is_an_error():
    with pytest.raises(ValueError, match=r"shard sizes \[1, 3\] do not come from sharding 4 items over 2 ranks"):
        unshard([["a"], ["b", "c", "d"]])
    with pytest.raises(ValueError, match="rank must be in 0..1"):
        shard([1, 2, 3], 2, 2)


# -- the launch ------------------------------------------------------------------------


def test_launch_variables_are_read():
    assert Launch.from_environ(LAUNCH) == Launch(rank=3, local_rank=1, world_size=4, timeout_s=DEFAULT_TIMEOUT_S)
    assert Launch.from_environ({**LAUNCH, "FORGETGUARD_DIST_TIMEOUT": "90"}).timeout_s == 90.0


@pytest.mark.parametrize("env", [{}, {"WORLD_SIZE": "1", "RANK": "0"}, {"WORLD_SIZE": ""}])
def test_no_launch_is_a_single_process(env):
    assert Launch.from_environ(env) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": None, "MASTER_PORT": None}, "WORLD_SIZE is 4 but RANK, MASTER_PORT are not set: launch pytest with"),
        ({"LOCAL_RANK": None}, "WORLD_SIZE is 4 but LOCAL_RANK is not set"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer, got 'two'"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be >= 1, got 0"),
        ({"RANK": "4"}, r"RANK must be in 0..3, got 4"),
        ({"LOCAL_RANK": "-1"}, "LOCAL_RANK must be >= 0, got -1"),
        ({"FORGETGUARD_DIST_TIMEOUT": "soon"}, "FORGETGUARD_DIST_TIMEOUT must be a positive number of seconds"),
        ({"FORGETGUARD_DIST_TIMEOUT": "0"}, "FORGETGUARD_DIST_TIMEOUT must be a positive number of seconds"),
    ],
)
def test_a_broken_launch_is_a_clear_error(change, message):
    env = {k: v for k, v in {**LAUNCH, **change}.items() if v is not None}
    with pytest.raises(DistributedError, match=message):
        Launch.from_environ(env)


def test_launch_variables_alone_are_no_process_group():
    import torch.distributed as dist

    assert not dist.is_initialized()
    assert Launch.from_process_group(LAUNCH) is None  # a callback outside any group measures alone


def test_each_rank_loads_on_its_own_gpu():
    launch = Launch(rank=3, local_rank=1, world_size=4)
    assert [launch.device_for(d) for d in ("cuda", "cuda:0", "cpu", "mps")] == ["cuda:1", "cuda:0", "cpu", "mps"]
    # Through the session, as the fixtures load models (nothing touches a GPU here).
    session = ForgetguardSession(
        Settings(base="org/base", device="cuda", cache_dir=None), parallel=DataParallel(launch)
    )
    assert session.store.device == "cuda:1" and session.base_handle().store.device == "cuda:1"
    assert not session.writes_reports
    rank0 = ForgetguardSession(Settings(cache_dir=None), parallel=DataParallel(Launch(0, 0, 4)))
    assert rank0.writes_reports and ForgetguardSession(Settings(cache_dir=None)).writes_reports


class _OwnError(Exception):
    pass


def test_another_ranks_failure_keeps_its_type_where_it_can():
    def failure(exc: BaseException) -> RankFailure:
        return RankFailure.of(exc, rank=1)

    nan = failure(NonFiniteError("KL is NaN/inf at prompt 3")).rebuild(2)
    assert type(nan) is NonFiniteError and str(nan) == "rank 1 of 2: KL is NaN/inf at prompt 3"
    assert type(failure(KeyError("x")).rebuild(2)) is KeyError
    # Types that are not forgetguard's or Python's own, or whose constructor wants more, are named instead.
    for exc in (_OwnError("boom"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")):
        rebuilt = failure(exc).rebuild(2)
        assert type(rebuilt) is DistributedError
        assert str(rebuilt).startswith(f"rank 1 of 2 failed: {type(exc).__qualname__}: ")


# -- merging: what each rank computes, put back together ------------------------------------

ITEMS = [
    {"prompt": p, "response": r}
    for p, r in [
        ("The for statement", " executes the suite once for each item."),
        ("A class definition", " defines a class object."),
        ("Identifiers", " are unlimited in length."),
        ("Boolean operations", " are or, and and not."),
        ("The while statement", " is used for repeated execution as long as an expression is true."),
    ]
]


@pytest.mark.parametrize("sample_from", ["base", "dataset"])
def test_shards_scored_apart_give_the_single_process_result(tiny, store, sample_from):
    base = store.get(str(tiny["base"]), role="base")
    fg = Forgetguard(base, store.get(str(tiny["candidate"]), base=base), seed=7)
    whole = fg.kl(ITEMS, sample_from=sample_from, max_new_tokens=6)

    tok = base.tokenizer
    records = parse_prompts(ITEMS)
    prompt_ids = [encode_prompt(tok, r) for r in records]
    world = 3
    per_rank = []
    for rank in range(world):
        mine = shard(list(range(len(records))), rank, world)
        if sample_from == "base":
            responses = sample_responses(base, [prompt_ids[i] for i in mine], 6, seed=7)
        else:
            responses = [encode_response(tok, records[i]) for i in mine]
        seqs = [
            TokenSequence(records[i].index, prompt_ids[i], resp, records[i].display())
            for i, resp in zip(mine, responses)
        ]
        per_rank.append(teacher_forced_kl(base, fg.candidate, seqs, sample_from=sample_from, seed=7).prompts)
    merged = KLResult(direction="forward", sample_from=sample_from, prompts=unshard(per_rank), seed=7)

    assert [p.index for p in merged.prompts] == [p.index for p in whole.prompts] == list(range(len(ITEMS)))
    for a, b in zip(merged.prompts, whole.prompts):
        np.testing.assert_array_equal(a.response_ids, b.response_ids)  # a shard samples what one process samples
        # Per token, float32 rounding of other batch shapes (the contract is on the pooled numbers, below).
        np.testing.assert_allclose(a.forward, b.forward, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.reverse, b.reverse, rtol=1e-5, atol=1e-6)
    for name in ("value", "forward_mean", "reverse_mean", "ci_low", "ci_high", "median", "p99", "max"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), abs=1e-6), name
    assert (merged.n_prompts, merged.n_tokens, merged.top1_agreement) == (
        whole.n_prompts,
        whole.n_tokens,
        whole.top1_agreement,
    )


# -- the exchange over a real gloo group -------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import json, os
    from pytest_forgetguard.distributed import DataParallel, Launch
    from pytest_forgetguard.errors import NonFiniteError

    par = DataParallel(Launch.from_environ(os.environ))
    out = {}

    def attempt(name, fn):
        try:
            out[name] = ["ok", fn()]
        except Exception as exc:
            out[name] = ["error", type(exc).__name__, str(exc)]

    def fail_on_rank_1():
        if par.rank == 1:
            raise NonFiniteError("KL is NaN/inf at prompt 1")
        return "fine"

    attempt("values", lambda: par.exchange("values", lambda: [par.rank] * (par.rank + 1), device="cpu"))
    # A callback finds the group someone else started (here: the exchange above) by its own rank and size.
    attempt("group", lambda: list(vars(Launch.from_process_group({"LOCAL_RANK": str(par.rank)})).values()))
    attempt("failure", lambda: par.exchange("failure", fail_on_rank_1, device="cpu"))
    # A value that cannot travel is an error on every rank, not a rank that skips the collective.
    attempt("unpicklable", lambda: par.exchange("unpicklable", lambda: (lambda: 0) if par.rank == 0 else 1, device="cpu"))
    attempt("out-of-step", lambda: par.exchange(f"check {par.rank}", lambda: None, device="cpu"))
    attempt("after", lambda: par.exchange("after", lambda: 10 * par.rank, device="cpu"))
    attempt("close", par.close)
    print("RESULT " + json.dumps(out))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_exchange_over_gloo_shares_values_and_failures():
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "FORGETGUARD_DIST_TIMEOUT": "60",
        }
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))) for out in outputs]
    r0, r1 = results
    assert r0["values"] == r1["values"] == ["ok", [[0], [1, 1]]]
    assert [r0["group"], r1["group"]] == [["ok", [rank, rank, 2, DEFAULT_TIMEOUT_S]] for rank in (0, 1)]
    # The failing rank raises its own error; the other rank raises the same type, saying where it happened.
    assert r1["failure"] == ["error", "NonFiniteError", "KL is NaN/inf at prompt 1"]
    assert r0["failure"] == ["error", "NonFiniteError", "rank 1 of 2: KL is NaN/inf at prompt 1"]
    assert r0["unpicklable"][0] == r1["unpicklable"][0] == "error"
    assert r1["unpicklable"][1] == r0["unpicklable"][1]  # pickle's own error type, on both ranks
    assert r1["unpicklable"][2] == "rank 0 of 2: " + r0["unpicklable"][2]
    for r in results:
        assert r["out-of-step"][:2] == ["error", "DistributedError"]
        assert "ranks are out of step (rank 0: #4 check 0; rank 1: #4 check 1)" in r["out-of-step"][2]
    # The ranks stay usable after every kind of failure, and finish together.
    assert r0["after"] == r1["after"] == ["ok", [0, 10]]
    assert r0["close"] == r1["close"] == ["ok", None]


def test_a_single_process_never_starts_a_process_group(tiny, store):
    import torch.distributed as dist

    base = store.get(str(tiny["base"]), role="base")
    fg = Forgetguard(base, store.get(str(tiny["candidate"]), base=base))
    fg.kl(ITEMS[:2], sample_from="dataset")
    assert not dist.is_initialized()
    with pytest.raises(PromptFileError, match="no prompts"):  # errors are unchanged, not wrapped
        fg.kl([], sample_from="dataset")
