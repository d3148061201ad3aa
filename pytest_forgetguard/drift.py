"""Weight drift: how far the candidate's parameters moved from the base's.

A cheap diagnostic, not the main forgetting signal (RL's Razor found weight
change norms predict forgetting poorly). Reports the global relative L2 norm
of the change, the same per layer, and the share of parameters that changed
by more than a tolerance (1e-5 by default, as in Mukherjee et al. 2025).
PEFT adapters are compared through their effective weights, W + delta(W).

Example::

    result = weight_drift(base_handle, cand_handle)
    result.relative_l2, result.changed_fraction, result.worst_layers(3)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import IncompatibleModelsError, NonFiniteError
from .records import CheckRecord

if TYPE_CHECKING:
    import torch

    from .models import ModelLike

LAYER_RE = re.compile(r"^(.*?\.(?:layers|h|blocks|layer)\.\d+)\.")


@dataclass(frozen=True)
class LayerDrift:
    name: str
    relative_l2: float
    changed_fraction: float
    n_params: int


@dataclass(frozen=True)
class DriftResult:
    relative_l2: float
    changed_fraction: float
    n_params: int
    n_tensors: int
    tolerance: float
    layers: tuple[LayerDrift, ...]
    # The gate's limits (``relative_l2``, ``changed_fraction``; None: not gated), set by assert_drift.
    limits: dict[str, float | None] = field(default_factory=dict, compare=False)

    def worst_layers(self, k: int = 5) -> list[LayerDrift]:
        return sorted(self.layers, key=lambda l: -l.relative_l2)[:k]

    @property
    def values(self) -> dict[str, float]:
        return {"relative_l2": self.relative_l2, "changed_fraction": self.changed_fraction}

    @property
    def metric(self) -> str:
        """The gated number: ``relative_l2`` when it has a limit, else ``changed_fraction``."""
        return "relative_l2" if self.limits.get("relative_l2") is not None else "changed_fraction"

    def over(self) -> list[str]:
        """Each limit exceeded (or not measurable: NaN never passes), as ``name = value > limit``."""
        values = self.values
        return [
            f"{k} = {values[k]:.6g} > {limit:g}"
            for k, limit in self.limits.items()
            if limit is not None and not (math.isfinite(values[k]) and values[k] <= limit)
        ]

    @property
    def passed(self) -> bool:
        return any(v is not None for v in self.limits.values()) and not self.over()

    def to_record(self, name: str, candidate: str) -> CheckRecord:
        """The check's row in the reports: the gated value, its limit, and both measures."""
        return CheckRecord(
            name=name,
            kind="drift",
            candidate=candidate,
            metric=self.metric,
            value=self.values[self.metric],
            budget=self.limits.get(self.metric),
            n=self.n_params,
            details={**self.values, "tolerance": self.tolerance, "n_tensors": self.n_tensors},
        )

    def failure_message(self, candidate: str) -> str:
        worst = "\n".join(
            f"    {l.name}: relative L2 {l.relative_l2:.4g}, {100 * l.changed_fraction:.1f}% changed"
            for l in self.worst_layers(5)
        )
        return (
            f"weight drift of candidate {candidate!r} exceeds its limit: {'; '.join(self.over())}\n"
            f"  {self.summary()}\n  layers that moved most:\n{worst}"
        )

    def summary(self) -> str:
        return (
            f"relative L2 change {self.relative_l2:.4g}; {100 * self.changed_fraction:.2f}% of "
            f"{self.n_params} parameters changed by more than {self.tolerance:g}"
        )


def _layer_of(name: str) -> str:
    m = LAYER_RE.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def effective_parameters(handle: "ModelLike") -> Iterator[tuple[str, "torch.Tensor"]]:
    """(canonical name, tensor) of the weights the model computes with.

    For PEFT-wrapped models the LoRA layers are folded in for the active
    adapter (none for the base), and the ``base_layer`` prefix is dropped so
    names match a plain model's.
    """
    root: Any = handle.raw_model
    adapter = handle.adapter_name
    seen: set[int] = set()
    skip: list[str] = []
    for mod_name, module in root.named_modules():
        if any(mod_name.startswith(p) for p in skip):
            continue
        prefix = mod_name + "." if mod_name else ""
        canon = prefix.replace(".base_layer.", ".").replace("base_layer.", "")
        if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            skip.append(prefix)
            base_w = module.base_layer.weight
            w = base_w
            if adapter is not None and adapter in module.lora_A:
                w = base_w + module.get_delta_weight(adapter).to(base_w.dtype)
            yield canon + "weight", w
            if getattr(module.base_layer, "bias", None) is not None:
                yield canon + "bias", module.base_layer.bias
            continue
        if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):
            skip.append(prefix)
            chosen = module.modules_to_save[adapter] if adapter in module.modules_to_save else module.original_module
            for pname, p in chosen.named_parameters():
                yield canon + pname, p
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights count once
                continue
            seen.add(id(p))
            yield canon + pname, p


def _ratio(d2: float, b2: float) -> float:
    """||delta|| / ||base||; a change of an all-zero tensor is infinitely large."""
    if b2 > 0:
        return float((d2 / b2) ** 0.5)
    return 0.0 if d2 == 0 else float("inf")


def weight_drift(base: "ModelLike", candidate: "ModelLike", tolerance: float = 1e-5) -> DriftResult:
    """Compare all parameters of ``candidate`` to ``base`` (float64 accumulation)."""
    import torch

    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    base_params = dict(effective_parameters(base))
    cand_params = dict(effective_parameters(candidate))
    missing = sorted(set(base_params) ^ set(cand_params))
    if missing:
        raise IncompatibleModelsError(
            f"base and candidate have different parameters (e.g. {missing[:3]}); weight drift "
            "needs the same architecture"
        )
    per_layer: dict[str, list[float]] = {}
    total_d2 = total_b2 = 0.0
    changed = count = 0
    with torch.no_grad():
        for name, wb in base_params.items():
            wc = cand_params[name]
            if wb.shape != wc.shape:
                raise IncompatibleModelsError(f"parameter {name}: shape {tuple(wb.shape)} vs {tuple(wc.shape)}")
            d = wc.double().to(wb.device) - wb.double()
            d2, b2 = float((d * d).sum()), float(wb.double().pow(2).sum())
            n_changed = int((d.abs() > tolerance).sum())
            if not (math.isfinite(d2) and math.isfinite(b2)):
                # Only reachable with the load-time weight checks off: the model at fault is unusable after.
                culprit = base if not math.isfinite(b2) else candidate
                raise culprit.fail(
                    NonFiniteError(f"weight drift of {name} is NaN/inf: the {culprit.role} has non-finite weights")
                )
            acc = per_layer.setdefault(_layer_of(name), [0.0, 0.0, 0, 0])
            acc[0] += d2
            acc[1] += b2
            acc[2] += n_changed
            acc[3] += wb.numel()
            total_d2 += d2
            total_b2 += b2
            changed += n_changed
            count += wb.numel()
    if count == 0:
        raise IncompatibleModelsError("the models have no parameters to compare")
    layers = tuple(LayerDrift(name, _ratio(a[0], a[1]), a[2] / a[3], int(a[3])) for name, a in per_layer.items())
    rel = _ratio(total_d2, total_b2)
    return DriftResult(
        relative_l2=rel,
        changed_fraction=changed / count,
        n_params=count,
        n_tensors=len(base_params),
        tolerance=tolerance,
        layers=layers,
    )
