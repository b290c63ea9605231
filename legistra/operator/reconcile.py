"""Reconcile one TrainingRun: observe its children, compare with the desired state, act idempotently.

Level-triggered: it is called on every event of the run or its PyTorchJob and on a timer, and does the
same thing whatever was missed in between. A restart of the operator at any moment therefore never
creates a second job (creates are conflict-safe and the job name is the run name) and never loses status
(status is recomputed from the job and the trainer's report, not remembered).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, replace
from typing import Any

from legistra.api.spec import TrainingRun
from legistra.api.validation import SpecError, parse_training_run
from legistra.contract import experiment_name, tracking_uri
from legistra.operator.backends import Backend, choose_backend
from legistra.operator.build import (
    SPEC_HASH_ANNOTATION,
    config_name,
    object_storage,
    pvc_name,
    refused_changes,
    spec_hash,
    storage_warning,
)
from legistra.operator.config import JobDefaults
from legistra.operator.decide import (
    CreateChildren,
    DeleteJob,
    Observed,
    PatchJob,
    Plan,
    WriteStatus,
    decide,
    final_failure,
)
from legistra.operator.kube import ApiError, Kube, resource_version
from legistra.operator.report import MlflowReporter
from legistra.operator.status import job_state, pods_worth_reading, volume_worth_checking

log = logging.getLogger("legistra.operator")

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, type, reason, message)
Reporters = Callable[[str], MlflowReporter | None]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Outcome:
    phase: str
    created: list[str]
    status: dict[str, Any] | None = None  # the status now on the object, as this reconcile left it
    version: str | None = None  # the object's resourceVersion after this reconcile's last status write
    job_version: str | None = None  # the resourceVersion of the job this reconcile mirrored (None: no job)
    pods_deferred: bool = False  # the job's pods were worth a look, left to the next resync pass (a job's event)
    requeue_after: float | None = None  # seconds until the run is due by itself (a retry, a TTL deletion)


async def reconcile(
    kube: Kube,
    body: dict[str, Any],
    defaults: JobDefaults,
    reporters: Reporters | None = None,
    emit: EventSink | None = None,
    clock: Callable[[], dt.datetime] = utc_now,
    *,
    job: dict[str, Any] | None = None,
    served: Set[str] = frozenset({"pytorchjob"}),
    runtime_ready: bool = False,
) -> Outcome:
    """Observe, decide, act. `reporters`: the MLflow reader for a tracking URI (None when it cannot be read over
    REST). `job`: the run's PyTorchJob or TrainJob when the caller already has it (its watch event), saving a GET.
    `served`: the job kinds (backend names) the cluster serves, from API discovery; `runtime_ready`: the default
    ClusterTrainingRuntime exists (so `auto` prefers TrainJob).

    Status writes carry `body`'s resourceVersion as a precondition: when anyone wrote the run since `body` was
    read, the write fails with ApiError 409 and nothing older overwrites anything newer; the caller re-reads."""
    seen, pods_deferred = await observe(kube, body, defaults, reporters, clock(), job=job, served=served,
                                        runtime_ready=runtime_ready)
    done = await act(kube, seen, decide(seen, defaults), emit)
    if isinstance(done, Outcome):
        done.pods_deferred = pods_deferred
        return done
    # A create was interrupted: the job was there already, or the API refused a child.
    now_body = {**body, "status": done.status, "metadata": {**body["metadata"], "resourceVersion": done.version}}
    if done.problem is not None:
        refused = replace(seen, body=now_body, create_failed=done.problem)
        again = await act(kube, refused, decide(refused, defaults), emit)
        assert isinstance(again, Outcome)  # a refusal creates nothing
    else:
        # Decide with the job found as if it had been read first (ownership too).
        again = await reconcile(kube, now_body, defaults, reporters, emit, clock, job=done.job, served=served,
                                runtime_ready=runtime_ready)
    again.created[:0] = done.created
    return again


async def observe(kube: Kube, body: dict[str, Any], defaults: JobDefaults, reporters: Reporters | None,
                  at: dt.datetime, *, job: dict[str, Any] | None, served: Set[str],
                  runtime_ready: bool = False) -> tuple[Observed, bool]:
    """Read what the decision needs, lazily: each read only when what is known so far leaves it open. Also says
    whether the job's pods were worth a look but were left to the resync pass (a job's own event)."""
    seen = Observed(body, at)
    meta, current = body.get("metadata", {}), dict(body.get("status") or {})
    if meta.get("deletionTimestamp"):
        return seen, False
    try:
        run = parse_training_run({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
    except SpecError as exc:
        return replace(seen, invalid=exc.problems), False
    seen = replace(seen, run=run)
    if final_failure(current, meta.get("generation")):
        return seen, False
    choice = choose_backend(run.spec.resources.backend, defaults.backend, served, current.get("backend"),
                            runtime_ready, defaults.training_runtime)
    backend = choice.backend
    seen = replace(seen, backend=backend, backend_reason=(choice.reason, choice.message))
    if backend is None:
        return seen, False
    on_event = job is not None  # handed over from the job's watch event (else read here)
    if job is None and current:
        # A run without status was never reconciled: its job is created by this pass, and one found there after all
        # (an operator died between the two) sends the pass round again with it. A burst of new runs saves a GET each.
        job = await kube.get(backend.kind, meta.get("namespace"), meta["name"])
    if job is None:
        return seen, False
    if not owned_by(job, run.metadata.uid):
        return replace(seen, job=job, owned=False), False
    seen = replace(seen, job=job, refused=await _spec_drift(kube, run, job))
    seen = await _observe_tracking(seen, run, job, defaults, reporters)
    rp = run.spec.run_policy
    read_pods = pods_worth_reading(job, current, rp.suspend, on_event, seen.report)
    if read_pods:
        # Did the trainer say a retry would fail the same way? The message is in the container's state, or in
        # lastState once the kubelet restarted it in place. Restarts are counted from the same list.
        pods = await kube.list("Pod", meta.get("namespace"), label_selector=f"{backend.pod_label}={meta['name']}")
        seen = replace(seen, pods=pods)
    if storage_warning(run, defaults) is None and not object_storage(run, defaults) and \
            volume_worth_checking(job, rp.suspend, at):
        seen = replace(seen, pvc=await kube.get("PersistentVolumeClaim", meta.get("namespace"), pvc_name(run)))
    # A job's own event leaves a healthy job's pods to the resync pass (its start is too early to find anything);
    # the outcome says so, and the run is due at the next tick.
    return seen, on_event and not read_pods and pods_worth_reading(job, current, rp.suspend)


async def _observe_tracking(seen: Observed, run: TrainingRun, job: Mapping[str, Any], defaults: JobDefaults,
                            reporters: Reporters | None) -> Observed:
    """The trainer's report from the run's tracking server: its own when it names one (the pods log there), else
    the operator's. A server of the run's own, behind credentials of its own, is one the operator cannot read (it
    reads no Secrets): progress then comes from the job alone (trainerStatus, termination messages)."""
    uri = tracking_uri(run.spec, defaults.mlflow_tracking_uri)
    if bool(run.spec.tracking.mlflow.credentials_secret) and uri != defaults.mlflow_tracking_uri:
        return replace(seen, private_uri=uri)
    reporter = reporters(uri) if reporters is not None and uri else None
    if reporter is None or not run.metadata.uid:
        return seen
    finished = job_state(job, False).phase in ("Succeeded", "Failed")
    # MLflow's client is blocking: keep it off the event loop that serves every other run.
    report = await asyncio.to_thread(reporter.read, experiment_name(run.spec), run.metadata.uid, fresh=finished)
    return replace(seen, report=report)


@dataclass
class Interrupted:
    """A create that could not go on: the job was there already (`job`), or the API refused a child (`problem`).
    `status` and `version`: the run as this pass left it."""

    created: list[str]
    status: dict[str, Any]
    version: str | None
    job: dict[str, Any] | None = None
    problem: str | None = None


async def act(kube: Kube, seen: Observed, plan: Plan, emit: EventSink | None) -> Outcome | Interrupted:
    """Carry the plan out, in order. Every step is idempotent: a pass cut short anywhere is finished by the next."""
    body, backend = dict(seen.body), seen.backend
    meta = body.get("metadata", {})
    ns, name = meta.get("namespace"), meta["name"]
    current: dict[str, Any] = dict(body.get("status") or {})
    version = resource_version(body)
    job = plan.job
    created: list[str] = []
    for action in plan.actions:
        if isinstance(action, WriteStatus):
            if action.status != current:
                written = await kube.patch_status("TrainingRun", ns, name, current, action.status, version)
                version = resource_version(written) or version
                for kind, reason, message in action.events:
                    if emit is not None:
                        emit(body, kind, reason, message)
            current = action.status
        elif isinstance(action, CreateChildren):
            assert backend is not None
            stopped = await _create(kube, action, backend, created)
            if isinstance(stopped, str):
                return Interrupted(created, current, version, problem=stopped)
            if stopped is not None and not stopped[1]:
                return Interrupted(created, current, version, job=stopped[0])
            job = stopped[0] if stopped is not None else job
        elif isinstance(action, PatchJob):
            assert backend is not None
            job = await kube.patch(backend.kind, ns, name, action.patch)
        elif isinstance(action, DeleteJob):
            assert backend is not None and job is not None
            if not (job.get("metadata") or {}).get("deletionTimestamp"):  # unless it is being deleted already
                await kube.delete(backend.kind, ns, name, propagation=action.propagation)
    if plan.deleting:
        return Outcome(plan.phase, created)
    return Outcome(plan.phase, created, current, version, resource_version(job), requeue_after=plan.requeue_after)


async def _create(kube: Kube, action: CreateChildren, backend: Backend, created: list[str]
                  ) -> tuple[dict[str, Any], bool] | str | None:
    """Create the children, the job last so its pods find their config and volume. Returns the job's (object,
    created), or the problem when the API refuses a child for good."""
    for obj in action.objects:
        try:
            # Only the job's answer is read (its resourceVersion); the others' echoes are never parsed.
            got, was_created = await kube.create_or_get(obj, read=obj["kind"] == backend.kind)
        except ApiError as exc:
            if exc.transient:
                raise
            return f"cannot create {obj['kind']} {obj['metadata']['name']}: {exc.message}"
        if was_created:
            created.append(obj["kind"])
        if obj["kind"] == backend.kind:
            return got, was_created
    return None


def owned_by(job: dict[str, Any], uid: str | None) -> bool:
    """Whether the job is the run's (uid) to act on: owned by it, or by nothing (made by hand for it)."""
    owners = {r.get("uid") for r in job.get("metadata", {}).get("ownerReferences", [])}
    return not uid or not owners or uid in owners


async def _spec_drift(kube: Kube, run: TrainingRun, job: dict[str, Any]) -> list[str]:
    """Fields changed since the job was built (read from the ConfigMap the job runs with).

    The job carries the hash of the spec it was built from; only when that differs is the ConfigMap
    read to name the fields, so the common case costs no request.
    """
    applied_hash = job.get("metadata", {}).get("annotations", {}).get(SPEC_HASH_ANNOTATION)
    if applied_hash is not None and applied_hash == spec_hash(run.spec.wire()):
        return []
    cm = await kube.get("ConfigMap", run.metadata.namespace or "", config_name(run))
    if cm is None:
        return []
    try:
        applied = json.loads(cm.get("data", {}).get("run.json", "{}")).get("spec", {})
    except json.JSONDecodeError:
        return []
    return refused_changes(applied, run.spec.wire())
