"""kopf handlers: thin wiring of watch events, start-up and shutdown to the runtime (`runtime.reconcile_run`).

Only `on.event` is used, never `on.create`/`on.update`: those are edge-triggered and make kopf write
progress annotations on every run. Reconciling from state is idempotent, costs no extra writes and
survives missed events and operator restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any, cast

import kopf

from legistra.api.spec import API_GROUP, API_VERSION
from legistra.operator import prometheus
from legistra.operator.build import MANAGED_BY
from legistra.operator.config import OperatorConfig
from legistra.operator.credentials import cluster_credentials
from legistra.operator.kube import Kube
from legistra.operator.peering import peering_objects, peering_priority
from legistra.operator.resync import every, resync, tick_schedules
from legistra.operator.runtime import Peering, Runtime, Trigger, discover, reconcile_run, runtime_of

log = logging.getLogger("legistra.operator")


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base. kopf builds one for every event (a deep copy of the whole body, status included) to tell
    `on.create`/`on.update` handlers what changed; this operator has none of those, so the copy was pure cost
    (measured in docs/operator.md, "Measurements behind the design")."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.config
    # kopf's defaults are unsafe at scale; every knob that matters is set explicitly.
    # One worker per object with events in flight. kopf keeps a worker alive `idle_timeout` after its last
    # event (5 s by default), and a slot stays taken meanwhile, capping a burst (docs/operator.md, "Measurements").
    settings.queueing.worker_limit = config.worker_limit
    settings.queueing.idle_timeout = config.worker_idle_seconds
    settings.watching.server_timeout = config.watch_server_timeout
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.posting.level = logging.INFO
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="legistra.io")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.execution.max_workers = 4
    # No namespace/CRD scanning: the operator watches exactly what it is told, and so needs no cluster-wide
    # RBAC on namespaces when it is namespace-scoped (least privilege).
    settings.scanning.disabled = True
    def credentials() -> Any:  # the same path again after a 401: a rotated token, a re-run exec plugin
        return cluster_credentials(config.kubeconfig, None, config.kube_env)

    rt = Runtime(config, Kube(credentials(), agent=config.agent, refresh=credentials))
    memo.runtime = rt
    if config.peering and not settings.peering.standalone:
        settings.peering.name = config.peering
        settings.peering.mandatory = True
        settings.peering.priority = peering_priority(config.peering_priority, time.time(), random.randrange(1000))
        settings.peering.lifetime = config.peering_lifetime
        rt.peering = Peering(peering_objects(config.peering, config.watched), settings.peering.priority,
                             config.pod_id)
        for obj in rt.peering.objects:  # kopf waits, paused, until these exist
            if await rt.kube.get_object(obj) is None:  # read first: restarts cost no write
                await rt.kube.create_or_get(obj, read=False)
        log.info("peering %r as %s with priority %d", config.peering, rt.peering.identity, rt.peering.priority)
    uri = config.jobs.mlflow_tracking_uri
    await discover(rt)
    prometheus.start_server(config.metrics_port, config.metrics_addr)
    rt.tasks = [
        asyncio.create_task(every(rt, config.resync_seconds, "resync", resync, first=discover)),
        asyncio.create_task(every(rt, config.schedule_tick_seconds, "schedules", tick_schedules)),
    ]
    log.info("legistra operator configured (trainer image %s, MLflow %s, registry %s)",
             config.jobs.trainer_image, uri, config.jobs.registry_uri)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    rt = runtime_of(memo)
    for task in [*rt.tasks, *(s.wakeup for s in rt.runs.values() if s.wakeup is not None)]:
        task.cancel()
    await rt.kube.close()


@kopf.on.event(API_GROUP, API_VERSION, "trainingruns")
async def run_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    rt = runtime_of(memo)
    key = ((body.get("metadata") or {}).get("namespace", ""), body["metadata"]["name"])
    if type == "DELETED":
        prometheus.forget(key)
        state = rt.runs.pop(key, None)
        if state is not None and state.wakeup is not None:
            state.wakeup.cancel()
        return
    await reconcile_run(rt, dict(body), Trigger.RUN_EVENT)


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels=MANAGED_BY)
@kopf.on.event("trainer.kubeflow.org", "v1alpha1", "trainjobs", labels=MANAGED_BY)
async def job_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Mirror a job's status (PyTorchJob or TrainJob) into its TrainingRun as soon as Kubeflow changes it; when a job is
    deleted (replaced by a new attempt, or by hand), let its run make the next one."""
    deleted = type == "DELETED"
    if not deleted and not body.get("status"):
        return  # a job we just created has nothing to mirror yet
    owner = next((r for r in body["metadata"].get("ownerReferences", []) if r.get("kind") == "TrainingRun"), None)
    if owner is None:
        return
    key = (body["metadata"]["namespace"], owner["name"])
    rt = runtime_of(memo)
    # After a job's deletion only a fresh read tells whether its run went too (a cascade): never the copy.
    state = None if deleted else rt.runs.get(key)
    found = state.copy if state is not None else None
    run = json.loads(found) if found is not None else await rt.kube.get("TrainingRun", key[0], key[1])
    if run is not None and run["metadata"].get("uid") == owner.get("uid"):
        if deleted:
            await reconcile_run(rt, dict(run), Trigger.JOB_DELETED)
        else:
            await reconcile_run(rt, dict(run), Trigger.JOB_EVENT, dict(body))


