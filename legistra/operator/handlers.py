"""kopf handlers: thin wiring of watch events, an index and one resync loop to `reconcile`.

Only `on.event` is used, never `on.create`/`on.update`: those are edge-triggered and make kopf write
progress annotations on every run. Reconciling from state is idempotent, costs no extra writes and
survives missed events and operator restarts.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import kopf

from legistra import __version__
from legistra.api.spec import API_GROUP, API_VERSION
from legistra.operator import metrics
from legistra.operator.build import MANAGED_BY, OperatorSettings
from legistra.operator.kube import ApiError, Kube, load_credentials
from legistra.operator.peering import is_leader, peering_objects, peering_priority
from legistra.operator.reconcile import reconcile
from legistra.operator.report import MlflowReporter
from legistra.operator.schedules import reconcile_schedule

log = logging.getLogger("legistra.operator")


@dataclass(frozen=True)
class Peering:
    """This replica's place among several: its peering objects, priority and identity (kopf's POD_ID)."""

    objects: list[dict[str, Any]]
    priority: int
    identity: str


class State:
    """Process-wide collaborators, set up once at startup."""

    kube: Kube
    settings: OperatorSettings
    reporter: MlflowReporter | None = None
    locks: ClassVar[dict[tuple[str, str], asyncio.Lock]] = {}
    # The status this operator last wrote per run: watch bodies can lag behind our own writes.
    written: ClassVar[dict[tuple[str, str], tuple[str, dict[str, Any]]]] = {}
    tasks: ClassVar[list[asyncio.Task[None]]] = []
    peering: Peering | None = None  # None when standalone


async def acting() -> bool:
    """Whether this replica leads: kopf pauses only its own handlers, so our loops ask the same records."""
    peering = State.peering
    if peering is None:
        return True
    now = datetime.datetime.now(datetime.timezone.utc)
    for obj in peering.objects:
        try:
            found = await State.kube.get_object(obj)
        except ApiError:
            return False
        if not is_leader((found or {}).get("status"), peering.identity, peering.priority, now):
            return False
    return True


def _emit(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    if kind == "Warning":
        kopf.warn(cast(Any, body), reason=reason, message=message)
    else:
        kopf.info(cast(Any, body), reason=reason, message=message)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's defaults are unsafe at scale; every knob that matters is set explicitly.
    # One worker per object with events in flight. kopf keeps a worker alive `idle_timeout` after its last
    # event (5 s by default), and a slot stays taken meanwhile: with 64 slots that capped a burst at ~13 runs/s.
    settings.queueing.worker_limit = int(os.environ.get("LEGISTRA_WORKER_LIMIT", "256"))
    settings.queueing.idle_timeout = float(os.environ.get("LEGISTRA_WORKER_IDLE_SECONDS", "1"))
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
    State.settings = OperatorSettings.from_env()
    State.kube = Kube(load_credentials(os.environ.get("LEGISTRA_KUBECONFIG") or None),
                      agent=f"legistra-operator/{__version__} ({os.environ.get('POD_ID', 'standalone')})")
    namespaces = watched_namespaces()
    peering_name = os.environ.get("LEGISTRA_PEERING")
    if peering_name and not settings.peering.standalone:
        settings.peering.name = peering_name
        settings.peering.mandatory = True
        settings.peering.priority = peering_priority(os.environ.get("LEGISTRA_PEERING_PRIORITY"), time.time(),
                                                     random.randrange(1000))
        settings.peering.lifetime = int(os.environ.get("LEGISTRA_PEERING_LIFETIME", "60"))
        State.peering = Peering(peering_objects(peering_name, namespaces), settings.peering.priority,
                                os.environ.get("POD_ID", ""))
        for obj in State.peering.objects:  # kopf waits, paused, until these exist
            if await State.kube.get_object(obj) is None:  # read first: restarts cost no write
                await State.kube.create_or_get(obj)
        log.info("peering %r as %s with priority %d", peering_name, State.peering.identity, State.peering.priority)
    uri = State.settings.mlflow_tracking_uri
    State.reporter = MlflowReporter(uri) if uri and uri.startswith("http") else None
    metrics.start_server()
    State.tasks = [
        asyncio.create_task(every(float(os.environ.get("LEGISTRA_RESYNC_SECONDS", "30")), namespaces, "resync",
                                  resync)),
        asyncio.create_task(every(float(os.environ.get("LEGISTRA_SCHEDULE_TICK", "20")), namespaces, "schedules",
                                  tick_schedules)),
    ]
    log.info("legistra operator configured (trainer image %s, MLflow %s, registry %s)",
             State.settings.trainer_image, uri, State.settings.registry_uri)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    for task in State.tasks:
        task.cancel()
    await State.kube.close()


async def _reconcile_run(body: dict[str, Any], job: dict[str, Any] | None = None, force: bool = False) -> None:
    meta = body.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    lock = State.locks.setdefault(key, asyncio.Lock())
    async with lock:  # one reconcile per run at a time; events arriving meanwhile are folded in
        uid, written = State.written.get(key, ("", None))
        last = written if uid == meta.get("uid") else None
        if not force and job is None and last is not None and body.get("status") == last and \
                last.get("observedGeneration") == meta.get("generation"):
            return  # the echo of our own status write: nothing new (the resync loop re-checks anyway)
        started = time.monotonic()
        try:
            outcome = await reconcile(State.kube, body, State.settings, State.reporter, _emit,
                                      job=job, last_status=last)
            if outcome.status is not None:
                State.written[key] = (meta.get("uid", ""), outcome.status)
        except ApiError as exc:
            # The client already retried transient errors; the resync loop is the next retry.
            metrics.RECONCILE_ERRORS.labels(kind="api_transient" if exc.transient else "api").inc()
            log.warning("%s/%s: reconcile failed, retried by the next resync: %s", key[0], key[1], exc)
            return
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        metrics.observe_phase(key, outcome.phase)
        if outcome.created:
            log.info("%s/%s: created %s", key[0], key[1], ", ".join(outcome.created))


@kopf.on.event(API_GROUP, API_VERSION, "trainingruns")
async def run_event(type: str, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        key = ((body.get("metadata") or {}).get("namespace", ""), body["metadata"]["name"])
        metrics.forget(key)
        State.written.pop(key, None)
        State.locks.pop(key, None)
        return
    await _reconcile_run(dict(body))


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels=MANAGED_BY)
async def job_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
    """Mirror a job's status into its TrainingRun as soon as the training-operator changes it; when a job is
    deleted (replaced by a new attempt, or by hand), let its run make the next one."""
    deleted = type == "DELETED"
    if not deleted and not (body.get("status") or {}).get("conditions"):
        return  # a job we just created has nothing to mirror yet
    owner = next((r for r in body["metadata"].get("ownerReferences", []) if r.get("kind") == "TrainingRun"), None)
    if owner is None:
        return
    key = (body["metadata"]["namespace"], owner["name"])
    runs: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["runs"]
    # After a job's deletion only a fresh read tells whether its run went too (a cascade): never the index.
    found = [] if deleted else list(runs.get(key, []))
    run = found[0] if found else await State.kube.get("TrainingRun", key[0], key[1])
    if run is not None and run["metadata"].get("uid") == owner.get("uid"):
        await _reconcile_run(dict(run), job=None if deleted else dict(body), force=deleted)


@kopf.index(API_GROUP, API_VERSION, "trainingruns")
def runs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """In-memory copies of the TrainingRuns, so job events find their run without a GET."""
    return {(namespace or "", name): dict(body)}


async def every(interval: float, namespaces: list[str | None], what: str,
                work: Callable[[str | None], Awaitable[None]]) -> None:
    """Run `work` for each watched namespace every `interval` seconds, on the leading replica only.

    A failing namespace is logged and retried on the next tick; it never stops the loop or the others.
    """
    while True:
        await asyncio.sleep(interval)
        if not await acting():
            continue
        for ns in namespaces:
            try:
                await work(ns)
            except ApiError as exc:
                log.warning("%s in %s: %s", what, ns or "all namespaces", exc)
            except Exception:
                log.exception("%s in %s failed", what, ns or "all namespaces")


async def resync(ns: str | None) -> None:
    """Level-triggered safety net, and the heartbeat that pulls trainer progress from MLflow.

    One loop for the operator rather than kopf timers per object: kopf guards per-object timers with a
    finalizer, which costs a write per run and blocks deletion whenever the operator is down.
    """
    for run in await State.kube.list("TrainingRun", ns):
        st = run.get("status") or {}
        finished = st.get("phase") == "Failed" or (st.get("phase") == "Succeeded" and st.get("model"))
        if finished and st.get("observedGeneration") == run["metadata"].get("generation"):
            continue  # finished and fully reported
        await _reconcile_run(run)


async def tick_schedules(ns: str | None) -> None:
    for sched in await State.kube.list("TrainingSchedule", ns):
        try:
            await reconcile_schedule(State.kube, sched)
        except Exception:  # a bad schedule must not stop the others
            log.exception("schedule %s/%s failed", sched["metadata"].get("namespace"), sched["metadata"]["name"])


def watched_namespaces() -> list[str | None]:
    raw = os.environ.get("LEGISTRA_WATCH_NAMESPACES", "")
    return [n for n in raw.split(",") if n] or [None]
