"""The operator's runtime: its collaborators, and one pass over one run as events, the resync and due times
ask for it (`reconcile_run`), serialised per run, with its echo suppression and requeue."""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from legistra.operator import prometheus
from legistra.operator.backends import BACKENDS
from legistra.operator.config import OperatorConfig
from legistra.operator.kube import ApiError, Kube, newer_version
from legistra.operator.peering import is_leader
from legistra.operator.reconcile import Outcome, reconcile
from legistra.operator.report import MlflowReporter
from legistra.operator.runstate import RunState, Written, compact, freshest, late_job

log = logging.getLogger("legistra.operator")


@dataclass(frozen=True)
class Peering:
    """This replica's place among several: its peering objects, priority and identity (kopf's POD_ID)."""

    objects: list[dict[str, Any]]
    priority: int
    identity: str


@dataclass
class Runtime:
    """The operator's collaborators, built once at start-up from its config and kept in kopf's memo."""

    config: OperatorConfig
    kube: Kube
    peering: Peering | None = None  # None when standalone
    reporters: dict[str, MlflowReporter] = field(default_factory=dict)  # by tracking URI
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    served: frozenset[str] = frozenset()  # backend names whose CRDs the cluster serves (API discovery)
    runtime_ready: bool = False  # the default ClusterTrainingRuntime exists: `auto` prefers TrainJob
    emit: Callable[[dict[str, Any], str, str, str], None] = field(init=False)
    runs: dict[tuple[str, str], RunState] = field(default_factory=dict)  # by (namespace, name)

    def __post_init__(self) -> None:
        self.emit = emitter(self)

    def state(self, key: tuple[str, str]) -> RunState:
        """The run's state, made on first use."""
        found = self.runs.get(key)
        if found is None:
            found = self.runs[key] = RunState()
        return found


async def discover(rt: Runtime) -> None:
    """Which job kinds the cluster serves, re-checked each resync tick until both are, so a CRD installed later is
    picked up without a restart; and, while `auto` could use it, whether Trainer v2's default
    ClusterTrainingRuntime exists (a setting that names the kind never asks, and once found it is not asked again).
    """
    if not rt.served >= set(BACKENDS):
        found = frozenset([name for name, b in BACKENDS.items() if await rt.kube.serves(b.api_version, b.plural)])
        if found != rt.served:
            log.info("job kinds served by this cluster: %s", ", ".join(sorted(found)) or "none")
        rt.served = found
    if rt.runtime_ready or rt.config.jobs.backend != "auto" or "trainjob" not in rt.served:
        return
    name = rt.config.jobs.training_runtime
    try:
        ready = await rt.kube.get("ClusterTrainingRuntime", "", name) is not None
    except ApiError as exc:  # 403: the chart's ClusterRole was left out; runs then prefer PyTorchJob
        if exc.transient:
            raise
        ready = False
    if ready:
        log.info("ClusterTrainingRuntime %s found: backend auto prefers TrainJob", name)
    rt.runtime_ready = ready


def reporter_for(rt: Runtime, uri: str) -> MlflowReporter | None:
    """One MLflow reader per tracking server, made on first use; only servers speak REST (not sqlite/files)."""
    if not uri.startswith(("http://", "https://")):
        return None
    if uri not in rt.reporters:
        # The operator holds credentials for its own server only; it has no access to the runs' Secrets.
        own = uri == rt.config.jobs.mlflow_tracking_uri
        rt.reporters[uri] = MlflowReporter(uri, auth=rt.config.mlflow_auth if own else None)
    return rt.reporters[uri]


def runtime_of(memo: Any) -> Runtime:
    return cast(Runtime, memo.runtime)


async def acting(rt: Runtime) -> bool:
    """Whether this replica leads: kopf pauses only its own handlers, so our loops ask the same records."""
    peering = rt.peering
    if peering is None:
        return True
    now = datetime.datetime.now(datetime.timezone.utc)
    for obj in peering.objects:
        try:
            found = await rt.kube.get_object(obj)
        except ApiError:
            return False
        if not is_leader((found or {}).get("status"), peering.identity, peering.priority, now):
            return False
    return True


def event_object(body: dict[str, Any], kind: str, reason: str, message: str, instance: str,
                 now: datetime.datetime) -> dict[str, Any]:
    """A core/v1 Event about `body`, as kopf would post it."""
    meta = body.get("metadata") or {}
    stamp = now.astimezone(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": meta.get("namespace")},
            "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                               "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
            "type": kind, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": "legistra"}, "reportingComponent": "legistra", "reportingInstance": instance}


def emitter(rt: Runtime) -> Callable[[dict[str, Any], str, str, str], None]:
    """Events through kopf's queue inside its handlers; outside them (our resync, wake-up and schedule loops) kopf
    has no queue, and the event is posted through our own client instead of failing the reconcile."""
    pending: set[asyncio.Task[None]] = set()

    async def post(event: dict[str, Any]) -> None:
        try:
            await rt.kube.create(event, read=False)
        except ApiError as exc:
            log.warning("could not post event %s: %s", event["reason"], exc)

    def emit(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            (kopf.warn if kind == "Warning" else kopf.info)(cast(Any, body), reason=reason, message=message)
            return
        except LookupError:
            pass
        event = event_object(body, kind, reason, message, rt.config.pod_id,
                             datetime.datetime.now(datetime.timezone.utc))
        task = asyncio.get_running_loop().create_task(post(event))
        pending.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(pending.discard)

    return emit


class Trigger(enum.Enum):
    """Why a run is reconciled now. Only the run's own watch event may be an echo of this operator's write (then
    skipped) and leaves the copy that job events use; every other trigger reconciles whatever the body says."""

    RUN_EVENT = "run-event"  # the run's watch event
    JOB_EVENT = "job-event"  # its job changed: the job's body comes along (no GET)
    JOB_DELETED = "job-deleted"  # its job is gone (replaced, expired, deleted by hand): make the next one
    RESYNC = "resync"  # the paced resync pass (progress from MLflow, a crash loop's pods, a late model)
    DUE = "due"  # the requeue time of its last pass (a retry's start, a TrainJob's TTL deletion)


async def reconcile_run(rt: Runtime, body: dict[str, Any], trigger: Trigger, job: dict[str, Any] | None = None
                        ) -> Outcome | None:
    """One pass over one run, under its lock; None when skipped (an echo, or older than our last write) or failed
    on the API (logged: the resync loop is the next retry)."""
    meta = body.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    state = rt.state(key)
    async with state.lock:  # one reconcile per run at a time; events arriving meanwhile are folded in
        known = state.written
        if trigger is Trigger.RUN_EVENT:
            if known is not None and known.covers(meta) and (
                    known.echoed_by(body) or newer_version(known.version, meta.get("resourceVersion"))):
                return None  # our own write's echo, or older than it: nothing new (the resync re-checks anyway)
            state.copy = compact(body)
        run = freshest(body, known)
        if late_job(job, known):
            job = None  # reconcile reads the job afresh
        started = time.monotonic()
        try:
            outcome = await _reconcile_fresh(rt, state, run, job, key)
        except ApiError as exc:
            # The client already retried transient errors; the resync loop is the next retry.
            prometheus.RECONCILE_ERRORS.labels(kind="api_transient" if exc.transient else "api").inc()
            log.warning("%s/%s: reconcile failed, retried by the next resync: %s", key[0], key[1], exc)
            return None
        finally:
            prometheus.RECONCILE_SECONDS.observe(time.monotonic() - started)
        if outcome is None:
            return None
        # A pass that left the pods to the resync pass must not make that pass skip the run.
        state.reconciled_at = float("-inf") if outcome.pods_deferred else time.monotonic()
        prometheus.observe_phase(key, outcome.phase)
        prometheus.count_gpu_seconds(key[0], str((body.get("spec") or {}).get("task", "")), run.get("status"),
                                     outcome.status)
        _wake_when_due(rt, key, outcome.requeue_after)
        if outcome.created:
            log.info("%s/%s: created %s", key[0], key[1], ", ".join(outcome.created))
        return outcome


async def _reconcile_fresh(rt: Runtime, state: RunState, run: dict[str, Any], job: dict[str, Any] | None,
                           key: tuple[str, str]) -> Outcome | None:
    """Reconcile; on a conflict (someone wrote the run since the copy we had: a spec edit, another replica,
    kubectl), read it again and decide from what is there now. A second conflict waits for the next event."""
    try:
        return await _reconcile_once(rt, state, run, job)
    except ApiError as exc:
        if exc.status != 409:
            raise
    state.written = None
    prometheus.RECONCILE_ERRORS.labels(kind="conflict").inc()
    live = await rt.kube.get("TrainingRun", key[0], key[1])
    if live is None:
        return None
    # The other writer may have mirrored a later state of the job than the event's: read it too.
    return await _reconcile_once(rt, state, live, None)


async def _reconcile_once(rt: Runtime, state: RunState, body: dict[str, Any], job: dict[str, Any] | None
                          ) -> Outcome:
    meta = body.get("metadata", {})
    outcome = await reconcile(rt.kube, body, rt.config.jobs, lambda uri: reporter_for(rt, uri), rt.emit,
                              job=job, served=rt.served, runtime_ready=rt.runtime_ready)
    if outcome.status is not None:
        state.written = Written(meta.get("uid", ""), outcome.status, outcome.version, meta.get("generation"),
                                outcome.job_version)
    return outcome


def _wake_when_due(rt: Runtime, key: tuple[str, str], requeue_after: float | None) -> None:
    """Reconcile the run again when its last pass said it is due (a retry's start, a TrainJob's TTL deletion, a
    stall deadline). One wake-up per run: an earlier due time replaces a later one."""
    state = rt.state(key)
    if requeue_after is None:
        return
    # Status times are written to the second: wake just after the moment, never just before.
    at = time.monotonic() + requeue_after + 0.5
    if state.wakeup is not None and not state.wakeup.done():
        if state.wakeup_at <= at:
            return
        state.wakeup.cancel()
    state.wakeup_at = at
    state.wakeup = asyncio.create_task(_reconcile_when_due(rt, key, at - time.monotonic()))


async def _reconcile_when_due(rt: Runtime, key: tuple[str, str], delay: float) -> None:
    await asyncio.sleep(delay)
    if (state := rt.runs.get(key)) is not None:
        state.wakeup, state.wakeup_at = None, float("inf")
    try:
        if not await acting(rt):
            return
        run = await rt.kube.get("TrainingRun", key[0], key[1])
        if run is not None:
            await reconcile_run(rt, run, Trigger.DUE)
    except ApiError as exc:
        log.warning("%s/%s: wake-up failed, the resync loop retries: %s", key[0], key[1], exc)
