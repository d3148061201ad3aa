"""Data-parallel KL over ``torch.distributed``: each rank scores a shard of the prompts.

When pytest runs under ``torchrun`` (or ``accelerate launch``), every process
(rank) runs the same tests in the same order. A KL check then splits its
prompts between the ranks (prompt ``i`` goes to rank ``i % world_size``),
each rank samples and scores its shard, and the per-prompt results are
gathered to every rank, which rebuilds the same result a single process
would have computed, in the original prompt order. Every rank therefore
reaches the same verdict; rank 0 alone writes the reports and the history.
A cache entry every rank holds (gathered lm-eval results) is written by one
rank per node (``LOCAL_RANK`` 0); one a rank computed alone (its shard's
samples and base passes) by that rank: no entry has two writers.

Nothing here touches ``torch.distributed`` until :meth:`DataParallel.exchange`
is first called: :meth:`Launch.from_environ` only reads the variables the
launcher sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``).

Example::

    launch = Launch.from_environ(os.environ)  # None outside a multi-process launch
    parallel = DataParallel(launch)
    mine = shard(prompts, parallel.rank, parallel.world_size)
    parts = parallel.exchange("my-check", lambda: [score(p) for p in mine], device="cpu")
    scores = unshard(parts)  # every rank: all prompts' scores, in prompt order
"""

from __future__ import annotations

import builtins
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from . import errors
from .errors import ForgetguardError

T = TypeVar("T")

# How long a rank waits for the others in a collective. Long: a fast rank may wait for a slow
# one to finish sampling its shard. A rank that fails never makes the others wait (it sends its
# error); this is the backstop for a rank that dies without a word (killed, segfault).
DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "FORGETGUARD_DIST_TIMEOUT"


class DistributedError(ForgetguardError):
    """A multi-process run cannot go on: bad launch variables, ranks out of step, or another rank failed."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a ``torchrun`` / ``accelerate launch`` job."""

    rank: int
    local_rank: int
    world_size: int
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> "Launch | None":
        """The launch described by ``env``; ``None`` unless ``WORLD_SIZE`` is greater than 1.

        Raises :class:`DistributedError` when the variables a launcher sets
        are missing or malformed (the run would otherwise hang at rendezvous
        or silently score every prompt on every rank).

        Example::

            >>> Launch.from_environ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
            ...                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
            Launch(rank=1, local_rank=1, world_size=2, timeout_s=1800.0)
            >>> Launch.from_environ({}) is None
            True
        """
        world = _int_var(env, "WORLD_SIZE", default=1)
        if world < 1:
            raise DistributedError(f"WORLD_SIZE must be >= 1, got {world}")
        if world == 1:
            return None
        missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise DistributedError(
                f"WORLD_SIZE is {world} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
                "launch pytest with torchrun or accelerate launch (see the README, 'Past one machine')"
            )
        rank, local_rank = _int_var(env, "RANK"), _int_var(env, "LOCAL_RANK")
        if not 0 <= rank < world:
            raise DistributedError(f"RANK must be in 0..{world - 1}, got {rank}")
        if local_rank < 0:
            raise DistributedError(f"LOCAL_RANK must be >= 0, got {local_rank}")
        return cls(rank=rank, local_rank=local_rank, world_size=world, timeout_s=_timeout_s(env))

    @classmethod
    def from_process_group(cls, env: Mapping[str, str]) -> "Launch | None":
        """This process's place in a ``torch.distributed`` group someone else started (a ``Trainer`` under
        DDP or FSDP, ``accelerate``, a training script); ``None`` when no group of two or more processes runs.

        The group's own rank and size are used, whatever the environment says: a script may start its
        group with ``init_method="tcp://..."`` and set no launcher variables.
        """
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
            return None
        local_rank = _int_var(env, "LOCAL_RANK", default=0)
        return cls(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(),
                   timeout_s=_timeout_s(env))  # fmt: skip

    def device_for(self, device: str) -> str:
        """The device this rank loads models on: plain ``cuda`` becomes ``cuda:LOCAL_RANK``.

        An explicit ``cuda:N`` (or ``cpu``, ``mps``) is used as given on every rank.

        >>> Launch(rank=3, local_rank=1, world_size=4).device_for("cuda")
        'cuda:1'
        """
        return f"cuda:{self.local_rank}" if device == "cuda" else device


def _timeout_s(env: Mapping[str, str]) -> float:
    timeout = env.get(TIMEOUT_ENV, "").strip()
    if not timeout:
        return DEFAULT_TIMEOUT_S
    try:
        timeout_s = float(timeout)
    except ValueError:
        timeout_s = float("nan")
    if not timeout_s > 0 or timeout_s == float("inf"):
        raise DistributedError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {timeout!r}")
    return timeout_s


def _int_var(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw and default is not None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {raw!r}") from None


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items rank ``rank`` of ``world_size`` handles: every ``world_size``-th, from ``rank``.

    Round-robin rather than contiguous blocks, so that a prompt file sorted by
    length (or topic) still gives every rank a similar amount of work.

    >>> shard(list("abcdefg"), 1, 3)
    ['b', 'e']
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1} and world_size >= 1, got {rank} of {world_size}")
    return list(items[rank::world_size])


def unshard(shards: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of :func:`shard`: the shards of every rank (in rank order) back in the original order.

    Raises ``ValueError`` when the shard sizes cannot come from one sharding.

    >>> unshard([shard(list("abcdefg"), r, 3) for r in range(3)])
    ['a', 'b', 'c', 'd', 'e', 'f', 'g']
    """
    world = len(shards)
    n = sum(len(s) for s in shards)
    out: list[Any] = [None] * n
    for rank, part in enumerate(shards):
        expected = len(range(rank, n, world))
        if len(part) != expected:
            sizes = [len(s) for s in shards]
            raise ValueError(f"shard sizes {sizes} do not come from sharding {n} items over {world} ranks")
        out[rank::world] = part
    return out


# An exception attribute: the roles of the models a failed computation found unusable.
UNUSABLE_ATTR = "forgetguard_unusable"


@dataclass(frozen=True)
class RankFailure:
    """What a failing rank tells the others: enough to raise an equivalent error there."""

    rank: int
    module: str
    name: str
    message: str
    # Roles of the models the failing rank found unusable ("base", "candidate"): every rank marks
    # them too, so the ranks agree on every later check.
    unusable: tuple[str, ...] = ()

    @classmethod
    def of(cls, exc: BaseException, rank: int) -> "RankFailure":
        return cls(
            rank=rank,
            module=type(exc).__module__,
            name=type(exc).__qualname__,
            message=str(exc),
            unusable=tuple(getattr(exc, UNUSABLE_ATTR, ())),
        )

    def rebuild(self, world_size: int) -> Exception:
        """The error to raise on a rank that did not fail itself.

        forgetguard's own errors and Python's built-in ones keep their type (so
        ``pytest.raises(NonFiniteError)`` holds on every rank); any other type
        becomes a :class:`DistributedError` naming it.

        >>> RankFailure(1, "builtins", "ValueError", "bad").rebuild(2)
        ValueError('rank 1 of 2: bad')
        """
        where = f"rank {self.rank} of {world_size}"
        home = {"builtins": builtins, errors.__name__: errors}.get(self.module)
        cls = getattr(home, self.name, None) if home is not None else None
        rebuilt: Exception = DistributedError(f"{where} failed: {self.name}: {self.message}")
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                rebuilt = cls(f"{where}: {self.message}")
            except Exception:  # a constructor that wants other arguments
                pass
        setattr(rebuilt, UNUSABLE_ATTR, self.unusable)
        return rebuilt


class DataParallel:
    """The ranks of one launch, exchanging per-check results through ``torch.distributed``.

    The process group is created on the first :meth:`exchange` (``gloo``;
    ``cpu:gloo,cuda:nccl`` when the models are on CUDA), with the launch's
    timeout. A group someone else created (``accelerate``, a conftest) is
    reused, with a gloo group of our own beside it for the exchange: the
    exchanged values are small CPU objects.

    Example::

        parallel = DataParallel(Launch.from_environ(os.environ))
        per_rank = parallel.exchange("kl(prompts.jsonl)", compute_my_shard, device="cuda:0")
    """

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self._group: Any = None
        self._ready = False
        self._owned = False
        self._calls = 0

    def __repr__(self) -> str:
        return f"<DataParallel rank {self.rank} of {self.world_size}>"

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    def exchange(self, what: str, compute: Callable[[], T], device: str) -> list[T]:
        """Run ``compute`` here and return every rank's value, in rank order (the same list on every rank).

        ``what`` names the call; every rank must make the same calls in the
        same order, and a mismatch is a :class:`DistributedError` on every
        rank rather than a silent mix of two checks' results. When
        ``compute`` raises on any rank, every rank raises: the failing rank
        its own exception, the others a copy (see :meth:`RankFailure.rebuild`)
        — no rank is left waiting for one that gave up.
        """
        __tracebackhide__ = True  # a failure's traceback ends in the check, not in this plumbing
        self._calls += 1
        key = f"#{self._calls} {what}"
        group = self._process_group(device)
        own_error: Exception | None = None
        outcome: tuple[str, Any]
        try:
            outcome = ("ok", compute())
        except Exception as exc:
            own_error = exc
            outcome = ("error", RankFailure.of(exc, self.rank))
        # Pickled here rather than inside the collective: a value that cannot be pickled
        # must become an error the others hear about, not an exception that skips the collective.
        try:
            blob = pickle.dumps((key, outcome))
        except Exception as exc:
            own_error = exc
            blob = pickle.dumps((key, ("error", RankFailure.of(exc, self.rank))))
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, blob, group=group)
        # The peers are this job's own processes: their pickles are as trusted as ours.
        entries: list[tuple[str, tuple[str, Any]]] = [pickle.loads(b) for b in gathered]
        keys = [k for k, _ in entries]
        if any(k != key for k in keys):
            listing = "; ".join(f"rank {r}: {k}" for r, k in enumerate(keys))
            raise DistributedError(
                f"ranks are out of step ({listing}). Every rank must run the same checks in the same order: "
                "the same arguments, the same -k/-m selection, and any random-order plugin seeded alike"
            ) from own_error
        failures = [payload for status, payload in (o for _, o in entries) if status == "error"]
        if failures:
            if own_error is not None:
                raise own_error
            raise failures[0].rebuild(self.world_size)
        return [payload for _, (_, payload) in entries]

    def _process_group(self, device: str) -> Any:
        if self._ready:
            return self._group
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            raise DistributedError(
                f"WORLD_SIZE is {self.world_size} but this torch build has no torch.distributed; "
                "run a single process or install a torch with distributed support"
            )
        timeout = timedelta(seconds=self.launch.timeout_s)
        if dist.is_initialized():
            if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
                raise DistributedError(
                    f"the existing process group is rank {dist.get_rank()} of {dist.get_world_size()}, "
                    f"but the environment says rank {self.rank} of {self.world_size}"
                )
            # Whoever owns the default group may have made it NCCL-only; ours carries CPU objects.
            self._group = dist.new_group(backend="gloo", timeout=timeout)
        else:
            cuda = device.startswith("cuda")
            if cuda and torch.cuda.is_available() and self.launch.local_rank < torch.cuda.device_count():
                # NCCL work (ours or the tests') then lands on this rank's own GPU, not GPU 0.
                torch.cuda.set_device(self.launch.local_rank)
            dist.init_process_group(
                # Object collectives pick the CPU backend when there is one: gloo over TCP,
                # which also crosses nodes; NCCL serves any CUDA tensors a test exchanges.
                backend="cpu:gloo,cuda:nccl" if cuda else "gloo",
                init_method="env://",
                rank=self.rank,
                world_size=self.world_size,
                timeout=timeout,
            )
            self._owned = True
            self._group = None  # the default group
        self._ready = True
        return self._group

    def close(self) -> None:
        """End of the session: wait until every rank got here, then destroy the group if we created it.

        The wait matters: ``torchrun`` stops every rank as soon as one exits
        with a non-zero code (any failed test), and rank 0 may still be
        writing the reports. Raises :class:`DistributedError` when another
        rank arrives here while this one is in a check (ranks out of step).
        """
        try:
            self.exchange("end of session", lambda: None, device="cpu")
        finally:
            if self._owned:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()
                self._owned = False
            self._ready = False
            self._group = None


# -- sharded checks ------------------------------------------------------------------


def run_sharded(
    parallel: DataParallel,
    what: str,
    n: int,
    digest: str,
    compute: Callable[[list[int]], list[T]],
    models: Mapping[str, Any],
) -> list[T]:
    """Every rank computes its shard of ``n`` items; every rank gets all ``n`` results, in item order.

    ``compute(positions)`` returns one result per position of this rank's
    shard. ``digest`` proves the ranks read the same items (a mismatch is a
    :class:`DistributedError` on every rank). ``models`` (role -> a
    :class:`~pytest_forgetguard.models.ModelLike`) are kept in agreement: a
    model one rank finds unusable is marked unusable on every rank, so the
    ranks reach the same verdicts on every later check.
    """
    mine = shard(range(n), parallel.rank, parallel.world_size)

    def work() -> tuple[str, list[T]]:
        try:
            return digest, compute(mine) if mine else []  # more ranks than items: nothing to compute here
        except Exception as exc:
            setattr(exc, UNUSABLE_ATTR, tuple(r for r, m in models.items() if m.failure is not None))
            raise

    try:
        parts = parallel.exchange(what, work, device=str(next(iter(models.values())).device))
    except ForgetguardError as exc:
        # Another rank found a model broken: it is as unusable here. (Other exception types arrive as a
        # DistributedError naming them, and mark nothing.)
        for role in getattr(exc, UNUSABLE_ATTR, ()):
            if models[role].failure is None:
                models[role].fail(exc)
        raise
    digests = [d for d, _ in parts]
    if len(set(digests)) > 1:
        raise DistributedError(
            f"ranks read different prompts for {what} (token digests {', '.join(d[:12] for d in digests)}): "
            "every rank must see the same prompt file and tokenizer (on several nodes: the same files)"
        )
    return unshard([part for _, part in parts])
