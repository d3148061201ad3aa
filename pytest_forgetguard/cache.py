"""A JSON result cache that is never trusted blindly.

Entries are keyed by a hash of everything that determines the result (the
caller passes those parts), carry a schema version and metadata, are written
atomically, and a corrupt or incompatible entry is reported through ``warn``
and recomputed — never a crash, never a stale answer.

Example::

    cache = ResultCache(Path("~/.cache/pytest-forgetguard"), warn=print)
    key = cache_key(model="a1b2...", task_config={...}, data="9f8e...")
    payload = cache.load("retention", key)
    if payload is None:
        payload = compute()
        cache.store("retention", key, payload, meta={"task": "fg_capitals"})
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import write_atomic

CACHE_SCHEMA = 1


def cache_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (keys sorted; non-JSON values by ``str``)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """``root=None`` disables the cache (every load misses, stores are dropped)."""

    def __init__(self, root: Path | None, warn: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.warn = warn or (lambda message: None)
        self.hits = 0
        self.misses = 0
        self._memory: dict[tuple[str, str], Any] = {}  # this process's entries, even with the disk cache off

    def _path(self, namespace: str, key: str) -> Path:
        if self.root is None:
            raise ValueError("a disabled cache (root=None) has no files")
        return self.root / namespace / key[:2] / f"{key}.json"

    def load(self, namespace: str, key: str, validate: Callable[[Any], str | None] | None = None) -> Any | None:
        """The payload stored under ``key``, or None (a miss).

        ``validate`` returns why a payload cannot be used (None when it can);
        a rejected entry is reported through ``warn`` and is a miss, like a
        corrupt file.
        """
        if (namespace, key) in self._memory:
            payload = self._memory[(namespace, key)]
            where = f"{namespace}/{key} (in memory)"
        elif self.root is None:
            self.misses += 1
            return None
        else:
            path = self._path(namespace, key)
            where = str(path)
            if not path.is_file():
                self.misses += 1
                return None
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(entry, dict) or entry.get("schema") != CACHE_SCHEMA or entry.get("key") != key:
                    schema = entry.get("schema") if isinstance(entry, dict) else "?"
                    raise ValueError(f"schema {schema} != {CACHE_SCHEMA}")
                payload = entry["payload"]
            except (OSError, ValueError, KeyError) as exc:
                self.warn(f"forgetguard cache entry {path} is unusable ({exc}); recomputing")
                self.misses += 1
                return None
        why = validate(payload) if validate is not None else None
        if why is not None:
            self._memory.pop((namespace, key), None)
            self.warn(f"forgetguard cache entry {where} is unusable ({why}); recomputing")
            self.misses += 1
            return None
        self.hits += 1
        self._memory[(namespace, key)] = payload
        return payload

    def remember(self, namespace: str, key: str, payload: Any) -> None:
        """Keep ``payload`` for this process only: another process writes the entry (see :meth:`store`)."""
        self._memory[(namespace, key)] = payload

    def store(self, namespace: str, key: str, payload: Any, meta: dict[str, Any] | None = None) -> None:
        """Keep ``payload`` for this process and, with a root, write it atomically.

        Processes that share the directory (pytest-xdist workers, concurrent runs) may store the same
        entry: the key names everything that determines the payload, and each writer replaces the file
        in one step from a temporary file of its own, so a reader sees one whole entry and no writer
        leaves another file. Under torchrun an entry every rank holds is stored by one rank
        (``LOCAL_RANK`` 0) and remembered by the others.

        A failed write (read-only or full disk) is reported through ``warn``:
        the result itself is fine, only the next run will compute it again.
        """
        self.remember(namespace, key, payload)
        if self.root is None:
            return
        path = self._path(namespace, key)
        entry = {"schema": CACHE_SCHEMA, "key": key, "meta": meta or {}, "payload": payload}
        try:
            write_atomic(path, json.dumps(entry, allow_nan=False))
        except (OSError, ValueError) as exc:  # ValueError: a NaN in the payload, which JSON cannot hold
            self.warn(f"forgetguard could not write cache entry {path} ({exc}); it will be recomputed next run")
