"""Pure decisions: PyTorchJob or TrainJob status (+ trainer report) -> TrainingRun status."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legistra.contract import MUTABLE_RUN_POLICY, PREEMPTED, parse_termination_message
from legistra.operator.backends import BACKENDS, QUEUE_LABEL, Backend, backend_of

# As users write them: "spec.runPolicy.suspend, maxAttempts and retryDelaySeconds".
MUTABLE_FIELDS = "spec.runPolicy." + ", ".join(MUTABLE_RUN_POLICY[:-1]) + " and " + MUTABLE_RUN_POLICY[-1]


@dataclass(frozen=True)
class JobState:
    phase: str
    reason: str
    message: str


def _true(conditions: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    for c in conditions:
        if c.get("type") == kind and str(c.get("status")) == "True":
            return c
    return None


def failed_replicas(replica_statuses: Mapping[str, Any] | None) -> str:
    parts = []
    for name, st in sorted((replica_statuses or {}).items()):
        failed = int((st or {}).get("failed", 0) or 0)
        if failed:
            parts.append(f"{name} replica failed ({failed} pod{'s' if failed > 1 else ''})")
    return "; ".join(parts)


def _trainer_containers(pods: Sequence[Mapping[str, Any]], job_name: str,
                        backend: Backend) -> Iterator[Mapping[str, Any]]:
    """The status of each trainer container of the job's pods. Pods of other jobs are ignored even if a list
    returned them."""
    for pod in pods:
        if ((pod.get("metadata") or {}).get("labels") or {}).get(backend.pod_label) != job_name:
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") == backend.container:
                yield cs


def _trainer_messages(pods: Sequence[Mapping[str, Any]], job_name: str, backend: Backend) -> Iterator[str]:
    """Termination messages of the job's terminated trainer containers, now or before their last restart."""
    for cs in _trainer_containers(pods, job_name, backend):
        for state in (cs.get("state"), cs.get("lastState")):
            message = ((state or {}).get("terminated") or {}).get("message")
            if message:
                yield str(message)


def deterministic_failure(pods: Sequence[Mapping[str, Any]], job_name: str,
                          backend: Backend = BACKENDS["pytorchjob"]) -> JobState | None:
    """A failure the trainer declared deterministic (bad data, a model that cannot load), read from the
    termination message of any terminated trainer container of the job's pods."""
    for message in _trainer_messages(pods, job_name, backend):
        parsed = parse_termination_message(message)
        if parsed is not None:
            return JobState("Failed", parsed[0], parsed[1])
    return None


def preempted(pods: Sequence[Mapping[str, Any]], job_name: str, backend: Backend = BACKENDS["pytorchjob"]) -> bool:
    """Whether the job's trainer stopped on a termination signal after saving (the Preempted message), so
    that its failure is the cluster's doing, not the run's."""
    return any(parse_termination_message(m, (PREEMPTED,)) is not None
               for m in _trainer_messages(pods, job_name, backend))


VOLUME_GRACE_SECONDS = 60  # a claim is bound within seconds where a class can provide it


def parse_time(text: Any) -> dt.datetime | None:
    """An RFC 3339 time from a status or condition (UTC when it names no zone); None when it is not one."""
    try:
        t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def volume_worth_checking(job: Mapping[str, Any], suspended_in_spec: bool, now: dt.datetime) -> bool:
    """Whether to GET the checkpoint PVC: the job's pods have been pending for a while (no request otherwise)."""
    created = parse_time((job.get("metadata") or {}).get("creationTimestamp"))
    return (not suspended_in_spec and job_state(job, False).phase == "Pending" and created is not None
            and (now - created).total_seconds() >= VOLUME_GRACE_SECONDS)


def volume_problem(pvc: Mapping[str, Any] | None, now: dt.datetime) -> str | None:
    """Why a checkpoint PVC is still unbound a minute after its creation, and what to do; None if it is fine."""
    if not pvc:
        return None
    phase = (pvc.get("status") or {}).get("phase")
    created = parse_time((pvc.get("metadata") or {}).get("creationTimestamp"))
    if phase == "Bound" or created is None or (now - created).total_seconds() < VOLUME_GRACE_SECONDS:
        return None
    spec = pvc.get("spec") or {}
    mode = "ReadWriteMany" if "ReadWriteMany" in (spec.get("accessModes") or []) else "ReadWriteOnce"
    cls = spec.get("storageClassName")
    source = f"storage class {cls!r}" if cls else "the cluster's default storage class (if it has one)"
    return (f"checkpoint volume {pvc['metadata'].get('name')} is still {phase or 'Pending'}: no {mode} volume "
            f"from {source}; set spec.checkpoints.uri to an s3:// prefix (no volume needed), or the operator's "
            f"checkpoints.storageClassName to a class that provides {mode}")


def job_may_have_failed_pods(job: Mapping[str, Any] | None) -> bool:
    """Whether a pod of the job has failed (so its termination message is worth a LIST of pods)."""
    status = (job or {}).get("status") or {}
    conditions = status.get("conditions") or []
    if _true(conditions, "Failed") or _true(conditions, "Restarting"):
        return True
    return any(int(j.get("failed") or 0) for j in status.get("jobsStatus") or [])  # a TrainJob's failed node


def trainer_restarted(current: Mapping[str, Any], report: Mapping[str, Any] | None) -> bool:
    """Whether rank 0 announced a start that the run's status has not seen (contract.TAG_TRAINER_STARTED). Under
    `restartPolicy: OnFailure` the kubelet restarts a crashed container in place: training-operator v1.9.4 sets
    `Restarting` only for a pod in phase Failed, which such a pod never reaches, and a TrainJob's Job counts the
    restart nowhere in the TrainJob. The trainer's own start is the one cheap sign that it crashed."""
    started = (report or {}).get("trainerStarted")
    return bool(started) and started != current.get("trainerStartedAt")


def pods_worth_reading(job: Mapping[str, Any], current: Mapping[str, Any], suspended_in_spec: bool,
                       on_event: bool = False, report: Mapping[str, Any] | None = None) -> bool:
    """Whether to LIST the job's pods for a deterministic failure and the restarts: after a pod failed (a
    Restarting/Failed job), while the job runs and the run has reported no progress yet, and when the trainer
    (`report`, from MLflow) has started again since the last look. Bad data and missing models fail before the
    first step, and with `restartPolicy: OnFailure` the kubelet restarts such a container in place without any
    job condition; a failure later in training (a NaN) restarts it the same way, and its new start says so. A
    Pending job's trainer has not started: nothing to find (a run may wait hours for GPUs).

    `on_event`: the job is its own watch event's. A healthy job's event is its creation or start, too early for
    a failed pod; the resync pass (which reads the job afresh) reads the pods then. At 10,000 starting jobs
    that is 10,000 LISTs of pods fewer on the API server."""
    if job_may_have_failed_pods(job):
        return True
    running = job_state(job, suspended_in_spec).phase == "Running"  # never while suspended in the spec
    if running and trainer_restarted(current, report):
        return True
    return not on_event and running and not current.get("progress")


def container_restarts(pods: Sequence[Mapping[str, Any]], job_name: str,
                       backend: Backend = BACKENDS["pytorchjob"]) -> int:
    """How often the kubelet restarted the job's trainer containers in place: their restartCount, summed over the
    job's pods (what training-operator v1.9.4's PastBackoffLimit, pkg/core/job.go, holds against backoffLimit)."""
    return sum(max(0, int(cs.get("restartCount") or 0)) for cs in _trainer_containers(pods, job_name, backend))


def restart_limit_reached(restarts: int, backoff_limit: int) -> JobState | None:
    """A TrainJob whose trainer restarted `backoffLimit` times: the attempt is over, as a PyTorchJob's would be
    (PastBackoffLimit: restarts >= limit, or any restart for a limit of 0). Trainer v2.3's runtimePatches cannot
    set its Job's backoffLimit, so the operator holds the run's limit itself; None while under it."""
    if restarts == 0 or (backoff_limit and restarts < backoff_limit):
        return None
    return JobState("Failed", "BackoffLimitExceeded",
                    f"the trainer restarted {restarts} time{'s' if restarts > 1 else ''} in place, reaching "
                    f"runPolicy.backoffLimit ({backoff_limit}); the operator stopped the TrainJob")


def progress_moved(current: Mapping[str, Any], report: Mapping[str, Any] | None) -> bool:
    """Whether the trainer's report shows progress the status has not seen (a new step, or a new percentage from a
    TrainJob's trainerStatus, which has no steps), or a new start of the trainer (a restart in place counts as
    life: it reloads and resumes before its next step)."""
    if not report:
        return False
    if trainer_restarted(current, report):
        return True
    new, old = report.get("progress") or {}, current.get("progress") or {}
    if not new:
        return False
    key = "step" if "step" in new else "percent"
    return new.get(key) != old.get(key)


def _span(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m" if seconds % 60 == 0 \
        else f"{seconds}s"


def stall(current: Mapping[str, Any], running: bool, moved: bool, timeout: int, now: dt.datetime
          ) -> tuple[JobState | None, dt.datetime | None]:
    """(the verdict, None) when a running attempt's progress has not moved for `timeout` seconds, counted from its
    last movement (status.progressedAt, or now when it moved in this pass); else (None, when it would be). No
    verdict and no deadline before the first progress report, while not running, or with a timeout of 0."""
    if not timeout or not running:
        return None, None
    since = now if moved else parse_time(current.get("progressedAt"))
    if since is None:
        return None, None
    deadline = since + dt.timedelta(seconds=timeout)
    if now < deadline:
        return None, deadline
    step = (current.get("progress") or {}).get("step")
    at = f"step {step}" if step is not None else f"{(current.get('progress') or {}).get('percent', 0)}%"
    return JobState("Failed", "Stalled",
                    f"no progress for {_span(timeout)} (last at {at}, {since.isoformat(timespec='seconds')}; "
                    "spec.training.stallTimeout): a hung collective or data loader; the operator stopped the job"), None


@dataclass(frozen=True)
class Accounting:
    """What a run's GPU time is counted in: the GPUs its job requests (nodes x gpusPerNode) and, when the
    operator has one for its GPU product, the price per GPU-hour."""

    gpus: int
    price: float | None = None


def account(usage: Mapping[str, Any] | None, was: str | None, attempt: int, phase: str, acc: Accounting,
            now: str) -> dict[str, Any] | None:
    """status.usage after a pass from phase `was` to `phase` at `now` (RFC 3339): a stretch of Running starts when
    the phase becomes Running and is added to `attempt`'s and the run's totals when it stops being. It changes only
    at those transitions, so it never costs a status write of its own (a run already Running when the operator
    first counts starts counting at its next transition). None while the run has never been seen starting to run."""
    if not usage and (phase != "Running" or was == "Running"):
        return None
    u: dict[str, Any] = {"gpus": acc.gpus, "gpuSeconds": 0.0, "wallSeconds": 0.0, "attempts": [], **(usage or {})}
    if u.get("runningSince") and phase != "Running":
        wall = running_seconds(u, now)
        attempts = [dict(a) for a in u.get("attempts") or []]
        entry = next((a for a in attempts if a.get("attempt") == attempt), None)
        if entry is None:
            entry = {"attempt": attempt, "gpus": int(u["gpus"]), "wallSeconds": 0.0, "gpuSeconds": 0.0}
            attempts.append(entry)
        for total in (entry, u):  # the attempt's and the run's
            total["wallSeconds"] = round(float(total["wallSeconds"]) + wall, 1)
            total["gpuSeconds"] = round(float(total["gpuSeconds"]) + wall * int(u["gpus"]), 1)
        u["attempts"] = attempts
        u.pop("runningSince", None)
    elif not u.get("runningSince") and phase == "Running" and was != "Running":
        u["runningSince"] = now
        u["gpus"] = acc.gpus
    if acc.price is not None:
        u["estimatedCost"] = round(float(u["gpuSeconds"]) / 3600 * acc.price, 2)
    return u


def running_seconds(usage: Mapping[str, Any], now: str | dt.datetime) -> float:
    """Seconds of the stretch of Running still open in `usage` (status.usage.runningSince) up to `now`; 0 if none."""
    since = parse_time(usage.get("runningSince")) if usage.get("runningSince") else None
    at = now if isinstance(now, dt.datetime) else parse_time(now)
    return max(0.0, (at - since).total_seconds()) if since is not None and at is not None else 0.0


def gpu_seconds(status: Mapping[str, Any] | None, now: dt.datetime | None = None) -> float:
    """A run's GPU-seconds: its finished stretches (status.usage.gpuSeconds), plus, given `now`, the open one."""
    usage = (status or {}).get("usage") or {}
    done = float(usage.get("gpuSeconds") or 0)
    return done + running_seconds(usage, now) * int(usage.get("gpus") or 0) if now is not None else done


def keeps_pods_after_failure(job: Mapping[str, Any]) -> bool:
    """A Failed PyTorchJob under cleanPodPolicy None keeps its pods (training-operator v1.9.4's
    DeletePodsAndServices returns early for a finished job), and under OnFailure the kubelet restarts their
    crashed containers for ever: the GPUs stay taken until the job is deleted."""
    if job.get("kind") == "TrainJob" or _pytorchjob_state(job, False).phase != "Failed":
        return False
    return (((job.get("spec") or {}).get("runPolicy") or {}).get("cleanPodPolicy") or "None") == "None"


def trainjob_state(job: Mapping[str, Any], suspended_in_spec: bool) -> JobState:
    """Phase of a Trainer v2 TrainJob: conditions Complete / Failed / Suspended, then its jobsStatus."""
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    jobs = status.get("jobsStatus") or []
    if c := _true(conditions, "Complete"):
        return JobState("Succeeded", "JobSucceeded", str(c.get("message") or "training finished"))
    if c := _true(conditions, "Failed"):
        failed = "; ".join(f"{j.get('name')} job: {j['failed']} failed" for j in jobs if int(j.get("failed") or 0))
        msg = str(c.get("message") or "the TrainJob failed")
        return JobState("Failed", str(c.get("reason") or "TrainJobFailed"), f"{msg} ({failed})" if failed else msg)
    if _true(conditions, "Suspended") or suspended_in_spec:
        return JobState("Suspended", "JobSuspended", "the job is suspended; checkpoints are kept")
    # JobSet counts a child Job `active` while it has pods at all, pending ones included (Job.status.active), and
    # `ready` once its ready pods reach its parallelism (jobset v0.12, ReplicatedJobStatus). Trainer v2.3 runs all
    # nodes as one Job: ready means every node's pod is up; active alone means some still wait (for GPUs, a
    # volume, an image), which is Pending, not Running.
    if any(int(j.get("ready") or 0) for j in jobs):
        return JobState("Running", "JobRunning", "training")
    if any(int(j.get("active") or 0) for j in jobs):
        return JobState("Pending", "NodesStarting", "waiting for every node's pod to be scheduled and ready")
    return JobState("Pending", "JobCreated", "waiting for nodes to be scheduled")


def trainer_status_report(job: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Progress and metrics from a TrainJob's `status.trainerStatus` (Trainer's TrainJobStatus feature gate),
    in the shape of the MLflow report; used when MLflow says nothing."""
    ts = ((job or {}).get("status") or {}).get("trainerStatus") or {}
    out: dict[str, Any] = {}
    if ts.get("progressPercentage") is not None:
        out["progress"] = {"percent": max(0, min(100, int(ts["progressPercentage"])))}
    metrics = {}
    for m in ts.get("metrics") or []:
        try:
            metrics[str(m["name"])] = float(m["value"])
        except (KeyError, TypeError, ValueError):
            continue
    if metrics:
        out["metrics"] = metrics
    return out or None


def finished_at(job: Mapping[str, Any]) -> str | None:
    """When a TrainJob reached Complete or Failed (RFC 3339), from its condition."""
    conditions = (job.get("status") or {}).get("conditions") or []
    c = _true(conditions, "Complete") or _true(conditions, "Failed")
    return str(c["lastTransitionTime"]) if c and c.get("lastTransitionTime") else None


def job_expires_at(job: Mapping[str, Any], backend: Backend, ttl: int | None) -> dt.datetime | None:
    """When the operator deletes a finished TrainJob (runPolicy.ttlSecondsAfterFinished); None when never (a
    PyTorchJob's TTL is the training-operator's, or no TTL, or not finished)."""
    done = finished_at(job) if backend.name == "trainjob" and ttl is not None else None
    if done is None or ttl is None:
        return None
    return dt.datetime.fromisoformat(done.replace("Z", "+00:00")) + dt.timedelta(seconds=ttl)


def job_state(job: Mapping[str, Any] | None, suspended_in_spec: bool) -> JobState:
    """Phase of a PyTorchJob (or TrainJob) from its conditions; terminal conditions win over transient ones. A job
    in a Kueue queue that is suspended while its run is not waits for admission: Pending, reason Queued."""
    if job is None:
        return JobState("Pending", "JobPending", "the job is being created")
    state = trainjob_state(job, suspended_in_spec) if job.get("kind") == "TrainJob" else \
        _pytorchjob_state(job, suspended_in_spec)
    queue = (job.get("metadata", {}).get("labels") or {}).get(QUEUE_LABEL)
    if queue and not suspended_in_spec and state.phase in ("Suspended", "Pending") and \
            backend_of(job).suspended(job):
        return JobState("Pending", "Queued", f"queued in Kueue's {queue}: the job starts when Kueue admits it")
    return state


def _pytorchjob_state(job: Mapping[str, Any], suspended_in_spec: bool) -> JobState:
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    if c := _true(conditions, "Succeeded"):
        return JobState("Succeeded", "JobSucceeded", str(c.get("message") or "training finished"))
    if c := _true(conditions, "Failed"):
        detail = failed_replicas(status.get("replicaStatuses"))
        msg = str(c.get("message") or "the PyTorchJob failed")
        return JobState("Failed", str(c.get("reason") or "JobFailed"), f"{msg} {detail}".strip())
    if _true(conditions, "Suspended") or suspended_in_spec:
        return JobState("Suspended", "JobSuspended", "the job is suspended; checkpoints are kept")
    if c := _true(conditions, "Restarting"):
        detail = failed_replicas(status.get("replicaStatuses"))
        return JobState("Running", "JobRestarting",
                        f"{c.get('message') or 'a replica is restarting'}; resuming from the last checkpoint"
                        + (f" ({detail})" if detail else ""))
    if _true(conditions, "Running"):
        return JobState("Running", "JobRunning", "training")
    if _true(conditions, "Created"):
        return JobState("Pending", "JobCreated", "waiting for pods to be scheduled")
    return JobState("Pending", "JobPending", "waiting for the training-operator")


def set_condition(
    conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str, now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Upsert a condition, keeping lastTransitionTime when its status did not change."""
    out = [dict(c) for c in conditions if c.get("type") != kind]
    previous = next((c for c in conditions if c.get("type") == kind), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    cond: dict[str, Any] = {"type": kind, "status": status, "reason": reason, "message": message,
                            "lastTransitionTime": since}
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: c["type"])


def key_metric(metrics: Mapping[str, float] | None, preferred: str | None) -> str | None:
    if not metrics:
        return None
    for name in (preferred, f"eval_{preferred}" if preferred else None):
        if name and name in metrics:
            return f"{name.removeprefix('eval_')}={metrics[name]:.4g}"
    return None


def desired_status(
    current: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    *,
    generation: int | None,
    now: str,
    suspended_in_spec: bool,
    refused: Sequence[str] = (),
    report: Mapping[str, Any] | None = None,
    metric: str | None = None,
    attempt: int = 1,
    max_attempts: int = 1,
    retry_at: str | None = None,
    replacing: bool = False,
    failure: JobState | None = None,
    job_delete_at: str | None = None,
    storage: tuple[str, str] | None = None,
    ended: JobState | None = None,
    restarts: int | None = None,
    progressed: bool = False,
    accounting: Accounting | None = None,
) -> dict[str, Any]:
    """The whole new status. `report` is what the trainer published (progress, metrics, MLflow, model).

    `attempt` of `max_attempts`: which PyTorchJob this is; `retry_at`: the failed job will be replaced then;
    `replacing`: the job on hand belongs to an earlier attempt and is being deleted (nothing to mirror).
    `failure`: the trainer declared the failure deterministic (`deterministic_failure`): Failed, no retry.
    `job_delete_at`: a finished TrainJob is deleted then (ttlSecondsAfterFinished, done by the operator).
    `storage`: (reason, message) of a checkpoint-storage problem (`volume_problem`, `build.storage_warning`).
    `ended`: the attempt is over although its job does not say so: the operator stops it (`restart_limit_reached`).
    `restarts`: the trainer's in-place restarts in this attempt, when its pods were read (`container_restarts`).
    `progressed`: the report shows progress the status has not seen (`progress_moved`): progressedAt is now.
    `accounting`: what GPU time is counted in (`account`); None leaves status.usage as it is.
    """
    state = run_state(job, suspended_in_spec, attempt, max_attempts, retry_at, replacing, failure, storage, ended)
    st: dict[str, Any] = {k: v for k, v in current.items() if k not in ("conditions", "retryAt", "jobDeleteAt")}
    st["phase"] = state.phase
    st["message"] = state.message
    st["observedGeneration"] = generation
    st["attempt"] = attempt
    if state.phase == "Retrying":
        st["retryAt"] = retry_at
    if job_delete_at is not None:
        st["jobDeleteAt"] = job_delete_at
    _mirror_job(st, job, replacing, restarts)
    if report:
        _mirror_report(st, report, state.phase == "Succeeded", metric)
    if replacing:
        st.pop("progressedAt", None)  # a new attempt's stall clock starts at its own first progress
    elif progressed:
        st["progressedAt"] = now
    if accounting is not None:
        usage = account(current.get("usage"), current.get("phase"), int(current.get("attempt") or attempt),
                        state.phase, accounting, now)
        if usage is not None:
            st["usage"] = usage
    conditions = _conditions(list(current.get("conditions") or []), state, job, st.get("jobName"), refused,
                             storage, now, generation)
    if ended is not None and ended.reason == "Stalled":
        conditions = set_condition(conditions, "Stalled", "True", "NoProgress", ended.message, now, generation)
    elif progressed and state.phase == "Running" and any(
            c.get("type") == "Stalled" and c.get("status") == "True" for c in conditions):
        conditions = set_condition(conditions, "Stalled", "False", "Progressing", "training progresses again", now,
                                   generation)
    st["conditions"] = conditions
    return st


def run_state(job: Mapping[str, Any] | None, suspended_in_spec: bool, attempt: int, max_attempts: int,
              retry_at: str | None, replacing: bool, failure: JobState | None, storage: tuple[str, str] | None,
              ended: JobState | None) -> JobState:
    """The run's phase, reason and message (see `desired_status` for the arguments)."""
    of = f"attempt {attempt} of {max_attempts}"
    if failure is not None:
        return JobState("Failed", failure.reason,
                        f"{failure.message} (not retried: another attempt would fail the same way)")
    if replacing:
        return JobState("Pending", "AttemptStarting",
                        f"{of}: replacing the failed {backend_of(job or {}).kind}; training resumes from the "
                        "last checkpoint")
    state = ended or job_state(job, suspended_in_spec)
    if state.phase == "Failed" and retry_at is not None:
        state = JobState("Retrying", "RetryScheduled", f"{of} failed: {state.message}; attempt {attempt + 1} "
                         f"starts at {retry_at} and resumes from the last checkpoint")
    elif max_attempts > 1 and state.phase == "Failed":
        state = JobState("Failed", state.reason, f"{of} failed: {state.message}")
    elif attempt > 1 and state.phase in ("Pending", "Running"):
        state = JobState(state.phase, state.reason, f"{of}: {state.message}")
    if storage is not None and storage[0] == "VolumePending" and state.phase == "Pending":
        state = JobState("Pending", storage[0], storage[1])  # the reason the pods wait, said plainly
    return state


def _mirror_job(st: dict[str, Any], job: Mapping[str, Any] | None, replacing: bool, restarts: int | None) -> None:
    """The job's name, kind, start and completion times, and the trainer's restarts, into the status `st`."""
    if replacing:
        st.pop("completionTime", None)
        st.pop("restarts", None)  # counted per attempt
        return
    if job is not None:
        st["jobName"] = job.get("metadata", {}).get("name")
        st["backend"] = backend_of(job).name
        js = job.get("status") or {}
        if js.get("startTime") and "startTime" not in st:  # the run started with its first attempt
            st["startTime"] = js["startTime"]
        if js.get("completionTime"):
            st["completionTime"] = js["completionTime"]
        else:
            st.pop("completionTime", None)
    if restarts is not None:
        st["restarts"] = restarts


def _mirror_report(st: dict[str, Any], report: Mapping[str, Any], succeeded: bool, metric: str | None) -> None:
    """The trainer's report (its start, progress, metrics, MLflow run, model) into the status `st`."""
    if report.get("trainerStarted"):
        st["trainerStartedAt"] = report["trainerStarted"]
    if report.get("progress"):
        prog = dict(report["progress"])
        total = int(prog.get("totalSteps") or 0)
        if total or "percent" not in prog:  # a trainerStatus report has only the percentage
            prog["percent"] = min(100, int(100 * int(prog.get("step") or 0) / total)) if total else 0
        if succeeded:
            prog["percent"] = 100
        st["progress"] = prog
    for key in ("metrics", "mlflow", "model"):
        if report.get(key):
            st[key] = report[key]
    km = key_metric(report.get("metrics"), metric)
    if km:
        st["keyMetric"] = km


def _conditions(conditions: list[dict[str, Any]], state: JobState, job: Mapping[str, Any] | None,
                job_name: str | None, refused: Sequence[str], storage: tuple[str, str] | None, now: str,
                generation: int | None) -> list[dict[str, Any]]:
    """Ready, JobCreated, Failed, CheckpointStorage and SpecChangeRefused, each kept when unchanged."""
    ready_reason = {"Succeeded": "Succeeded", "Failed": "Failed", "Suspended": "Suspended",
                    "Retrying": "RetryScheduled"}.get(state.phase, "Progressing")
    conditions = set_condition(conditions, "Ready", "True" if state.phase == "Succeeded" else "False",
                               ready_reason, state.message, now, generation)
    conditions = set_condition(conditions, "JobCreated", "True" if job is not None else "False",
                               "JobCreated" if job is not None else "JobPending",
                               f"{backend_of(job).kind} {job_name}" if job is not None else "not created yet",
                               now, generation)
    if state.phase == "Failed":
        conditions = set_condition(conditions, "Failed", "True", state.reason, state.message, now, generation)
    elif any(c.get("type") == "Failed" and c.get("status") == "True" for c in conditions):
        # maxAttempts was raised after the run failed: a new attempt clears the verdict.
        conditions = set_condition(conditions, "Failed", "False", "NewAttempt", state.message, now, generation)
    if storage is not None:
        conditions = set_condition(conditions, "CheckpointStorage", "False", storage[0], storage[1], now, generation)
    elif any(c["type"] == "CheckpointStorage" and c["status"] == "False" for c in conditions):
        conditions = set_condition(conditions, "CheckpointStorage", "True", "Available",
                                   "the checkpoint storage is available", now, generation)
    if refused:
        conditions = set_condition(
            conditions, "SpecChangeRefused", "True", "ImmutableAfterStart",
            "changes to " + ", ".join(refused) + " cannot be applied to a started run; only "
            f"{MUTABLE_FIELDS} can change. Create a new TrainingRun instead.", now, generation)
    elif any(c["type"] == "SpecChangeRefused" for c in conditions):
        conditions = set_condition(conditions, "SpecChangeRefused", "False", "SpecMatchesJob",
                                   "the spec matches the running job", now, generation)
    return conditions


# Lookups of the trainer's report for a run that succeeded without a model in its status (MLflow down, or a
# run without tracking): bounded, so such a run stops costing requests instead of being polled forever.
MAX_REPORT_LOOKUPS = 5


def needs_resync(status: Mapping[str, Any], generation: int | None, lookups: int) -> bool:
    """Whether the resync loop should reconcile a run: not when it is finished (its job terminal, Succeeded or
    Failed, and its generation observed), except for a bounded number of late lookups of a missing model."""
    if status.get("observedGeneration") != generation:
        return True
    phase = status.get("phase")
    if status.get("jobDeleteAt"):
        return True  # a finished TrainJob waits for its TTL deletion
    if phase == "Failed":
        return False
    if phase == "Succeeded":
        return not status.get("model") and lookups < MAX_REPORT_LOOKUPS
    return True


def waiting_status(current: Mapping[str, Any], reason: str, problem: str, now: str,
                   generation: int | None) -> dict[str, Any]:
    """The run cannot start yet, for a reason that goes away by itself (BackendUnavailable: its job kind's CRD
    is not installed yet; JobNameTaken: a job of its name belongs to another object, e.g. an earlier run of the
    same name still being deleted): Pending, not Failed, and it starts once the reason is gone."""
    conditions = set_condition(list(current.get("conditions") or []), "Ready", "False", reason,
                               problem, now, generation)
    return {**{k: v for k, v in current.items() if k != "conditions"}, "phase": "Pending", "message": problem,
            "observedGeneration": generation, "conditions": conditions}


def invalid_status(current: Mapping[str, Any], problems: Sequence[str], now: str,
                   generation: int | None, reason: str = "InvalidSpec") -> dict[str, Any]:
    """A run the operator cannot start (a bad spec, a child the API refuses): Failed, precise, no job."""
    message = "; ".join(problems)
    conditions = set_condition(list(current.get("conditions") or []), "Ready", "False", reason,
                               message, now, generation)
    conditions = set_condition(conditions, "Failed", "True", reason, message, now, generation)
    return {**{k: v for k, v in current.items() if k != "conditions"}, "phase": "Failed", "message": message,
            "observedGeneration": generation, "conditions": conditions}

