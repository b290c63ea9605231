"""The MLflow mirror of our registry: each registry version as an MLflow model version (linked to its run),
and the same aliases. Our registry (`legistra.registry`) is the source of truth; `trainer/publish.py` drives both."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from legistra.contract import TAG_REGISTRY_VERSION

log = logging.getLogger(__name__)


def register_mlflow_version(
    tracking_uri: str,
    name: str,
    source: str,
    run_id: str | None,
    tags: Mapping[str, str],
) -> str | None:
    """Create the MLflow model version; returns its number, or None if MLflow is unreachable."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        mv = client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags))
        return str(mv.version)
    except Exception as exc:  # the registry copy is the source of truth; MLflow's is a convenience view
        log.error("could not register %s in MLflow's model registry: %s", name, exc)
        return None


def set_mlflow_alias(tracking_uri: str, name: str, alias: str, registry_version: int) -> None:
    """Point the MLflow alias at the MLflow version that mirrors `registry_version`."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        for mv in client.search_model_versions(f"name = '{name}'"):
            if mv.tags.get(TAG_REGISTRY_VERSION) == str(registry_version):
                client.set_registered_model_alias(name, alias, mv.version)
                return
    except Exception as exc:
        log.error("could not move MLflow alias %s of %s: %s", alias, name, exc)
