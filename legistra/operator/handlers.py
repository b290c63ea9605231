"""kopf handlers: thin wiring of events and timers to `reconcile`.

Only `on.event` and timers are used, never `on.create`/`on.update`: those are edge-triggered and make kopf
write progress annotations on every run. Reconciling from state is idempotent, costs no extra writes and
survives missed events and operator restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, ClassVar, cast

import kopf

from legistra.operator import metrics
from legistra.operator.build import MANAGED_BY, OperatorSettings
from legistra.operator.kube import ApiError, Kube, load_credentials
from legistra.operator.reconcile import reconcile
from legistra.operator.report import MlflowReporter
from legistra.operator.schedules import reconcile_schedule

log = logging.getLogger("legistra.operator")

GROUP, VERSION = "legistra.io", "v1alpha1"
MANAGED = {k: v for k, v in MANAGED_BY.items()}


class State:
    """Process-wide collaborators, set up once at startup."""

    kube: Kube
    settings: OperatorSettings
    reporter: MlflowReporter | None = None
    locks: ClassVar[dict[tuple[str, str], asyncio.Lock]] = {}


def _emit(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    if kind == "Warning":
        kopf.warn(cast(Any, body), reason=reason, message=message)
    else:
        kopf.info(cast(Any, body), reason=reason, message=message)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's defaults are unsafe at scale; every knob that matters is set explicitly.
    settings.batching.worker_limit = int(os.environ.get("LEGISTRA_WORKER_LIMIT", "64"))
    settings.watching.server_timeout = int(os.environ.get("LEGISTRA_WATCH_SERVER_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.posting.level = logging.INFO
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="legistra.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="legistra.io")
    settings.execution.max_workers = 4
    # No namespace/CRD scanning: the operator watches exactly what it is told, and so needs no cluster-wide
    # RBAC on namespaces when it is namespace-scoped (least privilege).
    settings.scanning.disabled = True
    peering = os.environ.get("LEGISTRA_PEERING")
    if peering:
        settings.peering.name = peering
        settings.peering.mandatory = True
        settings.peering.priority = int(os.environ.get("LEGISTRA_PEERING_PRIORITY", "0"))
    State.settings = OperatorSettings.from_env()
    State.kube = Kube(load_credentials(os.environ.get("LEGISTRA_KUBECONFIG") or None))
    uri = State.settings.mlflow_tracking_uri
    State.reporter = MlflowReporter(uri) if uri and uri.startswith("http") else None
    metrics.start_server()
    log.info("legistra operator configured (trainer image %s, MLflow %s, registry %s)",
             State.settings.trainer_image, uri, State.settings.registry_uri)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    await State.kube.close()


async def _reconcile_run(body: dict[str, Any]) -> None:
    meta = body.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    lock = State.locks.setdefault(key, asyncio.Lock())
    async with lock:  # one reconcile per run at a time; events arriving meanwhile are folded in
        started = time.monotonic()
        try:
            outcome = await reconcile(State.kube, body, State.settings, State.reporter, _emit)
        except ApiError as exc:
            # The client already retried transient errors; the resync timer is the next retry.
            metrics.RECONCILE_ERRORS.labels(kind="api_transient" if exc.transient else "api").inc()
            log.warning("%s/%s: reconcile failed, retried by the next resync: %s", key[0], key[1], exc)
            return
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        metrics.observe_phase(key, outcome.phase)
        if outcome.created:
            log.info("%s/%s: created %s", key[0], key[1], ", ".join(outcome.created))


@kopf.on.event(GROUP, VERSION, "trainingruns")
async def run_event(type: str, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        metrics.forget(((body.get("metadata") or {}).get("namespace", ""), body["metadata"]["name"]))
        return
    await _reconcile_run(dict(body))


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels=MANAGED)
async def job_event(type: str, body: kopf.Body, **_: Any) -> None:
    """Mirror a job's status into its TrainingRun as soon as the training-operator changes it."""
    if type == "DELETED":
        return
    owner = next((r for r in body["metadata"].get("ownerReferences", []) if r.get("kind") == "TrainingRun"), None)
    if owner is None:
        return
    run = await State.kube.get("TrainingRun", body["metadata"]["namespace"], owner["name"])
    if run is not None and run["metadata"].get("uid") == owner.get("uid"):
        await _reconcile_run(run)


@kopf.timer(GROUP, VERSION, "trainingruns", interval=float(os.environ.get("LEGISTRA_RESYNC_SECONDS", "30")),
            idle=5, field="status.phase", value=kopf.PRESENT)
async def resync(body: kopf.Body, **_: Any) -> None:
    """Level-triggered safety net, and the heartbeat that pulls trainer progress from MLflow."""
    if body.get("status", {}).get("phase") in ("Succeeded", "Failed") and body["status"].get("model"):
        return
    await _reconcile_run(dict(body))


@kopf.timer(GROUP, VERSION, "trainingschedules", interval=float(os.environ.get("LEGISTRA_SCHEDULE_TICK", "20")))
async def schedule_tick(body: kopf.Body, **_: Any) -> None:
    await reconcile_schedule(State.kube, dict(body))
