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
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any

from legistra.api.spec import TrainingRun
from legistra.api.validation import SpecError, parse_training_run
from legistra.contract import FAILURE_REASONS, experiment_name, primary_metric, tracking_uri
from legistra.operator.attempts import attempt_limit, job_attempt, plan_attempt
from legistra.operator.backends import choose_backend
from legistra.operator.build import (
    SPEC_HASH_ANNOTATION,
    build_children,
    config_name,
    length_refusal,
    memory_refusal,
    object_storage,
    pvc_name,
    refused_changes,
    spec_hash,
    storage_warning,
)
from legistra.operator.config import JobDefaults
from legistra.operator.kube import ApiError, Kube, resource_version
from legistra.operator.report import MlflowReporter
from legistra.operator.status import (
    container_restarts,
    desired_status,
    deterministic_failure,
    invalid_status,
    job_expires_at,
    job_state,
    keeps_pods_after_failure,
    pods_worth_reading,
    preempted,
    restart_limit_reached,
    trainer_status_report,
    volume_problem,
    volume_worth_checking,
    waiting_status,
)

log = logging.getLogger("legistra.operator")

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, type, reason, message)

# A Failed run with one of these reasons stays failed at its generation: only an edit tries again.
FINAL_REASONS = ("InvalidSpec", "InsufficientGPUMemory", "ChildCreateFailed", *FAILURE_REASONS)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Outcome:
    phase: str
    created: list[str]
    status: dict[str, Any] | None = None  # the status now on the object, as this reconcile left it
    version: str | None = None  # the object's resourceVersion after this reconcile's last status write
    job_version: str | None = None  # the resourceVersion of the job this reconcile mirrored (None: no job)
    pods_deferred: bool = False  # the job's pods were worth a look, left to the next resync pass (a job's event)


async def reconcile(
    kube: Kube,
    body: dict[str, Any],
    defaults: JobDefaults,
    reporters: Callable[[str], MlflowReporter | None] | None = None,
    emit: EventSink | None = None,
    clock: Callable[[], dt.datetime] = utc_now,
    *,
    job: dict[str, Any] | None = None,
    served: Set[str] = frozenset({"pytorchjob"}),
) -> Outcome:
    """`reporters`: the MLflow reader for a tracking URI (None when it cannot be read over REST).
    `job`: the run's PyTorchJob or TrainJob when the caller already has it (its watch event), saving a GET.
    `served`: the job kinds (backend names) the cluster serves, from API discovery.

    Status writes carry `body`'s resourceVersion as a precondition: when anyone wrote the run since `body` was
    read, the write fails with ApiError 409 and nothing older overwrites anything newer; the caller re-reads."""
    meta = body.get("metadata", {})
    ns, name = meta.get("namespace"), meta["name"]
    generation = meta.get("generation")
    current = dict(body.get("status") or {})
    version = resource_version(body)
    if meta.get("deletionTimestamp"):
        return Outcome(current.get("phase", ""), [])
    at = clock()
    now = _iso(at)  # one instant for every condition this pass writes

    async def save(new: dict[str, Any]) -> bool:
        """Write `new` over the current status; False when there was nothing to write."""
        nonlocal version
        if new == current:
            return False
        written = await kube.patch_status("TrainingRun", ns, name, current, new, version)
        version = resource_version(written) or version
        return True

    async def refuse(problems: list[str], reason: str, created: list[str]) -> Outcome:
        """Failed with the precise problems, and no job (or no more children)."""
        new = invalid_status(current, problems, now, generation, reason=reason)
        patched = await save(new)
        if patched and emit:
            emit(body, "Warning", reason, new["message"])
        return Outcome("Failed", created, new, version)

    async def wait(reason: str, problem: str) -> Outcome:
        """Pending until a reason that goes away by itself is gone (waiting_status), and no job yet."""
        new = waiting_status(current, reason, problem, now, generation)
        if await save(new) and emit is not None:
            emit(body, "Warning", reason, problem)
        return Outcome("Pending", [], new, version)

    async def over() -> Outcome:
        """The run is finished and keeps its status; only a wait for its job's deletion (jobDeleteAt) ends."""
        kept = {k: v for k, v in current.items() if k != "jobDeleteAt"}
        await save(kept)
        return Outcome(str(current.get("phase", "")), [], kept, version, resource_version(job))

    try:
        run = parse_training_run({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
    except SpecError as exc:
        # The CRD schema lets through what CEL cannot express (or an older CRD is installed): refuse, no job.
        return await refuse(exc.problems, "InvalidSpec", [])

    created: list[str] = []
    refused: list[str] = []
    if current.get("phase") == "Failed" and current.get("observedGeneration") == generation and any(
            c.get("type") == "Failed" and c.get("reason") in FINAL_REASONS
            for c in current.get("conditions", [])):
        # Refused or failed for good at this generation; an edit retries.
        return Outcome("Failed", [], current, version)

    rp = run.spec.run_policy
    backend, unavailable = choose_backend(run.spec.resources.backend, defaults.backend, served, current.get("backend"))
    if backend is None:
        assert unavailable is not None
        return await wait("BackendUnavailable", unavailable)

    async def stop(job: dict[str, Any], propagation: str = "Background") -> None:
        """Delete the run's job, unless it is being deleted already."""
        if not job["metadata"].get("deletionTimestamp"):
            await kube.delete(backend.kind, ns, name, propagation=propagation)
    on_event = job is not None  # handed over from the job's watch event (else read below)
    if job is None and current:
        # A run without status was never reconciled: its job is created below, and one found there after all (an
        # operator died between the two) sends this pass round again with it. A burst of new runs saves a GET each.
        job = await kube.get(backend.kind, ns, name)
    if job is not None and not owned_by(job, run.metadata.uid):
        # A job of its name that belongs to something else: never adopt, mirror, stop or delete it. Often an earlier
        # run of this name, deleted and applied again before its job was collected: wait until it is gone.
        return await wait("JobNameTaken", f"a {backend.kind} named {name} exists and is not owned by this TrainingRun; "
                          "this run starts once that job is gone (the operator checks again at each resync)")
    # The run's own tracking server when it names one (the pods log there), else the operator's.
    uri = tracking_uri(run.spec, defaults.mlflow_tracking_uri)
    # A server of the run's own, behind credentials of its own, is one the operator cannot read (it reads no
    # Secrets): progress then comes from the job alone (trainerStatus, termination messages).
    private = bool(run.spec.tracking.mlflow.credentials_secret) and uri != defaults.mlflow_tracking_uri
    reporter = reporters(uri) if reporters is not None and uri and not private else None
    report = None
    if reporter is not None and run.metadata.uid and job is not None:
        experiment = experiment_name(run.spec)
        finished = job_state(job, False).phase in ("Succeeded", "Failed")
        # MLflow's client is blocking: keep it off the event loop that serves every other run.
        report = await asyncio.to_thread(reporter.read, experiment, run.metadata.uid, fresh=finished)

    was_preempted = False
    restarts: int | None = None
    ended = None
    read_pods = job is not None and pods_worth_reading(job, current, rp.suspend, on_event, report)
    # A job's own event leaves a healthy job's pods to the resync pass (its start is too early to find anything);
    # the outcome says so, and the run is due at the next tick.
    pods_deferred = on_event and job is not None and not read_pods and pods_worth_reading(job, current, rp.suspend)
    if job is not None and read_pods:
        # Did the trainer say a retry would fail the same way (bad data, no such model, a NaN)? The message is in
        # the container's state, or in lastState once the kubelet restarted it in place.
        pods = await kube.list("Pod", ns, label_selector=f"{backend.pod_label}={name}")
        failure = deterministic_failure(pods, name, backend)
        if failure is not None:
            new = desired_status(current, job, generation=generation, now=now, suspended_in_spec=rp.suspend,
                                 report=report, metric=primary_metric(run.spec), attempt=job_attempt(job),
                                 max_attempts=rp.max_attempts, failure=failure,
                                 restarts=container_restarts(pods, name, backend))
            if await save(new) and emit is not None:
                _emit_transitions(emit, body, current, new)
            # Its pods would only crash-loop until backoffLimit (and a Failed job's under cleanPodPolicy None for
            # ever): stop them now.
            await stop(job)
            return Outcome("Failed", [], new, version, resource_version(job))
        was_preempted = preempted(pods, name, backend)
        restarts = container_restarts(pods, name, backend)
        if backend.name == "trainjob" and job_state(job, rp.suspend).phase == "Running":
            ended = restart_limit_reached(restarts, rp.backoff_limit)
    plan = plan_attempt(current, job, rp.max_attempts, rp.retry_delay_seconds, at, was_preempted,
                        stopped=ended is not None)
    if plan.action == "finished":  # e.g. its job expired by TTL
        return await over()
    if plan.action == "wait" and job is None:
        # Retrying, and the failed job already expired (TTL): the status, retryAt included, stays as it is until
        # the retry is due (the runtime wakes the run then).
        return Outcome(str(current.get("phase", "")), [], current, version)
    if plan.action in ("retry", "replace"):
        # Status first: should the operator die right after, the job's older attempt number tells the next
        # reconcile to replace it, and one failure is never retried twice.
        counted = {**current, "preemptions": int(current.get("preemptions") or 0) + 1} if plan.preempted else current
        new = desired_status(counted, job, generation=generation, now=now, suspended_in_spec=rp.suspend,
                             metric=primary_metric(run.spec), attempt=plan.attempt,
                             max_attempts=attempt_limit(counted, rp.max_attempts), replacing=True)
        patched = await save(new)
        if patched and emit is not None and plan.action == "retry":
            emit(body, "Normal", "AttemptStarted", new["message"])
        current = new
        if job is not None:
            # Foreground: the job stays (terminating) until its pods are gone, so the next job's pods, which reuse
            # their names, cannot start beside them. Its deletion event brings us back.
            await stop(job, propagation="Foreground")
            return Outcome(new["phase"], [], new, version, resource_version(job))
    delete_at = None
    if job is None:
        too_long = length_refusal(run)
        if too_long is not None:  # deterministic: the model would fail at its first long batch
            return await refuse([too_long], "InvalidSpec", [])
        misfit = memory_refusal(run, defaults)
        if misfit is not None:  # deterministic: no GPU is spent finding out that it runs out of memory
            return await refuse([misfit], "InsufficientGPUMemory", [])
        # Job last: its pods must find their config and volume. Each create tolerates "already exists".
        for obj in build_children(run, defaults, plan.attempt, backend.name):
            try:
                # Only the job's answer is read (its resourceVersion); the others' echoes are never parsed.
                got, was_created = await kube.create_or_get(obj, read=obj["kind"] == backend.kind)
            except ApiError as exc:
                if exc.transient:
                    raise
                # Forbidden (RBAC), Invalid (admission webhook, quota), missing CRD: retrying will not help.
                problem = f"cannot create {obj['kind']} {obj['metadata']['name']}: {exc.message}"
                return await refuse([problem], "ChildCreateFailed", created)
            if was_created:
                created.append(obj["kind"])
            if obj["kind"] == backend.kind:
                if not was_created:  # there already: decide with it as if it had been read first (ownership too)
                    again = await reconcile(kube, body, defaults, reporters, emit, clock, job=got, served=served)
                    again.created[:0] = created
                    return again
                job = got
    else:
        refused = await _spec_drift(kube, run, job)
        suspend = backend.suspend_to_write(job, rp.suspend)
        if suspend is not None:
            job = await kube.patch(backend.kind, ns, name, backend.suspend_patch(suspend))
        # Trainer v2 has no ttlSecondsAfterFinished: the operator deletes a finished TrainJob itself.
        expires = job_expires_at(job, backend, rp.ttl_seconds_after_finished)
        if expires is not None and at >= expires:
            await kube.delete(backend.kind, ns, name, propagation="Background")
            return await over()
        delete_at = _iso(expires) if expires is not None else None

    report = report or trainer_status_report(job)  # Trainer v2 reports progress itself (TrainJobStatus gate)
    if private:
        report = {**(report or {}), "mlflow": {"note": (
            f"not read by the operator: {uri} takes this run's own credentials (spec.tracking.mlflow."
            "credentialsSecret) and the operator reads no Secrets; progress comes from the job")}}

    storage: tuple[str, str] | None = None
    warning = storage_warning(run, defaults)
    if warning is not None:
        storage = ("NoReadWriteMany", warning)
    elif job is not None and not object_storage(run, defaults) and volume_worth_checking(job, rp.suspend, at):
        pending = volume_problem(await kube.get("PersistentVolumeClaim", ns, pvc_name(run)), at)
        storage = ("VolumePending", pending) if pending else None

    new = desired_status(current, job, generation=generation, now=now, suspended_in_spec=rp.suspend,
                         refused=refused, report=report, metric=primary_metric(run.spec), attempt=plan.attempt,
                         max_attempts=attempt_limit(current, rp.max_attempts),
                         retry_at=_iso(plan.retry_at) if plan.retry_at is not None else None,
                         replacing=job is not None and job_attempt(job) < plan.attempt, job_delete_at=delete_at,
                         storage=storage, restarts=restarts, ended=ended)
    patched = await save(new)
    if patched and emit is not None:
        _emit_transitions(emit, body, current, new)
    if job is not None and (ended is not None or keeps_pods_after_failure(job)):
        # The attempt is over and in the status (Retrying or Failed); its pods were read above. Delete the job now:
        # a TrainJob past the run's backoffLimit would restart its nodes up to its Job's own limit (6), and a
        # Failed PyTorchJob's crashed containers restart for ever under cleanPodPolicy None, keeping their GPUs.
        # The retry, due at retryAt, does not need it.
        await stop(job)
    return Outcome(new["phase"], created, new, version, resource_version(job), pods_deferred)


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


def _emit_transitions(emit: EventSink, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
    before, after = old.get("phase"), new.get("phase")
    if before != after and after != "Pending":
        kind = "Warning" if after == "Failed" else "Normal"
        emit(body, kind, f"Run{after}", str(new.get("message") or after))
    old_refused = next((c for c in old.get("conditions", []) if c["type"] == "SpecChangeRefused"), None)
    new_refused = next((c for c in new.get("conditions", []) if c["type"] == "SpecChangeRefused"), None)
    if new_refused and new_refused["status"] == "True" and (not old_refused or old_refused["status"] != "True"):
        emit(body, "Warning", "SpecChangeRefused", new_refused["message"])
    old_storage = next((c for c in old.get("conditions", []) if c["type"] == "CheckpointStorage"), None)
    new_storage = next((c for c in new.get("conditions", []) if c["type"] == "CheckpointStorage"), None)
    if new_storage and new_storage["status"] == "False" and (
            not old_storage or (old_storage["status"], old_storage["reason"]) != ("False", new_storage["reason"])):
        emit(body, "Warning", new_storage["reason"], new_storage["message"])
