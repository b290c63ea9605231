"""The promotion gate: does a new version take the alias from its current holder? (pure)"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    metric: str
    direction: str
    alias: str
    candidate: float | None
    incumbent: float | None
    incumbent_version: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    if not metrics:
        return None
    for key in (name, f"eval_{name}", name.removeprefix("eval_")):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def decide(
    metric: str,
    direction: Literal["maximize", "minimize"],
    alias: str,
    candidate_metrics: Mapping[str, Any],
    incumbent_metrics: Mapping[str, Any] | None,
    incumbent_version: int | None,
) -> GateDecision:
    """Promote only a strict improvement; a candidate without the metric never wins."""
    cand = _metric(candidate_metrics, metric)
    inc = _metric(incumbent_metrics, metric)

    def result(promote: bool, reason: str) -> GateDecision:
        return GateDecision(promote, metric, direction, alias, cand, inc, incumbent_version, reason)

    if cand is None:
        return result(False, f"candidate has no finite value for {metric}")
    if incumbent_version is None:
        return result(True, f"no version holds {alias!r} yet")
    if inc is None:
        return result(True, f"v{incumbent_version} (holding {alias!r}) has no value for {metric}")
    better = cand > inc if direction == "maximize" else cand < inc
    if better:
        return result(True, f"{metric} {cand:.6g} beats v{incumbent_version}'s {inc:.6g} ({direction})")
    return result(False, f"{metric} {cand:.6g} does not beat v{incumbent_version}'s {inc:.6g} ({direction})")
