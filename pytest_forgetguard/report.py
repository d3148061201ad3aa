"""Render check records: terminal table rows, the JSON report, a Markdown report.

Pure functions of :class:`~pytest_forgetguard.records.CheckRecord` lists; the
plugin only writes what they return.

Example::

    text = terminal_table(records)
    data = json_report(records, base={"spec": "b", "fingerprint": "…"}, candidates=[...])
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import write_atomic
from .records import SCHEMA_VERSION, CheckRecord, candidate_id, column_labels

HEADERS = ("check", "candidate", "metric", "base", "value", "delta", "budget", "CI", "n", "p", "verdict")


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def rows(records: Sequence[CheckRecord]) -> list[tuple[str, ...]]:
    """One row per check, candidates by their short ids. For retention the CI is that of the delta
    (candidate - base); a verdict the gate decided against the observed drop is marked ``*``."""
    labels = dict(zip(candidates_of(records), column_labels(candidates_of(records))))
    out: list[tuple[str, ...]] = []
    for r in records:
        ci = "-" if r.ci_low is None else f"{_num(r.ci_low)}..{_num(r.ci_high)}"
        out.append(
            (
                r.name,
                labels[r.candidate],
                r.metric,
                _num(r.base_value),
                _num(r.value),
                "-" if r.delta is None else f"{r.delta:+.4g}",
                _num(r.budget),
                ci,
                "-" if r.n is None else (f"{r.n} of {r.details['items_total']}" if r.stopped_early else str(r.n)),
                "-" if r.p_value is None else f"{r.p_value:.3g}",
                r.verdict + ("*" if r.gate_note else "") + (" (forecast)" if r.decided_by_forecast else ""),
            )
        )
    return out


def forecast_lines(records: Sequence[CheckRecord]) -> list[str]:
    """Each retention check's forecast beside what was measured (or that it decided), and why a forecast
    is missing or did not decide."""
    labels = dict(zip(candidates_of(records), column_labels(candidates_of(records))))
    out = []
    for r in records:
        f, note = r.details.get("forecast"), r.details.get("forecast_note")
        if r.kind != "retention" or (f is None and note is None):
            continue
        head = f"{r.name} [{labels[r.candidate]}]: "
        if isinstance(f, dict):
            head += (
                f"forecast drop {f['drop']:+.4g} [{f['low']:+.4g}, {f['high']:+.4g}] ({f['coverage']:.0%}, n {f['n']}, "
                f"R² {f['r2']:.2f}, from {f['from']} KL {f['kl']:.4g}"
                + (f", ≤ {f['upper']:+.4g} at alpha {f['alpha']:g}" if "upper" in f else "")
                + (", extrapolation" if f.get("extrapolation") else "")
                + ")"
            )
            if r.decided_by_forecast:
                head += f": upper bound within the allowed drop {_num(r.budget)}, decided by forecast (lm-eval not run)"
            elif isinstance(r.details.get("drop"), (int, float)):
                head += f"; measured {r.details['drop'] + 0.0:+.4g}"
        else:
            head += "no forecast"
        out.append(head + (f" — {note}" if note else ""))
    return out


def gate_notes(records: Sequence[CheckRecord]) -> list[str]:
    """A footnote per check whose gate decided against its observed drop (the rows marked ``*``), and per
    retention check its looks stopped early (``decided after 180 of 1,200 items``)."""
    labels = dict(zip(candidates_of(records), column_labels(candidates_of(records))))
    notes = [f"* {r.name} [{labels[r.candidate]}]: {r.gate_note}" for r in records if r.gate_note]
    return notes + [f"{r.name} [{labels[r.candidate]}]: {r.stopped_early}" for r in records if r.stopped_early]


def terminal_table(records: Sequence[CheckRecord]) -> str:
    return "\n".join(line for line, _ in terminal_lines(records))


def terminal_lines(records: Sequence[CheckRecord]) -> list[tuple[str, str | None]]:
    """The summary as ``(line, verdict)`` pairs; ``verdict`` (None for headers) lets the caller colour rows.

    With several candidates a second table puts them side by side.
    """
    from tabulate import tabulate

    table = tabulate(rows(records), headers=HEADERS, tablefmt="simple").splitlines()
    out: list[tuple[str, str | None]] = [(line, None) for line in table[:2]]
    out += [(line, r.verdict) for line, r in zip(table[2:], records)]
    grid = side_by_side(records)
    if grid is not None:
        headers, body, verdicts = grid
        lines = tabulate(body, headers=headers, tablefmt="simple").splitlines()
        out += [("", None), ("candidates side by side (value, verdict):", None)]
        out += [(line, None) for line in lines[:2]]
        out += [(line, v) for line, v in zip(lines[2:], verdicts)]
    out += [(note, None) for note in gate_notes(records)]
    forecasts = forecast_lines(records)
    if forecasts:
        out += [("", None), ("forecasts:", None)] + [(f"  {line}", None) for line in forecasts]
    notes = warnings_of(records)
    if notes:
        out += [("", None), ("warnings:", None)]
        out += [(f"  {message} (checks: {', '.join(checks)})", None) for message, checks in notes]
    return out


def warnings_of(records: Sequence[CheckRecord]) -> list[tuple[str, list[str]]]:
    """Each distinct warning the checks carried, with the checks (``name[candidate]``) that carried it."""
    out: dict[str, list[str]] = {}
    for r in records:
        for message in r.details.get("warnings") or ():
            out.setdefault(str(message), []).append(f"{r.name} [{candidate_id(r.candidate)}]")
    return list(out.items())


def candidates_of(records: Sequence[CheckRecord]) -> list[str]:
    return list(dict.fromkeys(r.candidate for r in records))


def side_by_side(
    records: Sequence[CheckRecord],
) -> tuple[list[str], list[list[str]], list[str]] | None:
    """One row per check, one column per candidate: the view for picking a checkpoint.

    Returns ``(headers, rows, row_verdicts)`` (a row's verdict is FAIL when any
    candidate failed it), or None with fewer than two candidates.
    """
    cands = candidates_of(records)
    if len(cands) < 2:
        return None
    cell: dict[tuple[str, str], CheckRecord] = {(r.name, r.candidate): r for r in records}
    names = list(dict.fromkeys(r.name for r in records))
    body, verdicts = [], []
    for name in names:
        recs = [cell.get((name, c)) for c in cands]
        budget = next((r.budget for r in recs if r is not None and r.budget is not None), None)
        # Retention rows compare the drop with the allowed drop: one unit per row (the scores are in the full table).
        drops = any(r is not None and r.kind == "retention" for r in recs)
        row = [name, f"drop ≤ {_num(budget)}" if drops else _num(budget)]
        row += ["-" if r is None else _cell(r) for r in recs]
        body.append(row)
        verdicts.append("PASS" if all(r is not None and r.passed for r in recs) else "FAIL")
    totals = ["all checks", ""]
    for c in cands:
        mine = [r for r in records if r.candidate == c]
        totals.append(f"{sum(r.passed for r in mine)}/{len(mine)} passed")
    body.append(totals)
    verdicts.append("PASS" if all(r.passed for r in records) else "FAIL")
    return ["check", "budget", *column_labels(cands)], body, verdicts


def _cell(r: CheckRecord) -> str:
    """A side-by-side cell: the value the check compares with its budget, and the verdict."""
    if r.decided_by_forecast:
        f = r.details.get("forecast") or {}
        return f"≤ {f.get('upper', f.get('high', float('nan'))):+.3g} {r.verdict} (forecast)"
    if r.kind == "retention" and isinstance(r.details.get("drop"), (int, float)):
        value = f"{r.details['drop'] + 0.0:+.3g}"  # + 0.0: no "-0" for an unchanged score
    else:
        value = _num(r.value)
    return f"{value} {r.verdict}{'*' if r.gate_note else ''}"


def json_report(
    records: Sequence[CheckRecord],
    base: dict[str, Any] | None,
    candidates: list[dict[str, Any]],
    incomplete_reason: str | None = None,
    history: dict[str, Any] | None = None,
    notices: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON report (CONTRACT.md): ``complete`` is false, with ``incomplete_reason``, for a run that did not
    finish; ``history`` says whether the run was recorded (``path``, ``written``, ``reason``, and
    ``moved_aside`` when an unreadable history was moved there); ``notices``: the run's own problems."""
    return {
        "schema": SCHEMA_VERSION,
        "complete": incomplete_reason is None,
        "incomplete_reason": incomplete_reason,
        "history": history or {"path": None, "written": False, "reason": "not recorded"},
        "notices": list(notices),
        "base": base,
        "candidates": candidates,
        "checks": [r.to_json() for r in records],
    }


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown_report(
    records: Sequence[CheckRecord],
    base: dict[str, Any] | None,
    plots: Sequence[str] = (),
    candidates: Sequence[dict[str, Any]] = (),
    incomplete_reason: str | None = None,
    notices: Sequence[str] = (),
) -> str:
    """A pull-request comment: the verdict first, then the table(s), then what failed and why.

    ``notices`` are the run's own problems (a run history moved aside), quoted under the verdict.

    Models are named by their short ids everywhere but in one table of the
    models (full SPEC and fingerprint). ``plots`` are file names written next
    to the report (listed, since a comment cannot embed local files).
    """
    failed = [r for r in records if not r.passed]
    cands = candidates_of(records)
    lines = [f"## {_md_verdict(records, len(failed), incomplete_reason)}", ""]
    lines += [line for notice in notices for line in (f"> ⚠️ {notice}", "")]
    labels = dict(zip(cands, column_labels(cands)))
    if len(cands) > 1:
        passing = [labels[c] for c in cands if all(r.passed for r in records if r.candidate == c)]
        lines += [f"Candidates passing every check: {', '.join(f'`{c}`' for c in passing) or 'none'}.", ""]
    lines += _md_models(base, candidates, labels)
    lines += _md_tables(records)
    lines += _md_notes(records)
    for r in failed:
        lines += ["", f"<details><summary>{r.verdict}: {r.name} ({labels[r.candidate]})</summary>", ""]
        lines += ["```", (r.error or r.details.get("message") or "").strip(), "```", "</details>"]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in plots)]
    return "\n".join(lines) + "\n"


def _md_verdict(records: Sequence[CheckRecord], failed: int, incomplete_reason: str | None) -> str:
    """The headline; never "all passed" for a run that did not finish."""
    if incomplete_reason is not None:
        return (
            f"⚠️ forgetguard: incomplete run ({incomplete_reason}): {len(records) - failed} of the "
            f"{len(records)} checks that ran passed; the gate did not finish"
        )
    if not records:
        return "⚠️ forgetguard: no checks ran"
    if not failed:
        return f"✅ forgetguard: all {len(records)} checks passed"
    return f"❌ forgetguard: {failed} of {len(records)} checks failed"


def _md_models(base: dict[str, Any] | None, candidates: Sequence[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The one table that names the models in full (SPEC and fingerprint) beside their short ids."""
    models = ([("base", base)] if base else []) + [("candidate", c) for c in candidates]
    if not models:
        return []
    lines = [_md_row(("model", "SPEC", "fingerprint")), "|---|---|---|"]
    for role, info in models:
        spec = str(info.get("spec"))
        short = labels.get(spec, candidate_id(spec))
        lines.append(_md_row((f"{role} `{short}`", f"`{spec}`", f"`{info.get('fingerprint')}`")))
    return [*lines, ""]


def _md_tables(records: Sequence[CheckRecord]) -> list[str]:
    """The side-by-side grid (several candidates), then the full table."""
    lines: list[str] = []
    grid = side_by_side(records)
    if grid is not None:
        headers, body, _ = grid
        lines += [_md_row(headers), "|" + "---|" * len(headers)]
        lines += [_md_row(row) for row in body]
        lines.append("")
    if records:
        lines += [_md_row(HEADERS), "|" + "---|" * len(HEADERS)]
        lines += [_md_row(row) for row in rows(records)]
    return lines


def _md_notes(records: Sequence[CheckRecord]) -> list[str]:
    """The gate's footnotes (a leading ``*`` escaped, else Markdown makes a list item), the forecasts, the warnings."""
    lines: list[str] = []
    notes_gate = gate_notes(records)
    if notes_gate:
        lines += [""] + [("\\" if note.startswith("*") else "") + f"{note}  " for note in notes_gate]
    forecasts = forecast_lines(records)
    if forecasts:
        lines += ["", "**Forecasts**", ""] + [f"- {line}" for line in forecasts]
    notes = warnings_of(records)
    if notes:
        lines += ["", "**Warnings**", ""]
        lines += [f"- ⚠️ {message} (checks: {', '.join(f'`{c}`' for c in checks)})" for message, checks in notes]
    return lines


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
