"""From the run history to calibrations: (KL, drop) points per pair of series, and their summary.

A point is one candidate's KL on a KL check and its measured drop on a
retention check **in the same run**, both of the same base: the KL row's
value, the retention row's ``drop``. Rows that errored, are not finite, were
decided by a forecast (no measurement), or belong to a run that did not finish
make no point. A candidate
measured in several runs counts once (its latest run), so a rerun does not
weigh twice. Pairs are keyed by the two series and the base fingerprint:
series never mix.

Example::

    table = summarize(History(path).rows())
    for pair in table:
        print(pair.kl_check, pair.retention_check, pair.calibration.n, pair.calibration.r2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .forecast import DEFAULT_ALPHA, DEFAULT_COVERAGE, Calibration
from .history import Row


@dataclass(frozen=True)
class PairKey:
    kl_series: str
    retention_series: str
    base_fingerprint: str | None


@dataclass(frozen=True)
class Point:
    kl: float
    drop: float
    candidate: str  # the candidate's fingerprint, or its SPEC when the fingerprint is unknown
    time: float
    forecast: dict[str, Any] | None  # what the retention check forecast before it measured, if it did
    audit: bool = False  # measured although the forecast could have decided (audit_rate)


@dataclass(frozen=True)
class Pair:
    """A calibration of one retention check on one KL check, with the names and allowance they last had."""

    key: PairKey
    kl_check: str
    retention_check: str
    metric: str | None
    allowance: float | None
    points: tuple[Point, ...]
    calibration: Calibration

    def coverage_observed(self, audited_only: bool = False) -> tuple[int, int]:
        """(held, total): how many past forecasts held the drop measured afterwards — under their upper
        bound at alpha (older rows without one: inside their interval). ``audited_only``: only checks a
        forecast could have decided and that were measured anyway (an unbiased sample of skips)."""
        held = total = 0
        for p in self.points:
            f = p.forecast
            if f is None or (audited_only and not p.audit):
                continue
            if _finite(f.get("upper")):
                total += 1
                held += int(p.drop <= float(f["upper"]))
            elif _finite(f.get("low"), f.get("high")):
                total += 1
                held += int(float(f["low"]) <= p.drop <= float(f["high"]))
        return held, total

    def to_json(self, coverage: float = DEFAULT_COVERAGE, alpha: float = DEFAULT_ALPHA) -> dict[str, Any]:
        cal = self.calibration
        mid = sorted(cal.x)[len(cal.x) // 2]
        f = cal.forecast(mid, coverage, alpha=alpha)
        held, total = self.coverage_observed()
        audit_held, audits = self.coverage_observed(audited_only=True)
        lo, hi = cal.slope_interval(alpha)
        return {
            "kl_check": self.kl_check,
            "retention_check": self.retention_check,
            "metric": self.metric,
            "base_fingerprint": self.key.base_fingerprint,
            "kl_series": self.key.kl_series,
            "retention_series": self.key.retention_series,
            "n": cal.n,
            "intercept": cal.intercept,
            "slope": cal.slope,
            "r2": cal.r2,
            "spearman": cal.spearman,
            "loo_mean_abs_error": sum(cal.loo_errors) / cal.n,
            "loo_max_abs_error": max(cal.loo_errors),
            "kl_range": [min(cal.x), max(cal.x)],
            "coverage": coverage,
            "interval_width": None if f is None else f.high - f.low,
            "runs_needed": cal.needed(coverage),
            "allowance": self.allowance,
            "kl_budget": None if self.allowance is None else cal.budget_for(self.allowance, alpha),
            "alpha": alpha,
            "slope_interval": [lo, hi],
            "evidence_problems": cal.evidence_problems(alpha),
            "forecasts_checked": total,
            "forecasts_held": held,
            "audits": audits,
            "audits_held": audit_held,
        }


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs)


def _candidate_key(row: Row) -> str:
    return row.candidate_fingerprint or row.candidate


def points(rows: Sequence[Row], key: PairKey, exclude_candidate: str | None = None) -> list[Point]:
    """The pair's points: per candidate, its latest run that measured both checks (see the module docstring).

    ``exclude_candidate`` (a fingerprint) leaves a candidate out: a forecast for a candidate never
    learns from that candidate's own past measurement.
    """
    return [p for p in _points_by_pair(rows).get(key, []) if p.candidate != exclude_candidate]


def _points_by_pair(rows: Sequence[Row]) -> dict[PairKey, list[Point]]:
    runs: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.complete:  # an interrupted run's checks are shown, never calibrated on
            runs.setdefault((row.run_id, _candidate_key(row)), []).append(row)
    latest: dict[tuple[PairKey, str], Point] = {}
    for (_, cand), group in runs.items():
        kls = [r for r in group if r.kind == "kl" and r.series and r.error is None and _finite(r.value)]
        rets = [
            r
            for r in group
            if r.kind == "retention" and r.series and r.error is None and _finite(r.drop)
            and r.decided_by != "forecast"
        ]  # fmt: skip
        for k in kls:
            for rt in rets:
                if k.base_fingerprint != rt.base_fingerprint:
                    continue
                key = PairKey(str(k.series), str(rt.series), k.base_fingerprint)
                point = Point(float(k.value), float(rt.drop), cand, rt.time, rt.forecast, rt.audit)  # type: ignore[arg-type]
                old = latest.get((key, cand))
                if old is None or point.time >= old.time:
                    latest[(key, cand)] = point
    out: dict[PairKey, list[Point]] = {}
    for (key, _), point in latest.items():
        out.setdefault(key, []).append(point)
    return out


def summarize(rows: Sequence[Row], kl_check: str | None = None, base: str | None = None) -> list[Pair]:
    """Every pair with at least two points, named by the checks' latest names, optionally filtered."""
    names: dict[str, tuple[str, str | None, float | None]] = {}
    for row in rows:  # in run order: the latest name, metric and allowance of each series win
        if row.series:
            names[row.series] = (row.name, row.metric, row.budget)
    out = []
    for key, pts in _points_by_pair(rows).items():
        if len(pts) < 2 or (base is not None and not (key.base_fingerprint or "").startswith(base)):
            continue
        kl_name = names.get(key.kl_series, ("?", None, None))[0]
        if kl_check is not None and kl_name != kl_check:
            continue
        ret_name, metric, allowance = names.get(key.retention_series, ("?", None, None))
        cal = Calibration.fit([(p.kl, p.drop) for p in pts])
        out.append(Pair(key, kl_name, ret_name, metric, allowance, tuple(pts), cal))
    return sorted(out, key=lambda p: (p.kl_check, p.retention_check, p.key.base_fingerprint or ""))
