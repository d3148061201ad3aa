"""Leave-one-out evidence for forgetguard's forecasts on the experiment's ten measured candidates.

    python experiments/rl_razor/forecast_evidence.py --history history.sqlite [--coverage 0.9 0.8]

Reads a run history holding the experiment's runs (to_history.py writes them) and, for each KL check ×
retention check pair and each candidate in turn, does what the plugin does when that candidate comes to
CI with the other nine in its history: fits the relation on the nine (forgetguard.forecast.Calibration,
the plugin's own code), forecasts the left-out candidate's drop from its KL with the jackknife+
interval, and applies the skip rule (the whole interval within the allowance, the KL within the range
seen). It then compares with what was measured: the forecast's error, whether the interval held the
measured drop, whether the skip would have saved the lm-eval run, and whether a skipped check would have
failed had it been measured (a verdict the skip changed). The four-probe mean relative drop (the
experiment's headline forgetting measure, not a check of any suite) is scored the same way, without an
allowance, to show what a weak relation looks like.

Writes forecast_evidence.json (beside this script; results/ holds only candidates) and prints the tables docs/forecasts.md quotes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def leave_one_out(points: list[tuple[float, float, str]], allowance: float | None, coverage: float) -> dict[str, Any]:
    """Score each point's forecast from the fit on all the others."""
    from pytest_forgetguard.forecast import Calibration

    rows = []
    for i, (kl, drop, name) in enumerate(points):
        rest = [(x, y) for j, (x, y, _) in enumerate(points) if j != i]
        f = Calibration.fit(rest).forecast(kl, coverage)
        if f is None:
            rows.append({"candidate": name, "kl": kl, "drop": drop, "forecast": None})
            continue
        skip = allowance is not None and not f.extrapolation and f.within(allowance)
        rows.append(
            {
                "candidate": name,
                "kl": kl,
                "drop": drop,
                "forecast": f.to_json(),
                "error": drop - f.drop,
                "held": f.low <= drop <= f.high,
                "extrapolation": f.extrapolation,
                "skipped": skip,
                "verdict_changed": skip and allowance is not None and drop > allowance,
            }
        )
    scored = [r for r in rows if r["forecast"] is not None]
    errors = [abs(r["error"]) for r in scored]
    widths = [r["forecast"]["high"] - r["forecast"]["low"] for r in scored]
    return {
        "coverage": coverage,
        "allowance": allowance,
        "n": len(points),
        "forecasts": len(scored),
        "mean_abs_error": sum(errors) / len(errors) if errors else None,
        "max_abs_error": max(errors) if errors else None,
        "held": sum(r["held"] for r in scored),
        "extrapolations": sum(r["extrapolation"] for r in scored),
        "mean_width": sum(widths) / len(widths) if widths else None,
        "skipped": sum(r["skipped"] for r in scored),
        "verdicts_changed": sum(r["verdict_changed"] for r in scored),
        "measured_failures": None if allowance is None else sum(r["drop"] > allowance for r in rows),
        "candidates": rows,
    }


def _four_probe_points() -> list[tuple[float, float, str]]:
    out = []
    for path in common.measured():
        row = json.loads(path.read_text())
        out.append((row["kl_forward"]["per_token"], row["forgetting"]["mean_relative_drop"], row["candidate"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", required=True, type=Path, help="a run history with the experiment's runs")
    ap.add_argument("--coverage", type=float, nargs="+", default=[0.9, 0.8])
    ap.add_argument("--out", type=Path, default=common.HERE / "forecast_evidence.json")
    args = ap.parse_args()
    from pytest_forgetguard.calibration import summarize
    from pytest_forgetguard.history import History

    pairs = summarize(History(args.history).rows())
    if not pairs:
        raise SystemExit(f"no KL x retention pairs in {args.history}: run to_history.py first")
    evidence: dict[str, Any] = {}
    for pair in pairs:
        pts = [(p.kl, p.drop, p.candidate) for p in pair.points]
        evidence[f"{pair.kl_check} -> {pair.retention_check}"] = {
            "r2": pair.calibration.r2,
            "by_coverage": {str(c): leave_one_out(pts, pair.allowance, c) for c in args.coverage},
        }
    pts = _four_probe_points()
    from pytest_forgetguard.forecast import Calibration

    evidence["arith-kl -> four-probe mean relative drop"] = {
        "r2": Calibration.fit([(x, y) for x, y, _ in pts]).r2,
        "by_coverage": {str(c): leave_one_out(pts, None, c) for c in args.coverage},
    }
    args.out.write_text(json.dumps(evidence, indent=1) + "\n")

    def g(x: Any, fmt: str = ".3g") -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    print("| pair | R² | coverage | LOO mean / max abs error | interval held | mean width | allowance | "
          "over allowance | skipped | verdicts changed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, e in evidence.items():
        for c, s in e["by_coverage"].items():
            print(
                f"| {name} | {e['r2']:.2f} | {float(c):.0%} | {g(s['mean_abs_error'])} / {g(s['max_abs_error'])} "
                f"| {s['held']}/{s['forecasts']} | {g(s['mean_width'])} | {g(s['allowance'])} "
                f"| {g(s['measured_failures'])} | {s['skipped'] if s['allowance'] is not None else '–'} of {s['n']} "
                f"| {s['verdicts_changed'] if s['allowance'] is not None else '–'} |"
            )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
