"""`forgetguard compare` on large lm-eval --log_samples files: time and peak memory against reading them.

Writes two samples files of N items (default 100,000) in lm-eval's format, each document about 1 KB of
text (as an MMLU-style prompt with its answer options), then runs `forgetguard compare` in a fresh
process and, as the baseline in the same run, a process that only reads every line with json.loads
(the least any reader must do). Prints wall time and peak RSS of both, and their ratio.

    python benchmarks/compare_large.py [--items 100000] [--keep DIR]
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

READ_ONLY = """
import json, resource, sys
for path in sys.argv[1:]:
    with open(path, "rb") as fh:
        for line in fh:
            json.loads(line)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
COMPARE = """
import resource, sys
from pytest_forgetguard.cli import main
code = main(sys.argv[1:])
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def write(path: Path, n: int, flip: float, seed: int) -> None:
    rng = random.Random(seed)
    filler = "The quick brown fox jumps over the lazy dog. " * 22  # ~1 KB of document text
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            right = 1.0 if (i * 7919) % 10 < 7 else 0.0
            if rng.random() < flip:
                right = 1.0 - right
            doc = {"question": f"Question {i}: {filler}", "choices": ["A", "B", "C", "D"], "answer": i % 4}
            row = {"doc_id": i, "doc": doc, "target": str(i % 4), "arguments": {}, "resps": [], "filtered_resps": [],
                   "filter": "none", "metrics": ["acc"], "doc_hash": f"{i:064x}", "prompt_hash": "p",
                   "target_hash": "t", "acc": right}  # fmt: skip
            fh.write(json.dumps(row) + "\n")


def timed(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, the child's own peak RSS in MiB, exit status, output)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rss = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("RSS ")]
    return wall, (rss[-1] / 1024 if rss else float("nan")), done.returncode, done.stdout + done.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="fg-compare-"))
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base" / "samples_big_2026-12-03T00-00-00.000000.jsonl"
    cand = folder / "cand" / "samples_big_2026-12-03T00-00-00.000000.jsonl"
    base.parent.mkdir(exist_ok=True)
    cand.parent.mkdir(exist_ok=True)
    write(base, args.items, 0.0, 0)
    write(cand, args.items, 0.05, 1)
    size = (base.stat().st_size + cand.stat().st_size) / 2**20
    r_wall, r_rss, _, _ = timed([sys.executable, "-c", READ_ONLY, str(base), str(cand)])
    c_wall, c_rss, code, out = timed(
        [sys.executable, "-c", COMPARE, "compare", str(base), str(cand), "--max-drop", "0.01"]
    )
    print(f"{args.items} items per file, {size:.0f} MiB of JSONL in all")
    print(f"read every line (json.loads):  {r_wall:6.1f} s  peak RSS {r_rss:6.0f} MiB")
    print(f"forgetguard compare:           {c_wall:6.1f} s  peak RSS {c_rss:6.0f} MiB  (exit {code})")
    print(f"ratio compare / read: time {c_wall / r_wall:.2f}x")
    print("\n".join(line for line in out.strip().splitlines() if not line.startswith("RSS ")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
