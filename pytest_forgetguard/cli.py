"""The ``forgetguard`` command: verdicts on lm-eval runs made anywhere, planning, and the run history.

    forgetguard compare   BASE CANDIDATE (--max-drop X | --max-drop-relative Y) [--metric M] [--alpha A]
                          [--on-inconclusive fail|pass]   (exit 0 pass, 1 fail, 3 inconclusive, 2 bad input)
    forgetguard plan      --max-drop X [--flip-rate D] [--alpha A] [--power P] [--items N]
    forgetguard history   [--check NAME] [--base FINGERPRINT] [--last N]
    forgetguard calibrate [--check KL_CHECK] [--base FINGERPRINT] [--coverage 0.9]
    forgetguard export    [--output FILE]          (JSONL; stdout by default)
    forgetguard import    FILE...                  (runs already there are skipped)

Every subcommand takes ``--json``; the history's take ``--history PATH`` (default: the plugin's,
``history.sqlite`` in the cache directory, or ``FORGETGUARD_HISTORY``).

Example::

    $ forgetguard calibrate
    kl check   retention check  base                   n  slope    R²    ρ     LOO err  width   allowance  KL budget
    arith-kl   code-perplexity  smollm2 (3f2a9c1d)    10  0.0241  0.93  0.94  0.0027   0.0089  0.0219     0.52
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


def _default_history() -> str | Path:
    """$FORGETGUARD_HISTORY (a path or a URL), else the plugin's history.sqlite in the cache directory."""
    import os

    from .settings import default_cache_dir

    if os.environ.get("FORGETGUARD_HISTORY"):
        return os.environ["FORGETGUARD_HISTORY"]
    root = os.environ.get("FORGETGUARD_CACHE_DIR")
    return (Path(root).expanduser() if root else default_cache_dir()) / "history.sqlite"


EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--history",
        default=None,
        metavar="PATH|URL",
        help="the run history: a SQLite file, sqlite:///path or postgresql://user@host:port/db (default: "
        "$FORGETGUARD_HISTORY, else the plugin's history.sqlite in the cache directory)",
    )
    common.add_argument(
        "--project",
        default=None,
        help="only this project's runs (and those recorded before projects); import: put the runs in it "
        "(default: every project)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog="forgetguard", description="Look at pytest-forgetguard's run history: runs, calibrations, sharing."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _compare_parser(sub)
    _plan_parser(sub)
    p = sub.add_parser("history", parents=[common], help="runs and candidates with their values")
    p.add_argument("--check", help="only this check (by name)")
    p.add_argument("--base", help="only this base (a fingerprint or its first characters)")
    p.add_argument("--last", type=int, default=None, help="only the last N runs")
    p = sub.add_parser("calibrate", parents=[common], help="forgetting forecasts fitted on the history")
    p.add_argument("--check", help="only pairs of this KL check")
    p.add_argument("--base", help="only this base (a fingerprint or its first characters)")
    p.add_argument("--coverage", type=float, default=0.9, help="the prediction intervals' coverage (default 0.9)")
    p.add_argument(
        "--alpha", type=float, default=0.05, help="the upper bound's error rate for the KL budget (default 0.05)"
    )
    p = sub.add_parser("export", parents=[common], help="the history as JSONL, to merge elsewhere")
    p.add_argument("--output", "-o", type=Path, default=None, help="write here (default: stdout)")
    p = sub.add_parser("import", parents=[common], help="add runs from JSONL exports (each run once)")
    p.add_argument("files", nargs="+", type=Path)
    p = sub.add_parser(
        "migrate",
        help="copy a whole history into another (SQLite <-> PostgreSQL), checking the row counts",
        description="Copy every run of --from into --to in one transaction (runs already there are not added "
        "twice), then check that --to holds every run and check row of --from.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="PATH|URL", help="the history to copy")
    p.add_argument("--to", dest="target", required=True, metavar="PATH|URL", help="the history to copy into")
    p.add_argument("--project", default=None, help="copy only this project's runs (default: every project)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _compare_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="the retention verdict on two lm-eval --log_samples runs (exit 0 pass, 1 fail, 3 inconclusive, 2 bad input)",
        description="Pair two lm-eval --log_samples runs by doc_id (checked by doc_hash) and decide each task's drop "
        "against the allowance at alpha: pass when its one-sided upper bound is within it, fail when its lower bound "
        "is over it, inconclusive otherwise (with the items that would decide).",
    )
    p.add_argument("base", type=Path, help="the base's samples_<task>_<date>.jsonl, or a directory of them")
    p.add_argument("candidate", type=Path, help="the candidate's, the same way")
    p.add_argument("--metric", default=None, help="the per-item metric compared (default: each task's first)")
    p.add_argument("--filter", default=None, help="the lm-eval filter compared (default: each task's first)")
    allowance = p.add_mutually_exclusive_group(required=True)
    allowance.add_argument("--max-drop", type=float, default=None, help="the allowed drop, in the metric's units")
    allowance.add_argument(
        "--max-drop-relative", type=float, default=None, help="the allowed drop, a share of the base score"
    )
    p.add_argument("--alpha", type=float, default=0.05, help="error rate of each verdict (default 0.05)")
    p.add_argument(
        "--on-inconclusive",
        choices=("fail", "pass"),
        default="fail",
        help="exit status of an inconclusive verdict: fail (3, default) or pass (0)",
    )
    p.add_argument(
        "--lower-is-better",
        action="store_true",
        help="the metric is better when lower (known for perplexities and bits per byte)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output: a list of rows")


def _plan_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="items a retention check needs to decide (paired 0/1 metrics)",
        description="How many paired items a retention verdict needs: the minimum that can pass at all (no item "
        "flipped), and the items for a pass with the given power when the candidate's true drop is --drop and it "
        "flips --flip-rate of the items; with --items, the smallest allowance that many items prove.",
    )
    allowance = p.add_mutually_exclusive_group(required=True)
    allowance.add_argument(
        "--max-drop", type=float, default=None, help="the allowed drop (0/1 metric: a share of items)"
    )
    allowance.add_argument(
        "--max-drop-relative", type=float, default=None, help="the allowed drop, a share of --base-score"
    )
    p.add_argument("--base-score", type=float, default=None, help="the base's score (needed with --max-drop-relative)")
    p.add_argument(
        "--flip-rate",
        type=float,
        default=0.1,
        help="expected share of items on which the models disagree (default 0.1)",
    )
    p.add_argument("--drop", type=float, default=0.0, help="the candidate's expected true drop (default 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="the verdict's error rate (default 0.05)")
    p.add_argument("--power", type=float, default=0.8, help="the probability of a pass to plan for (default 0.8)")
    p.add_argument("--items", type=int, default=None, help="also say which allowance this many items prove")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status.

    ``compare``: 0 pass, 1 fail, 3 inconclusive, 2 bad input. The others: 0 ok, 1 a history or usage error,
    2 a command line argparse refuses.

    Example::

        >>> main(["plan", "--max-drop", "0.02", "--json"]) == 0  # doctest: +ELLIPSIS
        {...}
        True
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a command line argparse refused (its message is printed)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if args.command == "compare":
        return _compare(args)
    if args.command == "plan":
        return _plan(args)
    from .history import History

    try:
        if args.command == "migrate":
            return _migrate(args)
        history = History(args.history or _default_history(), project=args.project)
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


def _compare(args: argparse.Namespace) -> int:
    from .evidence.samples import SamplesError, read_runs

    try:
        _check_allowance_args(args)
        base_runs, cand_runs = read_runs(args.base), read_runs(args.candidate)
        if args.base.is_file() and args.candidate.is_file():
            cand_runs = {next(iter(base_runs)): next(iter(cand_runs.values()))}  # two files: the user paired them
        one_side = sorted(set(base_runs) ^ set(cand_runs))
        if one_side:
            where = {t: ("base" if t in base_runs else "candidate") for t in one_side}
            raise SamplesError(
                "tasks on one side only: "
                + ", ".join(f"{t} ({where[t]})" for t in one_side)
                + "; compare the same tasks (or pass the two files you mean)"
            )
        rows = [_compare_task(base_runs[t], cand_runs[t], args) for t in sorted(base_runs)]
    except (SamplesError, ValueError) as exc:
        print(f"forgetguard compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ArithmeticError, TypeError) as exc:  # values no aggregation can take (1e400, exp(1000), ...)
        print(f"forgetguard compare: these values cannot be compared ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate

        table = [
            [r["task"], r["metric"], r["n"], r["base_value"], r["candidate_value"], f"{r['drop']:+.4g}",
             f"[{r['low']:+.4g}, {r['high']:+.4g}]", r["allowance"], r["verdict"].upper(),
             "-" if r["items_needed"] is None else r["items_needed"]]
            for r in rows
        ]  # fmt: skip
        level = f"{1 - args.alpha:.0%}"
        print(tabulate(table, headers=["task", "metric", "n", "base", "candidate", "drop", f"one-sided {level} bounds",
                                       "allowance", "verdict", "items needed"], floatfmt=".4g"))  # fmt: skip
        for r in rows:
            if r["verdict"] == "inconclusive":
                print(f"{r['task']}: {r['explain']}")
    verdicts = {r["verdict"] for r in rows}
    if "fail" in verdicts:
        return EXIT_FAIL
    if "inconclusive" in verdicts:
        if args.on_inconclusive == "pass":
            print("forgetguard compare: inconclusive, passed by --on-inconclusive pass", file=sys.stderr)
            return EXIT_PASS
        return EXIT_INCONCLUSIVE
    return EXIT_PASS


def _check_allowance_args(args: argparse.Namespace) -> None:
    import math

    for flag, value in (("--max-drop", args.max_drop), ("--max-drop-relative", args.max_drop_relative)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
    if not (0 < args.alpha < 0.5):
        raise ValueError(f"--alpha must be in (0, 0.5), got {args.alpha}")


def _compare_task(base_path: Path, cand_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from .evidence.paired import decide_items
    from .evidence.samples import KNOWN_METRICS, SamplesError, pair, read_values
    from .stats import ItemValues

    base = read_values(base_path, args.metric, args.filter)
    cand = read_values(cand_path, base.metric, base.filter)
    b, c = pair(base, cand)
    aggregation, higher = KNOWN_METRICS.get(base.metric, ("mean", True))
    if args.lower_is_better:
        higher = False
    if isinstance(b[0], tuple) and aggregation == "mean":
        raise SamplesError(
            f"task {base.task!r}: {base.metric} has [value, length] pairs but is not a metric forgetguard knows "
            f"({', '.join(KNOWN_METRICS)}); its aggregation is unknown"
        )
    bv, cv = ItemValues(b, aggregation), ItemValues(c, aggregation)
    verdict = decide_items(bv, cv, higher, args.max_drop, args.max_drop_relative, args.alpha)
    return {
        "task": base.task,
        "metric": base.metric,
        "filter": base.filter,
        "verdict": verdict.verdict,
        "drop": verdict.drop,
        "low": verdict.low,
        "high": verdict.high,
        "n": verdict.n,
        "alpha": args.alpha,
        "allowance": verdict.allowance,
        "items_needed": verdict.items_needed,
        "base_value": bv.value(),
        "candidate_value": cv.value(),
        "higher_is_better": higher,
        "method": verdict.method,
        "passed": verdict.passes(args.on_inconclusive),
        "explain": verdict.explain(),
    }


def _plan(args: argparse.Namespace) -> int:
    from .evidence import planning
    from .evidence.verdicts import RELATIVE_SHARE

    try:
        _check_allowance_args(args)
        allowance, alpha = args.max_drop, args.alpha
        if args.max_drop_relative is not None:
            if args.base_score is None or not 0 < args.base_score <= 1:
                raise ValueError("--max-drop-relative needs --base-score, the base's score in (0, 1]")
            allowance = args.max_drop_relative * args.base_score
            # The verdict spends 0.9 alpha on the drop (the rest on the base score's bound): plan at that.
            alpha = args.alpha * (1 - RELATIVE_SHARE)
        minimum = planning.minimum_items(allowance, alpha)
        needed = planning.items_for(allowance, args.flip_rate, alpha, args.power, args.drop)
        provable = None
        if args.items is not None:
            provable = planning.provable_allowance(args.items, args.flip_rate, alpha, args.power, args.drop)
    except ValueError as exc:
        print(f"forgetguard plan: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    data = {"allowance": allowance, "alpha": args.alpha, "power": args.power, "flip_rate": args.flip_rate,
            "drop": args.drop, "minimum_items": minimum, "items_needed": needed, "items": args.items,
            "provable_allowance": provable}  # fmt: skip
    if args.json:
        print(json.dumps(data))
        return EXIT_PASS
    if minimum is None:
        print(f"an allowance of {allowance:g} can never be proven: a drop of 0 needs infinitely many items")
        return EXIT_PASS
    print(f"allowance {allowance:.4g} at alpha {args.alpha:g} (paired 0/1 items):")
    print(f"  at least {minimum} items to pass at all (every item agreeing)")
    if needed is None:
        print(f"  a true drop of {args.drop:g} is not within the allowance: no number of items passes it")
    else:
        print(f"  {needed} items to pass with probability {args.power:g} when the true drop is {args.drop:g} and "
              f"{args.flip_rate:.0%} of items flip")  # fmt: skip
    if provable is not None:
        print(f"  {args.items} items prove an allowance of {provable:.4g} (same power, drop and flip rate)")
    return EXIT_PASS


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
    runs = history.runs(last=args.last)
    keep = None if args.last is None else [r.run_id for r in runs]  # --last N: only those runs' rows are read
    rows = [
        r
        for r in history.rows(name=args.check, run_ids=keep)
        if args.base is None or (r.base_fingerprint or "").startswith(args.base)
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
            "complete": when[r.run_id].complete,
            "incomplete_reason": when[r.run_id].incomplete_reason,
            "project": r.project,
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
            _verdict(d) + ("" if d["complete"] else " (run incomplete)"),
        ]
        for d in data
    ]
    headers = ["time", "commit", "check", "candidate", "metric", "value", "budget", "verdict"]
    if len({d["project"] for d in data}) > 1:  # a shared history read across projects: say whose each run is
        headers.insert(2, "project")
        for row, d in zip(table, data):
            row.insert(2, d["project"] or "-")
    return _out(args, data, table, headers)


def _number(x: Any) -> str:
    return format(x, ".4g") if isinstance(x, (int, float)) else str(x)


def _verdict(d: dict[str, Any]) -> str:
    if d["budget"] is None and d["passed"]:
        return "measured"  # recorded without a budget (e.g. imported from an experiment): no verdict
    return ("PASS" if d["passed"] else "FAIL") + (" (forecast)" if d["decided_by"] == "forecast" else "")


def _calibrate(history: Any, args: argparse.Namespace) -> int:
    from .calibration import summarize

    if not 0.0 < args.coverage < 1.0:
        raise ForgetguardError(f"--coverage must be in (0, 1), got {args.coverage}")
    if not 0.0 < args.alpha < 0.5:
        raise ForgetguardError(f"--alpha must be in (0, 0.5), got {args.alpha}")
    rows = history.rows()
    pairs = summarize(rows, kl_check=args.check, base=args.base)
    specs = _base_specs(rows)
    data = [{**p.to_json(args.coverage, args.alpha), "base": specs.get(p.key.base_fingerprint)} for p in pairs]
    table = [_calibration_row(d) for d in data]
    headers = ["kl check", "retention check", "base", "n", "slope", "R²", "ρ", "LOO |err|",
               f"{args.coverage:.0%} width", "allowance", "KL budget", "held", "audits held"]  # fmt: skip
    code = _out(args, data, table, headers)
    if not args.json and table:
        _calibration_legend(data, args)
    return code


def _base_specs(rows: Sequence[Any]) -> dict[str | None, str]:
    """A calibration holds for one base: name it as the runs recorded it (the latest SPEC of its fingerprint)."""
    specs: dict[str | None, str] = {}
    for row in rows:
        recorded = row.record.get("base")
        if isinstance(recorded, dict) and recorded.get("spec"):
            specs[row.base_fingerprint] = str(recorded["spec"])
    return specs


def _calibration_row(d: dict[str, Any]) -> list[Any]:
    """One (KL check, retention check, base) row; the KL budget column says why there is none."""
    from .records import candidate_id

    name = candidate_id(d["base"]) if d["base"] else ""
    short = (d["base_fingerprint"] or "")[:8]
    base = f"{name} ({short})" if name and short else name or short or "-"
    budget = d["kl_budget"]
    if d["runs_needed"]:
        budget = f"{d['runs_needed']} more runs"
    elif d["evidence_problems"]:
        budget = "no evidence"
    elif budget is None and d["allowance"] is not None:
        budget = "none in range"
    row = [
        d["kl_check"],
        d["retention_check"],
        base,
        d["n"],
        d["slope"],
        d["r2"],
        d["spearman"],
        d["loo_mean_abs_error"],
        "-" if d["interval_width"] is None else d["interval_width"],
        d["allowance"],
        budget,
        f"{d['forecasts_held']}/{d['forecasts_checked']}" if d["forecasts_checked"] else "-",
        f"{d['audits_held']}/{d['audits']}" if d["audits"] else "-",
    ]
    # Formatted here: tabulate's floatfmt skips a column that also holds words ("-", "none in range").
    return [_number(c) if isinstance(c, float) else c for c in row]


def _calibration_legend(data: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Under the table: what its columns mean, and why the history may not decide a pair."""
    from .forecast import points_needed

    print(
        f"\nKL budget: the largest KL seen at which the forecast's upper bound at alpha {args.alpha:g} stays within "
        f"the allowance ('no evidence': the history may not decide, see --json's evidence_problems). A "
        f"{args.coverage:.0%} interval needs {points_needed(args.coverage)} candidates. 'held': past forecasts "
        "whose upper bound held the drop measured afterwards; 'audits held': the same for checks a forecast "
        "could have decided and that were measured anyway (audit_rate), an unbiased sample of the skips."
    )
    for d in data:
        for problem in d["evidence_problems"]:
            print(f"  {d['kl_check']} -> {d['retention_check']}: {problem}")


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
    from .files import read_lines

    added = skipped = 0
    for f in args.files:
        a, s = history.import_jsonl(read_lines(f, "history export"), source=str(f))
        added, skipped = added + a, skipped + s
    if args.json:
        print(json.dumps({"added": added, "already_there": skipped}))
    else:
        print(f"imported {added} runs into {history.location} ({skipped} already there)")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from .history import History, copy_history

    source = History(args.source, project=args.project)
    target = History(args.target)
    if source.location == target.location:
        raise ForgetguardError(f"--from and --to are the same history ({source.location})")
    added, skipped, (runs, checks) = copy_history(source, target)
    if args.json:
        print(json.dumps({"runs": runs, "checks": checks, "added": added, "already_there": skipped}))
    else:
        print(
            f"copied {source.location} to {target.location}: {runs} runs and {checks} check rows, all there "
            f"({added} added, {skipped} already there)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
