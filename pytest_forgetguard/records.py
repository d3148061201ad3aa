"""The record of one check, as reports and the JSON schema see it.

Plain data (JSON-serialisable) so it can travel from xdist workers to the
controller later.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


def _clean(x: Any) -> Any:
    """NaN/inf are not JSON: report them as strings so they are visible, not null."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
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
    nodeid: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settle(self.passed, self.error)

    def settle(self, passed: bool, error: str | None = None) -> None:
        """Set the outcome: a check that errored, or whose number is not finite, never passes."""
        finite = self.value is not None and isinstance(self.value, (int, float)) and math.isfinite(self.value)
        self.error = error
        self.passed = bool(passed) and error is None and finite

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        return "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        data = {k: _clean(v) for k, v in asdict(self).items() if k not in ("nodeid", "details")}
        data["details"] = {k: _clean(v) for k, v in self.details.items()}
        return data
