"""After training (rank 0): the registry decides and records (push, gate, alias), then tracking mirrors the
outcome once (MLflow's model version, its alias, the run's tags and promotion.json). Nothing goes back and forth:
the registry is the source of truth, MLflow a view of it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from legistra.api.spec import TrainingRun, TrainingRunSpec
from legistra.contract import (
    TAG_BASE_MODEL,
    TAG_MODEL,
    TAG_MODEL_ALIAS,
    TAG_MODEL_URI,
    TAG_MODEL_VERSION,
    TAG_PROMOTION,
    TAG_REGISTRY_VERSION,
    TAG_TASK,
)
from legistra.registry.registry import GateDecision, Registry, RegistryError
from legistra.tracking.mlflow_models import register_mlflow_version, set_mlflow_alias
from legistra.tracking.mlflow_tracker import MlflowTracker
from legistra.version import code_version

log = logging.getLogger("legistra.trainer")


@dataclass(frozen=True)
class Registered:
    """The version the registry holds, and the gate's decision when the spec has a gate."""

    registry: Registry
    name: str
    version: int
    uri: str
    decision: GateDecision | None = None  # the gate's, with the alias it decided on


@dataclass(frozen=True)
class Outcome:
    """A finished run's outcome as result.json and tracking record it; `registered` None when nothing was
    registered (the notebook API)."""

    metrics: dict[str, float]
    baseline: dict[str, float]
    global_step: int
    resumed_from: str | None
    registered: Registered | None = None


def register(run: TrainingRun, model_dir: Path, registry_uri: str, mlflow: MlflowTracker, outcome: Outcome, *,
             data_sources: dict[str, str], extra: dict[str, Any]) -> Outcome:
    """Push the model as a new immutable version with its lineage, then apply the promotion gate (a
    compare-and-swap on the alias, recorded in the alias record). Touches the registry only."""
    spec = run.spec
    registry = Registry.open(registry_uri)
    name = spec.registry.model_name
    metadata = {
        "baseModel": {"name": spec.model.name, "revision": spec.model.revision},
        "task": spec.task,
        "data": data_sources,
        "hyperparameters": {k: v for k, v in spec.wire().items() if k in ("training", "lora", "deepspeed", "data")},
        "metrics": outcome.metrics,
        "baseline": outcome.baseline,
        "trainingRun": {"name": run.metadata.name, "namespace": run.metadata.namespace, "uid": run.metadata.uid},
        "mlflow": {"runId": mlflow.run_id, "experimentId": mlflow.experiment_id, "trackingUri": mlflow.tracking_uri},
        "codeVersion": code_version(),
        "globalStep": outcome.global_step,
        **extra,
    }
    gate = spec.registry.promotion
    if gate is not None:
        metadata["promotionGate"] = {"metric": gate.metric, "direction": gate.direction, "alias": gate.alias}
    version = registry.push(name, model_dir, metadata)
    log.info("registered %s v%d at %s", name, version.version, version.uri)
    decision = None
    if gate is not None:
        decision = registry.promote_if_better(name, gate.alias, version.version, gate.metric, gate.direction)
        log.info("promotion gate: %s", decision.reason)
    registered = Registered(registry, name, version.version, version.uri, decision)
    return replace(outcome, registered=registered)


def mirror(mlflow: MlflowTracker, spec: TrainingRunSpec, outcome: Outcome) -> dict[str, Any]:
    """Record the outcome in tracking, once: MLflow's model version and alias follow the registry's, the run gets
    its tags and promotion.json. Returns the result (result.json, the run's status)."""
    result: dict[str, Any] = {
        "phase": "Succeeded",
        "metrics": outcome.metrics,
        "baseline": outcome.baseline,
        "globalStep": outcome.global_step,
        "resumedFrom": outcome.resumed_from,
        "mlflow": {"runId": mlflow.run_id, "experimentId": mlflow.experiment_id, "url": mlflow.url,
                   "trackingUri": mlflow.tracking_uri, "error": mlflow.error},
    }
    reg = outcome.registered
    if reg is None:
        return result
    result["model"] = {"name": reg.name, "version": reg.version, "uri": reg.uri}
    tags = {TAG_MODEL: reg.name, TAG_MODEL_VERSION: str(reg.version), TAG_MODEL_URI: reg.uri}
    if mlflow.enabled and mlflow.run_id:
        result["model"]["mlflowVersion"] = register_mlflow_version(
            mlflow.tracking_uri, reg.name, reg.uri, mlflow.run_id,
            tags={TAG_REGISTRY_VERSION: str(reg.version), TAG_BASE_MODEL: spec.model.name, TAG_TASK: spec.task})
    if reg.decision is not None:
        alias = reg.decision.alias
        if reg.decision.promote:
            result["model"]["alias"] = alias
            tags[TAG_MODEL_ALIAS] = alias
        if mlflow.enabled:
            mirror_alias(reg.registry, mlflow.tracking_uri, reg.name, alias)
        result["promotion"] = reg.decision.as_dict()
        mlflow.log_dict(reg.decision.as_dict(), "promotion.json")
        tags[TAG_PROMOTION] = "promoted" if reg.decision.promote else "rejected"
    mlflow.set_tags(tags)
    return result


def mirror_alias(registry: Registry, tracking_uri: str, name: str, alias: str, rounds: int = 5) -> None:
    """Point MLflow's alias where ours points now. Read again after each write: a run that moved our alias
    meanwhile mirrors too, and whichever mirror runs last has read the final holder."""
    for _ in range(rounds):
        try:
            holder = int(registry.alias(name, alias)["version"])
        except RegistryError:
            return
        set_mlflow_alias(tracking_uri, name, alias, holder)
        if int(registry.alias(name, alias)["version"]) == holder:
            return
