"""The run history at scale: import, `history --last`, and a gate's forecast read, small against large.

Builds two exports in the format `forgetguard export` writes — a baseline of 1,000 check rows and a large
one of 100,000 (default) — each a run per candidate with one KL and one retention check (a record of
about 1 KB, like a real run's), spread over 50 pairs of series as a team's history of several suites
and tasks is. Then, each in a fresh process, for both sizes:

- `forgetguard import` of the export into an empty history (wall time, peak RSS);
- `forgetguard history --last 2 --json` (wall time, peak RSS);
- the gate's read: the session's start check of the history and one forecast's points
  (`RunForecasts.points`, the code a retention check with `forecast_from` runs), peak RSS.

Prints a table with the large/small ratio of each. Time should grow with the rows imported, and nothing
else should grow much: memory bounded, `--last` answered from an index, the gate reading one pair.

    python benchmarks/history_scale.py [--rows 100000] [--keep DIR]
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
import resource, sys
from pytest_forgetguard.cli import main
code = main(sys.argv[1:])
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""
GATE = """
import resource, sys
from pathlib import Path
from pytest_forgetguard.session import ForgetguardSession
from pytest_forgetguard.settings import Settings
session = ForgetguardSession(Settings(enabled=True, history=Path(sys.argv[1]), cache_dir=None))
session.check_history()
assert session.history_notice is None and session.history_unusable is None
points = session.forecasts.points("kl-series-0", "ret-series-0", "b" * 16, None)
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


def run(root: Path, rows: int) -> dict[str, tuple[float, int]]:
    export, history = root / f"export-{rows}.jsonl", root / f"history-{rows}.sqlite"
    write_export(export, rows)
    out = {"import": measure(CLI, "import", str(export), "--history", str(history))[:2]}
    out["history --last 2"] = measure(CLI, "history", "--last", "2", "--json", "--history", str(history))[:2]
    wall, rss, err = measure(GATE, str(history))
    points = int(next(line.split()[1] for line in err.splitlines() if line.startswith("POINTS")))
    assert points == rows // 2 // PAIRS, points
    out["gate: start check + one forecast's points"] = (wall, rss)
    out["_size_mb"] = (history.stat().st_size / 2**20, export.stat().st_size // 2**20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        small, large = run(root, 1000), run(root, args.rows)
    print(f"history: {small['_size_mb'][0]:.1f} MB ({1000} rows) vs {large['_size_mb'][0]:.0f} MB ({args.rows} rows)")
    print(f"| operation | 1,000 rows: s / MiB | {args.rows:,} rows: s / MiB | ratio time / memory |")
    print("|---|---|---|---|")
    for key in small:
        if key.startswith("_"):
            continue
        (ts, ms), (tl, ml) = small[key], large[key]
        print(f"| {key} | {ts:.2f} / {ms} | {tl:.2f} / {ml} | {tl / ts:.1f}x / {ml / ms:.2f}x |")


if __name__ == "__main__":
    main()
