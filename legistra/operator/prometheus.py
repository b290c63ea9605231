"""The operator's Prometheus metrics (runs by phase, reconcile duration, errors); the trainer's evaluation metrics
are `legistra.trainer.metrics`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from legistra.contract import PHASES
from legistra.operator.status import gpu_seconds

RUNS_BY_PHASE = Gauge("legistra_trainingruns", "TrainingRuns seen by this operator, by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "legistra_reconcile_seconds", "Duration of one TrainingRun reconcile",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("legistra_reconcile_errors_total", "Failed reconciles, by kind", ["kind"])
SCHEDULE_RUNS = Counter("legistra_schedule_runs_created_total", "TrainingRuns created by schedules")
# Exposed as legistra_gpu_seconds_total: GPU-seconds of Running stretches as they end (status.usage).
GPU_SECONDS = Counter("legistra_gpu_seconds", "GPU-seconds of TrainingRuns' finished Running stretches",
                      ["namespace", "task"])

_phases: dict[tuple[str, str], str] = {}


def observe_phase(key: tuple[str, str], phase: str) -> None:
    """O(1) per reconcile: only the run's old and new phase change (a recount of every run made a burst of N runs
    cost N^2 at 10,000 runs)."""
    old = _phases.get(key)
    if old == phase:
        return
    _phases[key] = phase
    if old is not None:
        RUNS_BY_PHASE.labels(phase=old).dec()
    RUNS_BY_PHASE.labels(phase=phase).inc()


def count_gpu_seconds(namespace: str, task: str, before: Mapping[str, Any] | None,
                      after: Mapping[str, Any] | None) -> None:
    """Add what a pass added to a run's status.usage.gpuSeconds (counted by the pass that wrote it, once)."""
    delta = gpu_seconds(after) - gpu_seconds(before)
    if delta > 0:
        GPU_SECONDS.labels(namespace=namespace, task=task).inc(delta)


def forget(key: tuple[str, str]) -> None:
    old = _phases.pop(key, None)
    if old is not None:
        RUNS_BY_PHASE.labels(phase=old).dec()


for _phase in PHASES:  # every phase is exported from the start, at 0
    RUNS_BY_PHASE.labels(phase=_phase).set(0)


def start_server(port: int, addr: str) -> None:
    if port > 0:
        start_http_server(port, addr=addr)
