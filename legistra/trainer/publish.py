"""After training (rank 0): register the model version, apply the promotion gate, mirror to MLflow."""

from __future__ import annotations

import logging
from typing import Any

from legistra.api.spec import TrainingRun
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
from legistra.registry.registry import Registry, RegistryError
from legistra.tracking.mlflow_models import register_mlflow_version, set_mlflow_alias
from legistra.tracking.mlflow_tracker import MlflowTracker
from legistra.version import code_version

log = logging.getLogger("legistra.trainer")


def unpublished(mlflow: MlflowTracker, *, metrics: dict[str, float], baseline: dict[str, float], global_step: int,
                resumed_from: str | None) -> dict[str, Any]:
    """result.json of a finished run, before (or without) registering its model."""
    return {
        "phase": "Succeeded",
        "metrics": metrics,
        "baseline": baseline,
        "globalStep": global_step,
        "resumedFrom": resumed_from,
        "mlflow": {"runId": mlflow.run_id, "experimentId": mlflow.experiment_id, "url": mlflow.url,
                   "trackingUri": mlflow.tracking_uri, "error": mlflow.error},
    }


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


def publish(
    run: TrainingRun,
    paths: Any,
    settings: Any,
    mlflow: MlflowTracker,
    *,
    metrics: dict[str, float],
    baseline: dict[str, float],
    data_sources: dict[str, str],
    global_step: int,
    resumed_from: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    spec = run.spec
    assert settings.registry_uri is not None
    registry = Registry.open(settings.registry_uri)
    name = spec.registry.model_name
    metadata = {
        "baseModel": {"name": spec.model.name, "revision": spec.model.revision},
        "task": spec.task,
        "data": data_sources,
        "hyperparameters": {k: v for k, v in spec.wire().items() if k in ("training", "lora", "deepspeed", "data")},
        "metrics": metrics,
        "baseline": baseline,
        "trainingRun": {
            "name": run.metadata.name,
            "namespace": run.metadata.namespace,
            "uid": run.metadata.uid,
        },
        "mlflow": {"runId": mlflow.run_id, "experimentId": mlflow.experiment_id, "trackingUri": mlflow.tracking_uri},
        "codeVersion": code_version(),
        "globalStep": global_step,
        **extra,
    }
    gate = spec.registry.promotion
    if gate is not None:
        # The gate itself; its decision is made after the push, inside the alias's compare-and-swap, and is
        # recorded in the alias record, the result, MLflow (promotion.json and a tag) and the run's status.
        metadata["promotionGate"] = {"metric": gate.metric, "direction": gate.direction, "alias": gate.alias}

    version = registry.push(name, paths.model, metadata)
    log.info("registered %s v%d at %s", name, version.version, version.uri)

    result = unpublished(mlflow, metrics=metrics, baseline=baseline, global_step=global_step,
                         resumed_from=resumed_from)
    result["model"] = {"name": name, "version": version.version, "uri": version.uri}
    mlflow_version = None
    if mlflow.enabled and mlflow.run_id:
        mlflow_version = register_mlflow_version(
            mlflow.tracking_uri, name, version.uri, mlflow.run_id,
            tags={TAG_REGISTRY_VERSION: str(version.version), TAG_BASE_MODEL: spec.model.name,
                  TAG_TASK: spec.task},
        )
        result["model"]["mlflowVersion"] = mlflow_version
        mlflow.set_tags({TAG_MODEL: name, TAG_MODEL_VERSION: str(version.version), TAG_MODEL_URI: version.uri})

    if gate is not None:
        decision = registry.promote_if_better(name, gate.alias, version.version, gate.metric, gate.direction)
        log.info("promotion gate: %s", decision.reason)
        if decision.promote:
            result["model"]["alias"] = gate.alias
            mlflow.set_tags({TAG_MODEL_ALIAS: gate.alias})
        if mlflow.enabled:
            mirror_alias(registry, mlflow.tracking_uri, name, gate.alias)
        result["promotion"] = decision.as_dict()
        mlflow.log_dict(decision.as_dict(), "promotion.json")
        mlflow.set_tags({TAG_PROMOTION: "promoted" if decision.promote else "rejected"})
    return result

