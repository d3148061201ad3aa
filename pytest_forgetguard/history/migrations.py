"""The history's schema and its versions: one ordered list of migrations, for SQLite and PostgreSQL alike.

A new history is made by the same path an old one is upgraded by: the version-1 tables, then every
migration in order, in one transaction, so the upgrade of an old file is the code every new file runs.
The version lives in ``meta`` (key ``schema``). A history newer than this release is refused, never
downgraded; one older is upgraded in place the first time this release opens it.

To change the schema: append ``N: [statements]`` to :data:`MIGRATIONS` (dialect-neutral SQL: both
databases run it), and add an upgrade test from a file made by the release before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# Version 1, as the first release wrote it (DOUBLE PRECISION: SQLite's REAL, PostgreSQL's 8-byte float).
BASE = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        host TEXT,
        git_commit TEXT,
        source TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS checks (
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        series TEXT,
        base_fingerprint TEXT,
        candidate TEXT NOT NULL,
        candidate_fingerprint TEXT,
        metric TEXT,
        value DOUBLE PRECISION,
        drop_value DOUBLE PRECISION,
        budget DOUBLE PRECISION,
        passed INTEGER NOT NULL,
        error TEXT,
        decided_by TEXT,
        record TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS checks_by_series ON checks (series, base_fingerprint)",
    "INSERT INTO meta (key, value) VALUES ('schema', '1')",
)

MIGRATIONS: dict[int, Sequence[str]] = {
    # 2: runs record whether they finished (1: every older run finished, as far as anyone knew).
    2: (
        "ALTER TABLE runs ADD COLUMN complete INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE runs ADD COLUMN incomplete_reason TEXT",
        "CREATE INDEX IF NOT EXISTS runs_by_time ON runs (time)",
    ),
    # 3: runs belong to a project (NULL for older runs: shared by every project), so several repositories
    # share one database without mixing their series.
    3: (
        "ALTER TABLE runs ADD COLUMN project TEXT",
        "CREATE INDEX IF NOT EXISTS runs_by_project_time ON runs (project, time)",
        "CREATE INDEX IF NOT EXISTS checks_by_run ON checks (run_id)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)


def parse_version(value: Any) -> int | None:
    """The stored version as a number (None: not one this code could have written)."""
    return int(value) if isinstance(value, str) and value.isdigit() else None


def pending(found: int) -> list[tuple[int, Sequence[str]]]:
    """The migrations a history at version ``found`` needs, in order."""
    return [(v, MIGRATIONS[v]) for v in sorted(MIGRATIONS) if v > found]


def apply(execute: Callable[[str], Any], found: int | None) -> None:
    """Bring a history to :data:`SCHEMA_VERSION` inside the caller's transaction (``found`` None: a new one)."""
    if found is None:
        for statement in BASE:
            execute(statement)
        found = 1
    for version, statements in pending(found):
        for statement in statements:
            execute(statement)
        execute(f"UPDATE meta SET value = '{version}' WHERE key = 'schema'")
