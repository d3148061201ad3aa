"""Every writer on a full disk (a real, filled tmpfs): one clear message, nothing half-written, nothing raw.

Reports and the history are tested through pytest runs in tests/integration/test_writers.py, the GGUF
conversion in tests/integration/test_real_model.py; these are the stores a run writes while it works.
"""

from __future__ import annotations

import errno

import pytest
import torch
from helpers import fill

from pytest_forgetguard.base_states import BaseStates
from pytest_forgetguard.cache import ResultCache
from pytest_forgetguard.files import write_atomic


def leftovers(disk):
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.is_file() and p.name != "ballast")


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(full_disk):
    target = full_disk / "report.json"
    target.write_text("the last run's report")
    fill(full_disk, leave=0)
    with pytest.raises(OSError) as err:
        write_atomic(target, "x" * 100_000)
    assert err.value.errno == errno.ENOSPC
    assert target.read_text() == "the last run's report" and leftovers(full_disk) == ["report.json"]


def test_a_cache_entry_on_a_full_disk_is_a_warning_and_the_result_stands(full_disk):
    seen: list[str] = []
    cache = ResultCache(full_disk / "cache", warn=seen.append)
    (full_disk / "cache").mkdir()
    fill(full_disk, leave=0)
    cache.store("lm-eval", "k" * 64, {"items": list(range(20_000))})
    assert cache.load("lm-eval", "k" * 64) == {"items": list(range(20_000))}  # this process keeps it
    [message] = seen
    assert "could not write cache entry" in message and "No space left on device" in message
    assert leftovers(full_disk) == []


def test_base_states_on_a_full_disk_are_a_warning_not_a_safetensors_error(full_disk):
    seen: list[str] = []
    states = BaseStates(ResultCache(full_disk / "cache", warn=seen.append))
    (full_disk / "cache").mkdir()
    fill(full_disk, leave=0)
    tensor = torch.ones(64, 1024)
    states.store("ab" + "c" * 62, tensor)  # a raw SafetensorError escaped here before
    [message] = seen
    assert "could not write" in message and "No space left on device" in message
    assert leftovers(full_disk) == []
