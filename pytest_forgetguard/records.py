"""The record of one check, as reports and the JSON schema see it.

Plain data (JSON-serialisable): under pytest-xdist a worker attaches
``to_payload()`` to the test report and the controller rebuilds the record
with ``from_payload()``, so a distributed run reports exactly what a serial
one does.

Example::

    rec = CheckRecord(name="task-kl", kind="kl", candidate="ft", metric="kl_forward_mean", value=0.01, budget=0.05)
    rec.settle(passed=rec.value <= rec.budget)
    assert CheckRecord.from_payload(rec.to_payload()) == rec
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1


def candidate_id(spec: str | None) -> str:
    """A short, readable id for a candidate SPEC: its last path component (``runs/ckpt-400`` -> ``ckpt-400``)."""
    if not spec:
        return "none"
    return spec.rstrip("/").rsplit("/", 1)[-1] or spec


def column_labels(cands: list[str]) -> list[str]:
    """Names for candidates in tables and plots: the short ids of their test items
    (``task-kl[ckpt-400]``) when those tell them apart, else the full SPECs."""
    short = [candidate_id(c) for c in cands]
    return short if len(set(short)) == len(short) else list(cands)


def _clean(x: Any) -> Any:
    """NaN/inf are not JSON: report them as strings so they are visible, not null — also inside nested
    details (a forecast's interval is infinite when its points are too few for the coverage)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


@dataclass
class CheckRecord:
    name: str
    kind: str
    candidate: str
    metric: str
    value: float | None = None
    base_value: float | None = None
    candidate_value: float | None = None
    delta: float | None = None
    budget: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    p_value: float | None = None
    passed: bool = False
    error: str | None = None
    nodeid: str = ""  # the pytest node id of the test or suite item that ran the check
    file: str = ""  # the suite file or test module it is written in (relative to pytest's rootdir)
    details: dict[str, Any] = field(default_factory=dict)
    # Which models were compared ({"spec", "fingerprint"}); None when a check failed before loading them.
    base_info: dict[str, Any] | None = None
    candidate_info: dict[str, Any] | None = None
    # (index of the test in the collection, position among the test's checks): the report order,
    # the same whichever process ran the test.
    order: tuple[int, int] = (0, 0)

    _INTERNAL = ("details", "base_info", "candidate_info", "order")

    def __post_init__(self) -> None:
        self.settle(self.passed, self.error)

    def settle(self, passed: bool, error: str | None = None) -> None:
        """Set the outcome: a check that errored, or whose number is not finite, never passes.

        A retention check decided by a forecast has no measured value: its number is the forecast's
        upper bound at alpha, which must be finite.
        """
        number = self.value
        if self.decided_by_forecast:
            number = (self.details.get("forecast") or {}).get("upper")
        finite = isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
        self.error = error
        self.passed = bool(passed) and error is None and finite

    @property
    def decided_by_forecast(self) -> bool:
        """Whether a forecast decided this (retention) check, without running it."""
        return self.details.get("decided_by") == "forecast"

    @property
    def stopped_early(self) -> str | None:
        """``decided after N of M items (K looks)`` for a retention check whose looks stopped the candidate's
        evaluation before its last item (None otherwise).

        >>> CheckRecord("k", "retention", "c", "acc", n=180, details={"items_total": 1200, "looks": 3}).stopped_early
        'decided after 180 of 1,200 items (3 looks)'
        """
        total, looks = self.details.get("items_total"), self.details.get("looks")
        if self.kind != "retention" or not isinstance(self.n, int) or not isinstance(total, int) or self.n >= total:
            return None
        return f"decided after {self.n:,} of {total:,} items ({looks} look{'' if looks == 1 else 's'})"

    @property
    def gate_note(self) -> str | None:
        """Why a retention check's outcome is not a plain pass or fail on evidence (None when it is): an
        inconclusive verdict, passed or failed by ``on_inconclusive``, and what would decide it.

        >>> r = CheckRecord("k", "retention", "c", "acc", value=0.6, budget=0.05, passed=True,
        ...                 details={"verdict": "inconclusive", "alpha": 0.05, "items_needed": 420})
        >>> r.gate_note
        'inconclusive at alpha 0.05 (about 420 items would decide it): passed by on_inconclusive: pass'
        """
        if self.kind != "retention" or self.error is not None or self.details.get("verdict") != "inconclusive":
            return None
        needed = self.details.get("items_needed")
        text = f"inconclusive at alpha {self.details.get('alpha')}"
        if needed:
            text += f" (about {needed} items would decide it)"
        if self.passed:
            why = "gate: significant" if self.details.get("gate") == "significant" else "on_inconclusive: pass"
            return f"{text}: passed by {why}"
        return text + ": not shown to be within the allowance"

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL``, ``ERROR``, or ``INCONCLUSIVE`` for a retention check its items could not decide
        and that failed for it (an inconclusive check passed by ``on_inconclusive: pass`` reads ``PASS``,
        marked in the reports)."""
        if self.error is not None:
            return "ERROR"
        if self.passed:
            return "PASS"
        return "INCONCLUSIVE" if self.details.get("verdict") == "inconclusive" else "FAIL"

    def to_json(self) -> dict[str, Any]:
        """The check's entry in the JSON report (CONTRACT.md)."""
        # Not asdict: it deep-copies details, only to have them replaced below (most of an import's time).
        data = {f.name: _clean(getattr(self, f.name)) for f in fields(self) if f.name not in self._INTERNAL}
        data["details"] = {k: _clean(v) for k, v in self.details.items()}
        return data

    def to_payload(self) -> dict[str, Any]:
        """Everything, as plain data that execnet (pytest-xdist) and JSON can carry."""
        data = asdict(self)
        data["order"] = list(self.order)
        return data

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> "CheckRecord":
        data = dict(data)
        data["order"] = tuple(data.get("order", (0, 0)))
        return cls(**data)
