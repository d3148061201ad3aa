"""The result cache: hits, misses, corrupt entries, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pytest_forgetguard.cache import CACHE_SCHEMA, ResultCache, cache_key


def test_round_trip_and_key_sensitivity(tmp_path):
    cache = ResultCache(tmp_path)
    key = cache_key(model="a", task={"x": 1})
    assert cache.load("ns", key) is None and cache.misses == 1
    cache.store("ns", key, {"v": [1, 2]})
    assert ResultCache(tmp_path).load("ns", key) == {"v": [1, 2]}
    assert cache_key(model="a", task={"x": 1}) == key
    assert cache_key(model="b", task={"x": 1}) != key
    assert cache_key(model="a", task={"x": 2}) != key
    assert not list(tmp_path.rglob("*.json.*")), "no temporary files left behind"


def test_corrupt_or_foreign_entries_are_recomputed_with_a_warning(tmp_path):
    warnings: list[str] = []
    cache = ResultCache(tmp_path, warn=warnings.append)
    key = cache_key(k=1)
    cache.store("ns", key, {"v": 1})
    path = next(tmp_path.rglob(f"{key}.json"))
    path.write_text("{truncated")
    assert ResultCache(tmp_path, warn=warnings.append).load("ns", key) is None
    path.write_text(json.dumps({"schema": CACHE_SCHEMA + 1, "key": key, "payload": {}}))
    assert ResultCache(tmp_path, warn=warnings.append).load("ns", key) is None
    assert len(warnings) == 2 and "unusable" in warnings[0]


def test_disabled_cache_keeps_only_this_process(tmp_path):
    cache = ResultCache(None)
    cache.store("ns", "k", 1)
    assert cache.load("ns", "k") == 1
    assert ResultCache(None).load("ns", "k") is None


def test_validate_rejects_a_payload_that_does_not_fit(tmp_path):
    warnings: list[str] = []
    cache = ResultCache(tmp_path, warn=warnings.append)
    cache.store("ns", "k", {"n": 3})
    # In memory and on disk alike, a rejected payload is a miss, with the reason.
    assert cache.load("ns", "k", validate=lambda p: None if p["n"] == 2 else "wrong n") is None
    fresh = ResultCache(tmp_path, warn=warnings.append)
    assert fresh.load("ns", "k", validate=lambda p: "wrong n") is None
    assert fresh.load("ns", "k", validate=lambda p: None) == {"n": 3}
    assert len(warnings) == 2 and all("wrong n" in w for w in warnings)
    assert (cache.hits, cache.misses, fresh.hits, fresh.misses) == (0, 1, 1, 1)


def test_a_failed_write_warns_and_keeps_the_result_for_the_process(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    warnings: list[str] = []
    cache = ResultCache(blocker, warn=warnings.append)
    cache.store("ns", cache_key(k=1), [1, 2])
    assert len(warnings) == 1 and "could not write cache entry" in warnings[0]
    assert cache.load("ns", cache_key(k=1)) == [1, 2]
    assert blocker.read_text().startswith("a file"), "nothing was overwritten"


# Stores one entry again and again, as xdist workers (or concurrent runs) that computed the same result do.
SAME_ENTRY_WRITER = """
import sys
from pathlib import Path
from pytest_forgetguard.cache import ResultCache

cache = ResultCache(Path(sys.argv[1]))
for _ in range(200):
    cache.store("samples", sys.argv[2], {"responses": [[5, 6, 7]] * 200}, meta={"model": "base"})
"""


def test_concurrent_writers_of_one_entry_leave_one_whole_file(tmp_path):
    key = cache_key(model="base", prompts=[1, 2])
    writers = [subprocess.Popen([sys.executable, "-c", SAME_ENTRY_WRITER, str(tmp_path), key]) for _ in range(4)]
    problems: list[str] = []
    while any(w.poll() is None for w in writers):  # read while they write: never half an entry
        hit = ResultCache(tmp_path, warn=problems.append).load("samples", key)
        assert hit is None or hit == {"responses": [[5, 6, 7]] * 200}
    assert [w.wait() for w in writers] == [0, 0, 0, 0] and problems == []
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [Path("samples") / key[:2] / f"{key}.json"], "one entry, no temporary file left"
