"""The ``forgetguard`` command: look at the run history without writing code.

    forgetguard history   [--check NAME] [--base FINGERPRINT] [--last N]
    forgetguard calibrate [--check KL_CHECK] [--base FINGERPRINT] [--coverage 0.9]
    forgetguard export    [--output FILE]          (JSONL; stdout by default)
    forgetguard import    FILE...                  (runs already there are skipped)

Every subcommand takes ``--history PATH`` (default: the plugin's, ``history.sqlite``
in the cache directory, or ``FORGETGUARD_HISTORY``) and ``--json``.

Example::

    $ forgetguard calibrate
    kl check   retention check    n  slope    R²    ρ     LOO err  width   allowance  KL budget
    arith-kl   code-perplexity   10  0.0241  0.93  0.94  0.0027   0.0089  0.0219     0.52
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ForgetguardError


def _default_history() -> Path | None:
    import os

    from .history import default_history_path
    from .settings import default_cache_dir

    root = os.environ.get("FORGETGUARD_CACHE_DIR")
    return default_history_path(Path(root).expanduser() if root else default_cache_dir())


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--history",
        type=Path,
        default=None,
        help="the run history (default: $FORGETGUARD_HISTORY, else the plugin's history.sqlite in the cache directory)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog="forgetguard", description="Look at pytest-forgetguard's run history: runs, calibrations, sharing."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("history", parents=[common], help="runs and candidates with their values")
    p.add_argument("--check", help="only this check (by name)")
    p.add_argument("--base", help="only this base (a fingerprint or its first characters)")
    p.add_argument("--last", type=int, default=None, help="only the last N runs")
    p = sub.add_parser("calibrate", parents=[common], help="forgetting forecasts fitted on the history")
    p.add_argument("--check", help="only pairs of this KL check")
    p.add_argument("--base", help="only this base (a fingerprint or its first characters)")
    p.add_argument("--coverage", type=float, default=0.9, help="the prediction intervals' coverage (default 0.9)")
    p = sub.add_parser("export", parents=[common], help="the history as JSONL, to merge elsewhere")
    p.add_argument("--output", "-o", type=Path, default=None, help="write here (default: stdout)")
    p = sub.add_parser("import", parents=[common], help="add runs from JSONL exports (each run once)")
    p.add_argument("files", nargs="+", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 a usage or history error with its message)."""
    args = _parser().parse_args(argv)
    from .history import History

    path = args.history or _default_history()
    if path is None:
        print("forgetguard: no history: caching is off; pass --history PATH", file=sys.stderr)
        return 1
    history = History(path)
    try:
        if args.command == "history":
            return _history(history, args)
        if args.command == "calibrate":
            return _calibrate(history, args)
        if args.command == "export":
            return _export(history, args)
        return _import(history, args)
    except (ForgetguardError, OSError) as exc:
        print(f"forgetguard: {exc}", file=sys.stderr)
        return 1


def _out(args: argparse.Namespace, data: Any, table: list[list[Any]], headers: list[str]) -> int:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    elif table:
        from tabulate import tabulate

        print(tabulate(table, headers=headers, tablefmt="simple", floatfmt=".4g"))
    else:
        print("nothing recorded yet")
    return 0


def _history(history: Any, args: argparse.Namespace) -> int:
    runs = history.runs()
    if args.last is not None:
        runs = runs[-args.last :]
    keep = {r.run_id for r in runs}
    rows = [
        r
        for r in history.rows(name=args.check)
        if r.run_id in keep and (args.base is None or (r.base_fingerprint or "").startswith(args.base))
    ]
    when = {r.run_id: r for r in runs}
    data = [
        {
            "run_id": r.run_id,
            "time": when[r.run_id].time,
            "git_commit": when[r.run_id].git_commit,
            "check": r.name,
            "kind": r.kind,
            "candidate": r.candidate,
            "metric": r.metric,
            "value": r.value,
            "drop": r.drop,
            "budget": r.budget,
            "passed": r.passed,
            "decided_by": r.decided_by,
            "series": r.series,
            "base_fingerprint": r.base_fingerprint,
        }
        for r in rows
    ]
    table = [
        [
            dt.datetime.fromtimestamp(d["time"]).strftime("%Y-%m-%d %H:%M"),
            (d["git_commit"] or "")[:9],
            d["check"],
            d["candidate"].rstrip("/").rsplit("/", 1)[-1],
            d["metric"],
            _number(d["value"]) if d["drop"] is None else f"drop {d['drop']:+.4g}",
            d["budget"],
            _verdict(d),
        ]
        for d in data
    ]
    return _out(args, data, table, ["time", "commit", "check", "candidate", "metric", "value", "budget", "verdict"])


def _number(x: Any) -> str:
    return format(x, ".4g") if isinstance(x, (int, float)) else str(x)


def _verdict(d: dict[str, Any]) -> str:
    if d["budget"] is None and d["passed"]:
        return "measured"  # recorded without a budget (e.g. imported from an experiment): no verdict
    return ("PASS" if d["passed"] else "FAIL") + (" (forecast)" if d["decided_by"] == "forecast" else "")


def _calibrate(history: Any, args: argparse.Namespace) -> int:
    from .calibration import summarize
    from .forecast import points_needed

    if not 0.0 < args.coverage < 1.0:
        raise ForgetguardError(f"--coverage must be in (0, 1), got {args.coverage}")
    pairs = summarize(history.rows(), kl_check=args.check, base=args.base)
    data = [p.to_json(args.coverage) for p in pairs]
    table = []
    for d in data:
        budget = d["kl_budget"]
        if d["runs_needed"]:
            budget = f"{d['runs_needed']} more runs"
        elif budget is None and d["allowance"] is not None:
            budget = "none in range"
        table.append(
            [
                d["kl_check"],
                d["retention_check"],
                d["n"],
                d["slope"],
                d["r2"],
                d["spearman"],
                d["loo_mean_abs_error"],
                "-" if d["interval_width"] is None else d["interval_width"],
                d["allowance"],
                budget,
                f"{d['forecasts_held']}/{d['forecasts_checked']}" if d["forecasts_checked"] else "-",
            ]
        )
        # Formatted here: tabulate's floatfmt skips a column that also holds words ("-", "none in range").
        table[-1] = [_number(c) if isinstance(c, float) else c for c in table[-1]]
    code = _out(
        args,
        data,
        table,
        [
            "kl check",
            "retention check",
            "n",
            "slope",
            "R²",
            "ρ",
            "LOO |err|",
            f"{args.coverage:.0%} width",
            "allowance",
            "KL budget",
            "held",
        ],  # fmt: skip
    )
    if not args.json and table:
        print(
            f"\nKL budget: the largest KL seen at which the {args.coverage:.0%} forecast's upper bound stays within the "
            f"allowance. A forecast needs {points_needed(args.coverage)} candidates. 'held': past forecasts whose "
            "interval held the drop measured afterwards."
        )
    return code


def _export(history: Any, args: argparse.Namespace) -> int:
    if args.output is None:
        n = history.export_jsonl(sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            n = history.export_jsonl(fh)
    if args.json:
        print(json.dumps({"runs": n}))
    elif args.output is not None:
        print(f"exported {n} runs to {args.output}")
    return 0


def _import(history: Any, args: argparse.Namespace) -> int:
    from .files import read_text

    added = skipped = 0
    for f in args.files:
        a, s = history.import_jsonl(read_text(f, "history export").splitlines(), source=str(f))
        added, skipped = added + a, skipped + s
    if args.json:
        print(json.dumps({"added": added, "already_there": skipped}))
    else:
        print(f"imported {added} runs into {history.path} ({skipped} already there)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
