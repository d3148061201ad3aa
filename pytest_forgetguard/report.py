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
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .records import SCHEMA_VERSION, CheckRecord

HEADERS = ("check", "candidate", "metric", "base", "value", "delta", "budget", "95% CI", "n", "p", "verdict")


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def rows(records: Sequence[CheckRecord]) -> list[tuple[str, ...]]:
    """One row per check. For retention the CI is that of the delta (candidate - base)."""
    out: list[tuple[str, ...]] = []
    for r in records:
        ci = "-" if r.ci_low is None else f"{_num(r.ci_low)}..{_num(r.ci_high)}"
        out.append(
            (
                r.name,
                r.candidate,
                r.metric,
                _num(r.base_value),
                _num(r.value),
                "-" if r.delta is None else f"{r.delta:+.4g}",
                _num(r.budget),
                ci,
                "-" if r.n is None else str(r.n),
                "-" if r.p_value is None else f"{r.p_value:.3g}",
                r.verdict,
            )
        )
    return out


def terminal_table(records: Sequence[CheckRecord]) -> str:
    from tabulate import tabulate

    return tabulate(rows(records), headers=HEADERS, tablefmt="simple")


def json_report(
    records: Sequence[CheckRecord], base: dict[str, Any] | None, candidates: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "base": base,
        "candidates": candidates,
        "checks": [r.to_json() for r in records],
    }


def markdown_report(records: Sequence[CheckRecord], base: dict[str, Any] | None) -> str:
    failed = [r for r in records if not r.passed]
    verdict = (
        "✅ all forgetguard checks passed"
        if not failed
        else f"❌ {len(failed)} of {len(records)} forgetguard checks failed"
    )
    if not records:
        verdict = "⚠️ no forgetguard checks ran"
    lines = [f"## {verdict}", ""]
    if base:
        lines += [f"Base: `{base.get('spec')}` (fingerprint `{base.get('fingerprint')}`)", ""]
    if records:
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "---|" * len(HEADERS))
        for row in rows(records):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    for r in failed:
        lines += ["", f"<details><summary>{r.verdict}: {r.name} ({r.candidate})</summary>", ""]
        lines += ["```", (r.error or r.details.get("message") or "").strip(), "```", "</details>"]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
