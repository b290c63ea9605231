"""Pure decision of one reconcile pass: what was observed -> the plan (status to write, actions, requeue time).

`reconcile.observe` reads, `decide` decides, `reconcile.act` writes; nothing here does I/O, so every branch is
a row of a table test (tests/test_decide.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from legistra.api.spec import TrainingRun
from legistra.contract import FAILURE_REASONS, primary_metric
from legistra.memory import gpu_of, price_per_gpu_hour
from legistra.operator.attempts import AttemptPlan, attempt_limit, job_attempt, plan_attempt
from legistra.operator.backends import Backend
from legistra.operator.build import (
    build_children,
    kueue_warning,
    length_refusal,
    memory_refusal,
    object_storage,
    stall_seconds,
    storage_warning,
)
from legistra.operator.config import JobDefaults
from legistra.operator.status import (
    Accounting,
    JobState,
    container_restarts,
    desired_status,
    deterministic_failure,
    invalid_status,
    job_expires_at,
    job_state,
    keeps_pods_after_failure,
    preempted,
    progress_moved,
    restart_limit_reached,
    set_condition,
    stall,
    trainer_status_report,
    volume_problem,
    waiting_status,
)

# A Failed run with one of these reasons stays failed at its generation: only an edit tries again.
FINAL_REASONS = ("InvalidSpec", "InsufficientGPUMemory", "ChildCreateFailed", *FAILURE_REASONS)

Event = tuple[str, str, str]  # (type, reason, message)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Observed:
    """What one pass read, and nothing more (`reconcile.observe` reads lazily: pods only when worth reading, the
    PVC only when the pods have waited, the applied spec only when the job's spec hash differs).

    `job`: the run's job (None: none, or not read because the pass ends before it matters); `pods`: None when not
    read; `report`: the trainer's report from MLflow; `private_uri`: the run's own MLflow, which the operator
    cannot read; `refused`: spec fields changed since the job was built; `create_failed`: a child the API refused
    in this pass (the pass then only records the refusal)."""

    body: Mapping[str, Any]
    at: dt.datetime
    run: TrainingRun | None = None
    invalid: Sequence[str] = ()
    backend: Backend | None = None
    backend_reason: tuple[str, str] | None = None  # why this backend (or why none): (reason, message)
    job: Mapping[str, Any] | None = None
    owned: bool = True
    report: Mapping[str, Any] | None = None
    private_uri: str | None = None
    pods: Sequence[Mapping[str, Any]] | None = None
    refused: Sequence[str] = ()
    pvc: Mapping[str, Any] | None = None
    create_failed: str | None = None

    @property
    def current(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})

    @property
    def generation(self) -> int | None:
        return (self.body.get("metadata") or {}).get("generation")


@dataclass(frozen=True)
class WriteStatus:
    """Write `status` over the run's (when it differs from what is there), then post `events`."""

    status: dict[str, Any]
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class CreateChildren:
    """Create the run's children in order, the job last; each create tolerates "already exists"."""

    objects: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class PatchJob:
    patch: dict[str, Any]


@dataclass(frozen=True)
class DeleteJob:
    propagation: str = "Background"


Action = WriteStatus | CreateChildren | PatchJob | DeleteJob


@dataclass(frozen=True)
class Plan:
    """The outcome of a decision. `actions` run in order; `phase`: the run's phase once they have; `job`: the job
    whose state the status mirrors (None when none); `requeue_after`: seconds until the run is due again by
    itself (a retry's start, a finished TrainJob's deletion), None when only events or the resync wake it."""

    phase: str
    actions: tuple[Action, ...] = ()
    job: Mapping[str, Any] | None = None
    requeue_after: float | None = None
    deleting: bool = False  # the run is being deleted: nothing to do, nor to remember

    @property
    def status(self) -> dict[str, Any] | None:
        """The last status this plan writes, if any."""
        return next((a.status for a in reversed(self.actions) if isinstance(a, WriteStatus)), None)


def final_failure(current: Mapping[str, Any], generation: int | None) -> bool:
    """Refused or failed for good at this generation; an edit retries."""
    return current.get("phase") == "Failed" and current.get("observedGeneration") == generation and any(
        c.get("type") == "Failed" and c.get("reason") in FINAL_REASONS for c in current.get("conditions", []))


def _refuse(seen: Observed, problems: Sequence[str], reason: str) -> Plan:
    """Failed with the precise problems, and no job (or no more children)."""
    base = seen.current
    new = invalid_status(base, problems, iso(seen.at), seen.generation, reason=reason)
    return Plan("Failed", (WriteStatus(new, _changed(base, new, ("Warning", reason, new["message"]))),))


def _wait(seen: Observed, reason: str, problem: str) -> Plan:
    """Pending until a reason that goes away by itself is gone (waiting_status), and no job yet."""
    new = waiting_status(seen.current, reason, problem, iso(seen.at), seen.generation)
    return Plan("Pending", (WriteStatus(new, _changed(seen.current, new, ("Warning", reason, problem))),))


def _over(seen: Observed, first: tuple[Action, ...] = ()) -> Plan:
    """The run is finished and keeps its status; only a wait for its job's deletion (jobDeleteAt) ends."""
    kept = {k: v for k, v in seen.current.items() if k != "jobDeleteAt"}
    return Plan(str(seen.current.get("phase", "")), (*first, WriteStatus(kept)), seen.job)


def _changed(old: Mapping[str, Any], new: Mapping[str, Any], *events: Event) -> tuple[Event, ...]:
    return events if new != old else ()


def _seconds_until(at: dt.datetime, *due: dt.datetime | None) -> float | None:
    times = [t for t in due if t is not None]
    return max(0.0, (min(times) - at).total_seconds()) if times else None


def decide(seen: Observed, defaults: JobDefaults) -> Plan:
    """The plan for one pass: the gates that stop a run before any job, then the attempt and its job."""
    current = seen.current
    if (seen.body.get("metadata") or {}).get("deletionTimestamp"):
        return Plan(str(current.get("phase", "")), deleting=True)
    if seen.invalid:
        # The CRD schema lets through what CEL cannot express (or an older CRD is installed): refuse, no job.
        return _refuse(seen, seen.invalid, "InvalidSpec")
    if seen.create_failed is not None:
        # Forbidden (RBAC), Invalid (admission webhook, quota), missing CRD: retrying will not help.
        return _refuse(seen, [seen.create_failed], "ChildCreateFailed")
    if final_failure(current, seen.generation):
        return Plan("Failed")
    if seen.backend is None:
        return _wait(seen, "BackendUnavailable", seen.backend_reason[1] if seen.backend_reason else
                     "no job kind is available")
    if not seen.owned:
        # A job of its name that belongs to something else: never adopt, mirror, stop or delete it. Often an earlier
        # run of this name, deleted and applied again before its job was collected: wait until it is gone.
        name = seen.body["metadata"]["name"]
        return _wait(seen, "JobNameTaken", f"a {seen.backend.kind} named {name} exists and is not owned by this "
                     "TrainingRun; this run starts once that job is gone (the operator checks again at each resync)")
    assert seen.run is not None
    return _decide_attempt(seen, seen.run, seen.backend, defaults)


def _decide_attempt(seen: Observed, run: TrainingRun, backend: Backend, defaults: JobDefaults) -> Plan:
    """Which attempt runs, and what happens to the job on hand: stop it, replace it, make it, or mirror it."""
    current, job, pods, rp = seen.current, seen.job, seen.pods, run.spec.run_policy
    name = seen.body["metadata"]["name"]
    moved = progress_moved(current, seen.report)
    common = _common(seen, run, defaults)
    restarts = container_restarts(pods, name, backend) if pods is not None else None
    failure = deterministic_failure(pods, name, backend) if pods is not None else None
    if job is not None and failure is not None:
        # Did the trainer say a retry would fail the same way (bad data, no such model, a NaN)? Its pods would only
        # crash-loop until backoffLimit (and a Failed job's under cleanPodPolicy None for ever): stop them now.
        new = desired_status(current, job, **common, report=seen.report, attempt=job_attempt(job),
                             max_attempts=rp.max_attempts, failure=failure, restarts=restarts, progressed=moved)
        return Plan("Failed", (WriteStatus(new, transitions(current, new)), DeleteJob()), job)
    ended: JobState | None = None
    running = job is not None and job_state(job, rp.suspend).phase == "Running"
    if running and restarts is not None and backend.name == "trainjob":
        ended = restart_limit_reached(restarts, rp.backoff_limit)
    # A hung collective or data loader: the job runs and its progress stands still (from the MLflow report or a
    # TrainJob's trainerStatus). Stopped like a spent backoffLimit: the next attempt resumes from its checkpoint.
    stalled, deadline = stall(current, running and ended is None, moved, stall_seconds(run.spec, defaults), seen.at)
    ended = ended or stalled
    was_preempted = pods is not None and preempted(pods, name, backend)
    plan = plan_attempt(current, job, rp.max_attempts, rp.retry_delay_seconds, seen.at, was_preempted,
                        stopped=ended is not None)
    if plan.action == "finished":  # e.g. its job expired by TTL
        return _over(seen)
    if plan.action == "wait" and job is None:
        # Retrying, and the failed job already expired (TTL): the status, retryAt included, stays as it is until
        # the retry is due.
        return Plan(str(current.get("phase", "")), requeue_after=_seconds_until(seen.at, plan.retry_at))
    first: tuple[Action, ...] = ()
    if plan.action in ("retry", "replace"):
        # Status first: should the operator die right after, the job's older attempt number tells the next
        # reconcile to replace it, and one failure is never retried twice.
        counted = {**current, "preemptions": int(current.get("preemptions") or 0) + 1} if plan.preempted else current
        # `ended`: an attempt the operator ends now (stalled, past backoffLimit) is retried at once when
        # retryDelaySeconds is 0; its Stalled condition still says why.
        new = desired_status(counted, job, **common, attempt=plan.attempt,
                             max_attempts=attempt_limit(counted, rp.max_attempts), replacing=True, ended=ended)
        started = ("Normal", "AttemptStarted", new["message"]) if plan.action == "retry" else None
        first = (WriteStatus(new, (*(_changed(current, new, started) if started else ()),
                                   *transitions(current, new))),)
        if job is not None:
            # Foreground: the job stays (terminating) until its pods are gone, so the next job's pods, which reuse
            # their names, cannot start beside them. Its deletion event brings us back.
            return Plan(new["phase"], (*first, DeleteJob("Foreground")), job)
        seen = replace(seen, body={**seen.body, "status": new})
    if job is None:
        return _create(seen, run, backend, defaults, plan, first)
    return _mirror(seen, run, backend, defaults, plan, job, restarts, ended, moved, deadline)


def _common(seen: Observed, run: TrainingRun, defaults: JobDefaults) -> dict[str, Any]:
    """The `desired_status` arguments every status of a pass shares."""
    return {"generation": seen.generation, "now": iso(seen.at), "suspended_in_spec": run.spec.run_policy.suspend,
            "metric": primary_metric(run.spec), "accounting": accounting(run, defaults)}


def accounting(run: TrainingRun, defaults: JobDefaults) -> Accounting:
    """What the run's GPU time is counted in: nodes x gpusPerNode, at the operator's price for its GPU product."""
    r = run.spec.resources
    return Accounting(r.nodes * r.gpus_per_node,
                      price_per_gpu_hour(defaults.gpu_prices, gpu_of(run.spec, defaults.gpu_product)))


def _create(seen: Observed, run: TrainingRun, backend: Backend, defaults: JobDefaults, plan: AttemptPlan,
            first: tuple[Action, ...]) -> Plan:
    """No job: refuse what cannot fit before any GPU is spent, else make the attempt's children, the job last."""
    too_long = length_refusal(run)
    if too_long is not None:  # deterministic: the model would fail at its first long batch
        return _with_first(first, _refuse(seen, [too_long], "InvalidSpec"))
    misfit = memory_refusal(run, defaults)
    if misfit is not None:  # deterministic: no GPU is spent finding out that it runs out of memory
        return _with_first(first, _refuse(seen, [misfit], "InsufficientGPUMemory"))
    children = tuple(build_children(run, defaults, plan.attempt, backend.name))
    job = next(c for c in children if c["kind"] == backend.kind)
    mirrored = _mirror(seen, run, backend, defaults, plan, job, None, None, False, None, created=True)
    return Plan(mirrored.phase, (*first, CreateChildren(children), *mirrored.actions), job, mirrored.requeue_after)


def _platform_conditions(status: dict[str, Any], seen: Observed, run: TrainingRun, backend: Backend
                         ) -> dict[str, Any]:
    """At a job's creation, the status says which job kind the run got and why (BackendSelected), and warns when
    Kueue may never admit it (QueueIntegration): Kueue enables its kubeflow.org/pytorchjob integration only when
    configured (off by default since kueue#12606), so a queued PyTorchJob can wait for ever. A warning, not a
    refusal: many clusters do configure it. A run whose job an operator without these conditions created gets
    them once, at its next pass (reason Recorded)."""
    now, generation, conditions = iso(seen.at), seen.generation, list(status.get("conditions") or [])
    if seen.backend_reason is not None:
        conditions = set_condition(conditions, "BackendSelected", "True", *seen.backend_reason, now, generation)
    queue = run.spec.resources.queue_name
    if queue and backend.name == "pytorchjob":
        conditions = set_condition(conditions, "QueueIntegration", "Unknown", "PyTorchJobIntegrationOptIn",
                                   kueue_warning(queue), now, generation)
    return {**status, "conditions": conditions}


def _with_first(first: tuple[Action, ...], plan: Plan) -> Plan:
    return Plan(plan.phase, (*first, *plan.actions), plan.job, plan.requeue_after)


def _mirror(seen: Observed, run: TrainingRun, backend: Backend, defaults: JobDefaults, plan: AttemptPlan,
            job: Mapping[str, Any], restarts: int | None, ended: JobState | None, moved: bool,
            stall_deadline: dt.datetime | None, created: bool = False) -> Plan:
    """Mirror the job (and the trainer's report) into the status; set the job's suspend; stop a job whose attempt
    is over; delete a finished TrainJob at its TTL. `created`: the job is being made in this pass."""
    current, rp, at = seen.current, run.spec.run_policy, seen.at
    actions: list[Action] = []
    suspend = backend.suspend_to_write(job, rp.suspend)
    if suspend is not None:
        patch = backend.suspend_patch(suspend)
        actions.append(PatchJob(patch))
        job = merged(job, patch)
    # Trainer v2 has no ttlSecondsAfterFinished: the operator deletes a finished TrainJob itself.
    expires = job_expires_at(job, backend, rp.ttl_seconds_after_finished)
    if expires is not None and at >= expires:
        return _over(seen, (*actions, DeleteJob()))
    report = seen.report or trainer_status_report(job)  # Trainer v2 reports progress itself (TrainJobStatus gate)
    if seen.private_uri is not None:
        report = {**(report or {}), "mlflow": {"note": (
            f"not read by the operator: {seen.private_uri} takes this run's own credentials (spec.tracking.mlflow."
            "credentialsSecret) and the operator reads no Secrets; progress comes from the job")}}
    storage: tuple[str, str] | None = None
    warning = storage_warning(run, defaults)
    if warning is not None:
        storage = ("NoReadWriteMany", warning)
    elif not object_storage(run, defaults) and (pending := volume_problem(seen.pvc, at)):
        storage = ("VolumePending", pending)
    new = desired_status(current, job, **_common(seen, run, defaults), refused=seen.refused, report=report,
                         attempt=plan.attempt, max_attempts=attempt_limit(current, rp.max_attempts),
                         retry_at=iso(plan.retry_at) if plan.retry_at is not None else None,
                         replacing=job_attempt(job) < plan.attempt, job_delete_at=iso(expires) if expires else None,
                         storage=storage, restarts=restarts, ended=ended, progressed=moved)
    if created or _condition(new, "BackendSelected") is None:
        new = _platform_conditions(new, seen, run, backend)
    actions.append(WriteStatus(new, transitions(current, new)))
    if ended is not None or keeps_pods_after_failure(job):
        # The attempt is over and in the status (Retrying or Failed). Delete the job now: a TrainJob past the run's
        # backoffLimit would restart its nodes up to its Job's own limit (6), a stalled job would hold its GPUs
        # doing nothing, and a Failed PyTorchJob's crashed containers restart for ever under cleanPodPolicy None.
        # The retry, due at retryAt, does not need it.
        actions.append(DeleteJob())
    return Plan(new["phase"], tuple(actions), job, _seconds_until(at, plan.retry_at, expires, stall_deadline))


def merged(obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` with a JSON merge patch (RFC 7386) applied: the job as the API server will hold it after `PatchJob`."""
    out = dict(obj)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


# Conditions worth a Warning event when they turn to this status (CheckpointStorage: also on a new reason).
WARN_WHEN = (("SpecChangeRefused", "True"), ("QueueIntegration", "Unknown"), ("Stalled", "True"))


def transitions(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[Event, ...]:
    """The events a status change is worth: a new phase, a refused spec change, a queued PyTorchJob, a stall, a
    checkpoint-storage problem."""
    events: list[Event] = []
    before, after = old.get("phase"), new.get("phase")
    if before != after and after != "Pending":
        events.append(("Warning" if after == "Failed" else "Normal", f"Run{after}", str(new.get("message") or after)))
    for kind, status in WARN_WHEN:
        was, now = _condition(old, kind), _condition(new, kind)
        if now and now["status"] == status and (not was or was["status"] != status):
            events.append(("Warning", kind, now["message"]))
    old_storage, new_storage = _condition(old, "CheckpointStorage"), _condition(new, "CheckpointStorage")
    if new_storage and new_storage["status"] == "False" and (
            not old_storage or (old_storage["status"], old_storage["reason"]) != ("False", new_storage["reason"])):
        events.append(("Warning", new_storage["reason"], new_storage["message"]))
    return tuple(events)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)
