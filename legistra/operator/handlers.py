"""kopf handlers: thin wiring of watch events and one resync loop to `reconcile`.

Only `on.event` is used, never `on.create`/`on.update`: those are edge-triggered and make kopf write
progress annotations on every run. Reconciling from state is idempotent, costs no extra writes and
survives missed events and operator restarts.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from legistra.api.spec import API_GROUP, API_VERSION
from legistra.operator import prometheus
from legistra.operator.backends import BACKENDS
from legistra.operator.build import MANAGED_BY
from legistra.operator.config import OperatorConfig
from legistra.operator.credentials import cluster_credentials
from legistra.operator.kube import ApiError, Kube, newer_version, resource_version
from legistra.operator.peering import is_leader, peering_objects, peering_priority
from legistra.operator.reconcile import Outcome, reconcile
from legistra.operator.report import MlflowReporter
from legistra.operator.schedules import reconcile_schedule
from legistra.operator.status import needs_resync

log = logging.getLogger("legistra.operator")


@dataclass(frozen=True)
class Peering:
    """This replica's place among several: its peering objects, priority and identity (kopf's POD_ID)."""

    objects: list[dict[str, Any]]
    priority: int
    identity: str


@dataclass(frozen=True)
class Written:
    """What this operator's last status write left on a run: the status, at which resourceVersion of which
    object (uid) and spec generation, mirrored from which resourceVersion of its job."""

    uid: str
    status: dict[str, Any]
    version: str | None
    generation: int | None
    job_version: str | None = None

    def covers(self, meta: dict[str, Any]) -> bool:
        """Whether this write was to the same object at the same spec generation as `meta` describes."""
        return self.uid == meta.get("uid") and self.generation == meta.get("generation")

    def echoed_by(self, body: Mapping[str, Any]) -> bool:
        """Whether `body` is this write's own echo: the same object, generation, version and status."""
        meta = body.get("metadata") or {}
        return self.covers(meta) and meta.get("resourceVersion") == self.version and body.get("status") == self.status


def late_job(job: dict[str, Any] | None, written: Written | None) -> bool:
    """Whether a job event's body is older than the job state this operator last mirrored into its run.

    The event may have waited for the run's lock while another pass (resync, wake-up) read the job afresh;
    mirroring the older body would take the run's status back (Succeeded -> Running)."""
    return job is not None and written is not None and newer_version(written.job_version, resource_version(job))


def freshest(body: dict[str, Any], written: Written | None) -> dict[str, Any]:
    """The newest copy of a run this operator knows: `body`, or `body` with our own later status write over it.

    Watch bodies lag behind our writes; reconciling a lagging body would redo work and its status write would
    fail its resourceVersion precondition. Ours is used only for the same object and spec generation, and only
    when it is later than the body (or neither has a version, as on API emulators)."""
    meta = body.get("metadata") or {}
    if written is None or not written.covers(meta):
        return body
    theirs = meta.get("resourceVersion")
    if newer_version(written.version, theirs) or (theirs is None and written.version is None):
        return {**body, "status": written.status, "metadata": {**meta, "resourceVersion": written.version}}
    return body


@dataclass(slots=True)
class RunState:
    """What this operator keeps per run between events; dropped with the run (its DELETED event)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reconcile per run at a time
    # The last copy its watch delivered (compact()), so a job event finds its run without a GET; the echo of our
    # own write is not kept (`freshest` lays that write over the older copy).
    copy: bytes | None = None
    written: Written | None = None  # this operator's last status write: watch bodies can lag behind it
    reconciled_at: float = float("-inf")  # monotonic; the resync loop skips runs an event reconciled recently
    lookups: int = 0  # late report lookups after Succeeded without a model (bounded by status.MAX_REPORT_LOOKUPS)
    wakeup: asyncio.Task[None] | None = None  # a reconcile at the next due time its status names


@dataclass
class Pacer:
    """At most `rate` starts a second, evenly spaced: a loop asks before each start how long to wait first."""

    rate: float
    next_at: float = float("-inf")  # monotonic: the earliest moment of the next start

    def delay(self, now: float) -> float:
        """Seconds to wait from `now` before the next start; books that start. Never negative: a caller that
        comes late starts at once, and the spacing counts from then (no catching up in a burst)."""
        start = max(now, self.next_at)
        self.next_at = start + 1 / self.rate
        return start - now


@dataclass
class Runtime:
    """The operator's collaborators, built once at start-up from its config and kept in kopf's memo."""

    config: OperatorConfig
    kube: Kube
    peering: Peering | None = None  # None when standalone
    reporters: dict[str, MlflowReporter] = field(default_factory=dict)  # by tracking URI
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    served: frozenset[str] = frozenset()  # backend names whose CRDs the cluster serves (API discovery)
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
    """Which job kinds the cluster serves; re-checked each resync tick until both are, so a CRD installed
    later is picked up without a restart."""
    if rt.served >= set(BACKENDS):
        return
    found = frozenset([name for name, b in BACKENDS.items() if await rt.kube.serves(b.api_version, b.plural)])
    if found != rt.served:
        log.info("job kinds served by this cluster: %s", ", ".join(sorted(found)) or "none")
    rt.served = found


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


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base. kopf builds one for every event (a deep copy of the whole body, status included) to tell
    `on.create`/`on.update` handlers what changed; this operator has none of those, so the copy was pure cost
    (~6% of its CPU at 2,000 runs)."""

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
    # event (5 s by default), and a slot stays taken meanwhile: with 64 slots that capped a burst at ~13 runs/s.
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


async def _reconcile_run(rt: Runtime, body: dict[str, Any], job: dict[str, Any] | None = None,
                         force: bool = False) -> None:
    meta = body.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    state = rt.state(key)
    async with state.lock:  # one reconcile per run at a time; events arriving meanwhile are folded in
        known = state.written
        if not force and job is None and known is not None and known.covers(meta):
            if known.echoed_by(body):
                return  # the echo of our own status write (the resync loop re-checks anyway)
            if newer_version(known.version, meta.get("resourceVersion")):
                return  # older than what we wrote: nothing new
        if job is None and not force:  # the run's own watch event, neither our echo nor older than our write
            state.copy = compact(body)
        run = freshest(body, known)
        if late_job(job, known):
            job = None  # reconcile reads the job afresh
        started = time.monotonic()
        try:
            try:
                outcome = await _reconcile_once(rt, state, run, job)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                # Someone wrote the run since the copy we had (a spec edit, another replica, kubectl): read it
                # again and decide from what is there now. A second conflict waits for the next event.
                state.written = None
                prometheus.RECONCILE_ERRORS.labels(kind="conflict").inc()
                live = await rt.kube.get("TrainingRun", key[0], key[1])
                if live is None:
                    return
                # The other writer may have mirrored a later state of the job than the event's: read it too.
                outcome = await _reconcile_once(rt, state, live, None)
        except ApiError as exc:
            # The client already retried transient errors; the resync loop is the next retry.
            prometheus.RECONCILE_ERRORS.labels(kind="api_transient" if exc.transient else "api").inc()
            log.warning("%s/%s: reconcile failed, retried by the next resync: %s", key[0], key[1], exc)
            return
        finally:
            prometheus.RECONCILE_SECONDS.observe(time.monotonic() - started)
        # A pass that left the pods to the resync pass must not make that pass skip the run.
        state.reconciled_at = float("-inf") if outcome.pods_deferred else time.monotonic()
        prometheus.observe_phase(key, outcome.phase)
        _wake_when_due(rt, key, outcome.status or {})
        if outcome.created:
            log.info("%s/%s: created %s", key[0], key[1], ", ".join(outcome.created))


async def _reconcile_once(rt: Runtime, state: RunState, body: dict[str, Any], job: dict[str, Any] | None
                          ) -> Outcome:
    meta = body.get("metadata", {})
    outcome = await reconcile(rt.kube, body, rt.config.jobs, lambda uri: reporter_for(rt, uri), rt.emit,
                              job=job, served=rt.served)
    if outcome.status is not None:
        state.written = Written(meta.get("uid", ""), outcome.status, outcome.version, meta.get("generation"),
                                outcome.job_version)
    return outcome


def _wake_when_due(rt: Runtime, key: tuple[str, str], status: dict[str, Any]) -> None:
    """Reconcile the run again at the next moment its status names: a retry's retryAt, a TrainJob's jobDeleteAt."""
    due_times = [status.get("retryAt") if status.get("phase") == "Retrying" else None, status.get("jobDeleteAt")]
    due = [datetime.datetime.fromisoformat(str(t).replace("Z", "+00:00")) for t in due_times if t]
    state = rt.state(key)
    if not due or (state.wakeup is not None and not state.wakeup.done()):
        return
    # Written to the second: wake just after the moment, never just before.
    delay = max(0.0, (min(due) - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 0.5
    state.wakeup = asyncio.create_task(_reconcile_when_due(rt, key, delay))


async def _reconcile_when_due(rt: Runtime, key: tuple[str, str], delay: float) -> None:
    await asyncio.sleep(delay)
    if (state := rt.runs.get(key)) is not None:
        state.wakeup = None
    try:
        if not await acting(rt):
            return
        run = await rt.kube.get("TrainingRun", key[0], key[1])
        if run is not None:
            await _reconcile_run(rt, run, force=True)
    except ApiError as exc:
        log.warning("%s/%s: wake-up failed, the resync loop retries: %s", key[0], key[1], exc)


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
    await _reconcile_run(rt, dict(body))


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
        await _reconcile_run(rt, dict(run), job=None if deleted else dict(body), force=deleted)


# Bookkeeping the API server keeps on every object that reconcile never reads: on a real server it is most of a
# run's bytes (managedFields alone ~1.5 KB, kubectl's last-applied copy of the whole spec).
HEAVY_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def lean(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    """A run as reconcile needs it, without managedFields and kubectl's last-applied copy."""
    out = dict(body)
    meta = {k: v for k, v in (out.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in HEAVY_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in HEAVY_ANNOTATIONS}
    out["metadata"] = meta
    return out


def compact(body: dict[str, Any]) -> bytes:
    """A run as the operator keeps it between events: lean (a real API server's bookkeeping dropped) and
    compact JSON, ~1.6 KB a run where the parsed dict is ~10 KB (10,000 runs: ~16 MB instead of ~100 MB);
    parsed again only when a job event needs its run.

    Kept from `run_event`'s passes rather than by a `kopf.index`: kopf runs an index through its whole handler
    machinery on every event, which cost ~12% of the operator's CPU at 2,000 runs; `run_event` sees the same
    events."""
    return json.dumps(lean(body), separators=(",", ":")).encode()


async def every(rt: Runtime, interval: float, what: str, work: Callable[[Runtime, str | None], Awaitable[None]],
                first: Callable[[Runtime], Awaitable[None]] | None = None) -> None:
    """Run `work` for each watched namespace every `interval` seconds, on the leading replica only; `first`
    once per tick before them.

    A failing namespace is logged and retried on the next tick; it never stops the loop or the others.
    """
    while True:
        await asyncio.sleep(interval)
        if not await acting(rt):
            continue
        if first is not None:
            try:
                await first(rt)
            except ApiError as exc:
                log.warning("%s: %s", what, exc)
        for ns in rt.config.watched:
            try:
                await work(rt, ns)
            except ApiError as exc:
                log.warning("%s in %s: %s", what, ns or "all namespaces", exc)
            except Exception:
                log.exception("%s in %s failed", what, ns or "all namespaces")


async def resync(rt: Runtime, ns: str | None, page_size: int = 500) -> None:
    """Level-triggered safety net, and the heartbeat that pulls trainer progress from MLflow.

    One loop for the operator rather than kopf timers per object: kopf guards per-object timers with a
    finalizer, which costs a write per run and blocks deletion whenever the operator is down.

    The runs due are listed first, page by page without a pause, and reconciled after, at the pacer's rate: a
    list's continue token expires with etcd's compaction (every 5 minutes), and a pass paced between its pages
    would lose its tail to a 410 every time at 15,000 runs. What is kept meanwhile is each due run's compact copy
    (~1.6 KB). `page_size`: runs per list page, and runs between two checks that this replica still leads.
    """
    recent = time.monotonic() - rt.config.resync_seconds / 2
    due: list[tuple[tuple[str, str], RunState | None, bytes]] = []  # key, its state when listed, compact copy
    async for page in rt.kube.pages("TrainingRun", ns, limit=page_size):
        for run in page:
            meta = run["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            st = run.get("status") or {}
            state = rt.runs.get(key)  # read only: a finished run's state is not made here
            if not needs_resync(st, meta.get("generation"), state.lookups if state is not None else 0):
                continue  # finished: no requests at all
            if state is not None and state.reconciled_at > recent:
                continue  # an event reconciled it within half a period: at 10,000 runs a burst would be done twice
            due.append((key, state, compact(run)))
    pacer = Pacer(rt.config.resync_rate)  # spread over the pass: each run costs the API server a request or more
    for i, (key, state, copy) in enumerate(due):
        # A paced pass over 10,000 runs lasts minutes: a replica that lost its lead meanwhile stops soon after.
        if i and i % page_size == 0 and not await acting(rt):
            return
        if (wait := pacer.delay(time.monotonic())) > 0:
            await asyncio.sleep(wait)
        # Deleted since it was listed (the listed copy is older still), or reconciled by an event since.
        if state is not None and (rt.runs.get(key) is not state or state.reconciled_at > recent):
            continue
        run = json.loads(copy)
        if (run.get("status") or {}).get("phase") == "Succeeded":
            rt.state(key).lookups += 1
        # Forced: a run whose status is still this operator's last write is what the resync is for (progress
        # from MLflow, a crash loop's pods, a late model); the event path skips it as an echo.
        await _reconcile_run(rt, run, force=True)


async def tick_schedules(rt: Runtime, ns: str | None) -> None:
    for sched in await rt.kube.list("TrainingSchedule", ns):
        try:
            await reconcile_schedule(rt.kube, sched)
        except Exception:  # a bad schedule must not stop the others
            log.exception("schedule %s/%s failed", sched["metadata"].get("namespace"), sched["metadata"]["name"])
