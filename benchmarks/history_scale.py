"""The run history at scale: import, `history --last`, and a gate's forecast read, small against large.

Builds two exports in the format `forgetguard export` writes — a baseline of 1,000 check rows and a large
one of 100,000 (default) — each a run per candidate with one KL and one retention check (a record of
about 1 KB, like a real run's), spread over 50 pairs of series as a team's history of several suites
and tasks is. Then, each in a fresh process, for both sizes:

- `forgetguard import` of the export into an empty history (wall time, peak RSS);
- `forgetguard history --last 10 --json` (wall time, peak RSS);
- the gate's read: the session's start check of the history and one forecast's points
  (`RunForecasts.points`, the code a retention check with `forecast_from` runs), peak RSS.

Prints a table with the large/small ratio of each. Time should grow with the rows imported, and nothing
else should grow much: memory bounded, `--last` answered from an index, the gate reading one pair.
``--postgresql`` measures the same on a PostgreSQL server the script starts (Debian's ``postgresql``
package, through tests/postgres.py), or on ``--url``'s server (two databases are created there).

    python benchmarks/history_scale.py [--rows 100000] [--keep DIR] [--postgresql | --url URL]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRS = 50

CLI = """
import resource, sys, time
from pytest_forgetguard.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
print("LOOKUP", time.perf_counter() - start, file=sys.stderr)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""
GATE = """
import resource, sys, time
from pathlib import Path
from pytest_forgetguard.session import ForgetguardSession
from pytest_forgetguard.settings import Settings
from pytest_forgetguard.history import parse_location
session = ForgetguardSession(Settings(enabled=True, history=parse_location(sys.argv[1]), cache_dir=None))
session.check_history()
assert session.history_notice is None and session.history_unusable is None
start = time.perf_counter()
points = session.forecasts.points("kl-series-0", "ret-series-0", "b" * 16, None)
print("LOOKUP", time.perf_counter() - start, file=sys.stderr)
print("POINTS", len(points), file=sys.stderr)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def record(kind: str, candidate: str, value: float, series: str, rng: random.Random) -> dict:
    details = {"series": series, "decided_by": "measurement", "verdict": "pass", "alpha": 0.05,
               "items_total": 1000, "items_needed": 0, "looks": 1, "method": "tango-score",
               "note": "x" * rng.randint(300, 600)}  # fmt: skip
    if kind == "retention":
        details["drop"] = value
    return {"name": f"{kind}-check", "kind": kind, "candidate": candidate, "metric": "m", "value": value,
            "budget": 1.0, "passed": True, "error": None, "details": details,
            "base": {"spec": "models/base", "fingerprint": "b" * 16},
            "candidate_info": {"spec": candidate, "fingerprint": f"fp-{candidate}"}}  # fmt: skip


def write_export(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows // 2):
            pair = i % PAIRS
            kl = rng.uniform(0, 0.5)
            cand = f"cand-{i}"
            line = {
                "format": "pytest-forgetguard-history",
                "schema": 2,
                "run": {
                    "run_id": f"run-{i}",
                    "time": 1.7e9 + i,
                    "host": "ci",
                    "git_commit": f"{i:040x}",
                    "source": "",
                    "complete": True,
                    "incomplete_reason": None,
                },  # fmt: skip
                "checks": [
                    {
                        "seq": 0,
                        "series": f"kl-series-{pair}",
                        "decided_by": None,
                        "record": record("kl", cand, kl, f"kl-series-{pair}", rng),
                    },
                    {
                        "seq": 1,
                        "series": f"ret-series-{pair}",
                        "decided_by": "measurement",
                        "record": record("retention", cand, 0.5 * kl, f"ret-series-{pair}", rng),
                    },
                ],  # fmt: skip
            }
            fh.write(json.dumps(line) + "\n")


def measure(code: str, *args: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {args}\n{done.stderr[-2000:]}")
    rss = int(next(line.split()[1] for line in done.stderr.splitlines() if line.startswith("RSS")))
    return wall, rss // 1024, done.stderr


def run(root: Path, rows: int, where: str | None = None) -> dict[str, tuple[float, int]]:
    export = root / f"export-{rows}.jsonl"
    history = where or str(root / f"history-{rows}.sqlite")
    if not export.exists():
        write_export(export, rows)
    out = {"import": measure(CLI, "import", str(export), "--history", history)[:2]}
    wall, rss, err = measure(CLI, "history", "--last", "10", "--json", "--history", history)
    out["history --last 10"] = (wall, rss)
    out["  the command itself, in process (s)"] = (_lookup(err), 0)
    wall, rss, err = measure(GATE, history)
    lookup = _lookup(err)
    points = int(next(line.split()[1] for line in err.splitlines() if line.startswith("POINTS")))
    assert points == rows // 2 // PAIRS, points
    out["gate: start check + one forecast's points"] = (wall, rss)
    out["  the forecast lookup, in process (s)"] = (lookup, 0)
    size = Path(history).stat().st_size if where is None else 0
    out["_size_mb"] = (size / 2**20, export.stat().st_size // 2**20)
    return out


def _lookup(stderr: str) -> float:
    return float(next(line.split()[1] for line in stderr.splitlines() if line.startswith("LOOKUP")))


def postgres_databases(url: str | None) -> tuple[list[str], object]:
    """Two fresh database URLs on ``url``'s server, or on a throwaway server started here (and its handle)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import postgres  # tests/postgres.py: the test suite's server

    if url is None:
        bindir = postgres.find_bindir()
        if bindir is None:
            raise SystemExit(f"no PostgreSQL server binaries: {postgres.HOW_TO_GET_ONE}")
        server = postgres.start_server(bindir)
        return [server.url(server.create_database()) for _ in range(2)], server
    import psycopg

    names = [f"fg_bench_{i}_{int(time.time())}" for i in range(2)]
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    return [url.rsplit("/", 1)[0] + "/" + name for name in names], None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--postgresql", action="store_true", help="on a PostgreSQL server started here")
    parser.add_argument("--url", default=None, help="on this PostgreSQL server (a database it may create in)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.postgresql or args.url:
            (small_db, large_db), server = postgres_databases(args.url)
            try:
                small, large = run(root, 1000, small_db), run(root, args.rows, large_db)
            finally:
                if server is not None:
                    import postgres

                    postgres.stop_server(server)
            print("backend: PostgreSQL")
        else:
            small, large = run(root, 1000), run(root, args.rows)
            print(
                f"history: {small['_size_mb'][0]:.1f} MB (1000 rows) vs {large['_size_mb'][0]:.0f} MB ({args.rows} rows)"
            )
    print(f"| operation | 1,000 rows: s / MiB | {args.rows:,} rows: s / MiB | ratio time / memory |")
    print("|---|---|---|---|")
    for key in small:
        if key.startswith("_"):
            continue
        (ts, ms), (tl, ml) = small[key], large[key]
        if key.startswith("  "):  # an in-process time: no memory of its own
            print(f"| {key.strip()} | {ts:.3f} | {tl:.3f} | {tl / ts:.1f}x |")
            continue
        print(f"| {key} | {ts:.2f} / {ms} | {tl:.2f} / {ml} | {tl / ts:.1f}x / {ml / ms:.2f}x |")


if __name__ == "__main__":
    main()
