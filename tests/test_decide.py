"""The reconcile decision as a table: one row per branch of `decide`, from what was observed to the plan.

No API server and no emulator: `decide` is pure, so each row states the observation and checks the plan's phase,
its actions in order (writes, creates, patches, deletes), the events a write posts and the requeue time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from kit.objects import run_doc
from legistra.api.validation import parse_training_run
from legistra.operator.attempts import ATTEMPT_ANNOTATION
from legistra.operator.backends import BACKENDS
from legistra.operator.config import JobDefaults
from legistra.operator.decide import (
    CreateChildren,
    DeleteJob,
    Observed,
    PatchJob,
    Plan,
    WriteStatus,
    merged,
)
from legistra.operator.decide import decide as decide_plan
from legistra.operator.status import MUTABLE_FIELDS
from tests.status_schema import valid_status

AT = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc)
EARLIER = "2026-12-06T11:59:00Z"
DEFAULTS = JobDefaults(mlflow_tracking_uri="http://mlflow:5000")
PYTORCH = BACKENDS["pytorchjob"]
TRAINJOB = BACKENDS["trainjob"]


def decide(observed: Observed, defaults: JobDefaults) -> Plan:
    """`decide`, with every status it would write checked against the CRD's status schema (as the API server)."""
    plan = decide_plan(observed, defaults)
    for action in plan.actions:
        if isinstance(action, WriteStatus):
            valid_status(action.status)
    return plan


def body(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    doc = run_doc(uid="uid-1", generation=generation, **spec)
    if status is not None:
        doc["status"] = status
    return doc


def seen(doc: dict[str, Any], **kw: Any) -> Observed:
    run = parse_training_run({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    return Observed(doc, AT, run=run, backend=kw.pop("backend", PYTORCH), **kw)


def pytorchjob(*conditions: str, attempt: int = 1, suspend: bool = False, **meta: Any) -> dict[str, Any]:
    conds = [{"type": c, "status": "True", "reason": c, "message": f"job {c.lower()}", "lastTransitionTime": EARLIER}
             for c in conditions]
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": "contract-risk", "ownerReferences": [{"uid": "uid-1"}],
                         "annotations": {ATTEMPT_ANNOTATION: str(attempt), "legistra.io/suspend": str(suspend).lower()},
                         **meta},
            "spec": {"runPolicy": {"suspend": suspend, "cleanPodPolicy": "None"}}, "status": {"conditions": conds}}


def trainjob(*conditions: str, ready: int = 1) -> dict[str, Any]:
    conds = [{"type": c, "status": "True", "reason": c, "message": c, "lastTransitionTime": EARLIER}
             for c in conditions]
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "contract-risk", "ownerReferences": [{"uid": "uid-1"}],
                         "annotations": {ATTEMPT_ANNOTATION: "1", "legistra.io/suspend": "false"}},
            "spec": {"suspend": False},
            "status": {"conditions": conds, "jobsStatus": [{"name": "node", "ready": ready, "active": ready}]}}


def pod(message: str | None = None, restarts: int = 0, label: str = "training.kubeflow.org/job-name",
        container: str = "pytorch") -> dict[str, Any]:
    last = {"terminated": {"exitCode": 1, "message": message}} if message else {}
    return {"metadata": {"labels": {label: "contract-risk"}},
            "status": {"containerStatuses": [{"name": container, "restartCount": restarts, "lastState": last,
                                              "state": {"running": {}}}]}}


def kinds(plan: Plan) -> list[str]:
    out = []
    for a in plan.actions:
        if isinstance(a, DeleteJob):
            out.append(f"delete:{a.propagation}")
        elif isinstance(a, CreateChildren):
            out.append("create:" + ",".join(o["kind"] for o in a.objects))
        else:
            out.append(type(a).__name__)
    return out


def events(plan: Plan) -> list[str]:
    return [reason for a in plan.actions if isinstance(a, WriteStatus) for _, reason, _ in a.events]


RUNNING = {"phase": "Running", "attempt": 1, "jobName": "contract-risk", "backend": "pytorchjob",
           "observedGeneration": 1, "progress": {"step": 3, "totalSteps": 10, "percent": 30}, "conditions": []}
FAILED_FOR_GOOD = {"phase": "Failed", "observedGeneration": 1, "conditions": [
    {"type": "Failed", "status": "True", "reason": "InvalidSpec", "message": "x", "lastTransitionTime": EARLIER}]}
STATE_CACHED = "spec.model.name: x"


@pytest.mark.parametrize(
    ("name", "observed", "phase", "actions", "reasons"),
    [
        ("deleted", Observed({**body(RUNNING), "metadata": {**body()["metadata"], "deletionTimestamp": EARLIER}},
                             AT), "Running", [], []),
        ("invalid spec", Observed(body(), AT, invalid=["spec.task: bad"]), "Failed", ["WriteStatus"],
         ["InvalidSpec"]),
        ("a child the API refused", replace(seen(body({"phase": "Pending"})), create_failed="cannot create: Forbidden"),
         "Failed", ["WriteStatus"], ["ChildCreateFailed"]),
        ("failed for good at this generation", seen(body(FAILED_FOR_GOOD)), "Failed", [], []),
        ("failed for good, then edited", seen(body(FAILED_FOR_GOOD, generation=2)), "Pending",
         ["create:ConfigMap,PersistentVolumeClaim,PyTorchJob", "WriteStatus"], []),
        ("no backend served", seen(body(), backend=None, backend_reason=("BackendUnavailable", "no CRD")), "Pending", ["WriteStatus"],
         ["BackendUnavailable"]),
        ("a job of its name owned by another", seen(body(RUNNING), job=pytorchjob("Running"), owned=False), "Pending",
         ["WriteStatus"], ["JobNameTaken"]),
        ("new run: children, job last", seen(body()), "Pending",
         ["create:ConfigMap,PersistentVolumeClaim,PyTorchJob", "WriteStatus"], []),
        ("model too long for its positions", seen(body(data={"train": "s3://d/t.jsonl", "maxLength": 4096},
                                                       model={"name": "bert-base-uncased"})),
         "Failed", ["WriteStatus"], ["InvalidSpec"]),
        ("running, mirrored", seen(body(RUNNING), job=pytorchjob("Created", "Running")), "Running",
         ["WriteStatus"], []),
        ("running, nothing new", None, "Running", ["WriteStatus"], []),
        ("deterministic failure in a pod", seen(body(RUNNING), job=pytorchjob("Created", "Running"),
                                                pods=[pod("InvalidData: spec.data.train: no such file")]),
         "Failed", ["WriteStatus", "delete:Background"], ["RunFailed"]),
        ("suspended in the spec", seen(body(RUNNING, runPolicy={"suspend": True}), job=pytorchjob("Created", "Running")),
         "Suspended", ["PatchJob", "WriteStatus"], ["RunSuspended"]),
        ("succeeded", seen(body(RUNNING), job=pytorchjob("Created", "Succeeded")), "Succeeded", ["WriteStatus"],
         ["RunSucceeded"]),
        ("failed, retry later", seen(body(RUNNING, runPolicy={"maxAttempts": 3, "retryDelaySeconds": 600}),
                                     job=pytorchjob("Created", "Failed")), "Retrying",
         ["WriteStatus", "delete:Background"], ["RunRetrying"]),  # cleanPodPolicy None keeps crash-looping pods
        ("failed, retry due", seen(body({**RUNNING, "phase": "Retrying"}, runPolicy={"maxAttempts": 3,
                                                                                     "retryDelaySeconds": 1}),
                                   job=pytorchjob("Created", "Failed")), "Pending",
         ["WriteStatus", "delete:Foreground"], ["AttemptStarted"]),
        ("failed, no attempts left, pods kept", seen(body(RUNNING, runPolicy={"maxAttempts": 1}),
                                                     job=pytorchjob("Created", "Failed")), "Failed",
         ["WriteStatus", "delete:Background"], ["RunFailed"]),
        ("job of an earlier attempt", seen(body({**RUNNING, "attempt": 2}, runPolicy={"maxAttempts": 3}),
                                           job=pytorchjob("Created", "Running")), "Pending",
         ["WriteStatus", "delete:Foreground"], []),
        ("retry due, failed job already expired", seen(body({**RUNNING, "phase": "Retrying",
                                                             "retryAt": "2026-12-06T11:00:00Z"},
                                                            runPolicy={"maxAttempts": 3})), "Pending",
         ["WriteStatus", "create:ConfigMap,PersistentVolumeClaim,PyTorchJob", "WriteStatus"], ["AttemptStarted"]),
        ("succeeded, job expired", seen(body({**RUNNING, "phase": "Succeeded", "jobDeleteAt": EARLIER})),
         "Succeeded", ["WriteStatus"], []),
    ],
)
def test_decide_table(name: str, observed: Observed | None, phase: str, actions: list[str],
                      reasons: list[str]) -> None:
    if observed is None:  # a second pass over the status the first one wrote: nothing to write, no event
        first = decide(seen(body(RUNNING), job=pytorchjob("Created", "Running")), DEFAULTS)
        assert first.status is not None
        observed = seen(body(first.status), job=pytorchjob("Created", "Running"))
        assert decide(observed, DEFAULTS).status == observed.current
    plan = decide(observed, DEFAULTS)
    assert (plan.phase, kinds(plan), events(plan)) == (phase, actions, reasons), name
    if plan.status is not None:
        assert plan.status["phase"] == phase


def test_a_retry_waits_and_the_plan_says_when() -> None:
    """The requeue time is returned, not parsed back out of status.retryAt."""
    job = pytorchjob("Created", "Failed")
    job["spec"]["runPolicy"]["cleanPodPolicy"] = "Running"  # its pods are gone: the job may stay until the retry
    plan = decide(seen(body(RUNNING, runPolicy={"maxAttempts": 3, "retryDelaySeconds": 600}), job=job), DEFAULTS)
    assert kinds(plan) == ["WriteStatus"]
    assert plan.status is not None and plan.status["retryAt"] == "2026-12-06T12:09:00Z"
    assert plan.requeue_after == 540.0  # failed at 11:59, 600 s delay, observed at 12:00
    waiting = decide(seen(body({**RUNNING, "phase": "Retrying", "retryAt": "2026-12-06T12:30:00Z"},
                               runPolicy={"maxAttempts": 3})), DEFAULTS)
    assert (waiting.actions, waiting.requeue_after) == ((), 1800.0)
    assert decide(seen(body(RUNNING), job=pytorchjob("Created", "Running")), DEFAULTS).requeue_after is None


def test_a_finished_trainjob_is_deleted_at_its_ttl_and_due_until_then() -> None:
    run = body({**RUNNING, "backend": "trainjob"}, runPolicy={"ttlSecondsAfterFinished": 120})
    job = trainjob("Complete")
    plan = decide(seen(run, job=job, backend=TRAINJOB), DEFAULTS)
    assert plan.status is not None and plan.status["jobDeleteAt"] == "2026-12-06T12:01:00Z"
    assert plan.requeue_after == 60.0
    later = decide(replace(seen(body(plan.status, runPolicy={"ttlSecondsAfterFinished": 120}), job=job,
                                backend=TRAINJOB), at=AT + dt.timedelta(minutes=2)), DEFAULTS)
    assert kinds(later) == ["delete:Background", "WriteStatus"]  # the job first: its deletion is what is due
    assert later.status is not None and "jobDeleteAt" not in later.status


def test_a_trainjob_past_its_backoff_limit_is_stopped() -> None:
    run = body({**RUNNING, "backend": "trainjob"}, runPolicy={"backoffLimit": 2, "maxAttempts": 1})
    pods = [pod(restarts=2, label="jobset.sigs.k8s.io/jobset-name", container="node")]
    plan = decide(seen(run, job=trainjob(), backend=TRAINJOB, pods=pods), DEFAULTS)
    assert (plan.phase, kinds(plan)) == ("Failed", ["WriteStatus", "delete:Background"])
    assert plan.status is not None and plan.status["restarts"] == 2
    under = decide(seen(run, job=trainjob(), backend=TRAINJOB, pods=pods[:0]), DEFAULTS)
    assert (under.phase, kinds(under)) == ("Running", ["WriteStatus"])


def test_the_status_mirrors_the_job_as_the_patch_leaves_it() -> None:
    """A suspend the operator writes is in the status of the same pass (no second pass needed)."""
    job = pytorchjob("Created", "Running")
    plan = decide(seen(body(RUNNING, runPolicy={"suspend": True}), job=job), DEFAULTS)
    patch = next(a for a in plan.actions if isinstance(a, PatchJob)).patch
    assert merged(job, patch)["spec"]["runPolicy"] == {"suspend": True, "cleanPodPolicy": "None"}
    assert plan.job is not None and plan.job["spec"]["runPolicy"]["suspend"] is True
    assert merged({"a": {"b": 1, "c": 2}}, {"a": {"b": None}, "d": 3}) == {"a": {"c": 2}, "d": 3}


def test_a_spec_change_after_start_is_refused_with_one_event() -> None:
    observed = seen(body(RUNNING), job=pytorchjob("Created", "Running"), refused=["spec.training.learningRate"])
    plan = decide(observed, DEFAULTS)
    assert events(plan) == ["SpecChangeRefused"]
    assert plan.status is not None
    cond = next(c for c in plan.status["conditions"] if c["type"] == "SpecChangeRefused")
    assert "spec.training.learningRate" in cond["message"] and MUTABLE_FIELDS in cond["message"]
    again = decide(replace(observed, body=body(plan.status)), DEFAULTS)
    assert events(again) == []


def test_a_private_tracking_server_is_named_not_read() -> None:
    plan = decide(seen(body(RUNNING), job=pytorchjob("Created", "Running"), private_uri="https://mlflow.team"),
                  DEFAULTS)
    assert plan.status is not None and "https://mlflow.team" in plan.status["mlflow"]["note"]


def test_a_pending_volume_is_the_reason_the_run_waits() -> None:
    pvc = {"metadata": {"name": "contract-risk-checkpoints", "creationTimestamp": "2026-12-06T11:50:00Z"},
           "spec": {"accessModes": ["ReadWriteOnce"]}, "status": {"phase": "Pending"}}
    plan = decide(seen(body(RUNNING), job=pytorchjob("Created"), pvc=pvc), DEFAULTS)
    assert plan.status is not None and plan.status["phase"] == "Pending"
    assert events(plan) == ["VolumePending"]


# -- stalled jobs (issue 32) ------------------------------------------------------------------------------------

def reported(step: int, started: str = "t0") -> dict[str, Any]:
    return {"progress": {"step": step, "totalSteps": 100}, "trainerStarted": started}


def running(**extra: Any) -> dict[str, Any]:
    return {**RUNNING, "trainerStartedAt": "t0", **extra}


@pytest.mark.parametrize(("name", "status", "report", "spec", "phase", "actions", "reasons", "requeue"), [
    ("progress moves: its time is recorded, due again at the deadline",
     running(), reported(4), {}, "Running", ["WriteStatus"], [], 1800.0),
    ("still within the timeout", running(progressedAt="2026-12-06T11:40:00Z"), reported(3), {}, "Running",
     ["WriteStatus"], [], 600.0),
    ("past the timeout: stalled, stopped, retried", running(progressedAt="2026-12-06T11:20:00Z"), reported(3), {},
     "Retrying", ["WriteStatus", "delete:Background"], ["RunRetrying", "Stalled"], 60.0),
    ("past the timeout, no attempt left", running(progressedAt="2026-12-06T11:20:00Z"), reported(3),
     {"runPolicy": {"maxAttempts": 1}}, "Failed", ["WriteStatus", "delete:Background"], ["RunFailed", "Stalled"],
     None),
    ("a restart in place is life", running(progressedAt="2026-12-06T11:20:00Z"), reported(3, "t1"), {},
     "Running", ["WriteStatus"], [], 1800.0),
    ("no progress report yet: no clock", {**RUNNING, "progress": None}, None, {}, "Running", ["WriteStatus"], [],
     None),
    ("turned off in the spec", running(progressedAt="2026-12-06T11:20:00Z"), reported(3),
     {"training": {"stallTimeout": "0"}}, "Running", ["WriteStatus"], [], None),
    ("the spec's own timeout", running(progressedAt="2026-12-06T11:58:00Z"), reported(3),
     {"training": {"stallTimeout": "90s"}}, "Retrying", ["WriteStatus", "delete:Background"],
     ["RunRetrying", "Stalled"], 60.0),
])
def test_stall_table(name: str, status: dict[str, Any], report: dict[str, Any] | None, spec: dict[str, Any],
                     phase: str, actions: list[str], reasons: list[str], requeue: float | None) -> None:
    """The operator's default is 30m; the run was last seen at step 3. The retry delay is 60 s."""
    if status.get("progress") is None:
        status = {k: v for k, v in status.items() if k != "progress"}
    job = pytorchjob("Created", "Running")
    job["spec"]["runPolicy"]["cleanPodPolicy"] = "Running"
    spec = {"runPolicy": {"maxAttempts": 3, **spec.get("runPolicy", {})}, **{k: v for k, v in spec.items()
                                                                             if k != "runPolicy"}}
    plan = decide(seen(body(status, **spec), job=job, report=report), DEFAULTS)
    assert (plan.phase, kinds(plan), events(plan), plan.requeue_after) == (phase, actions, reasons, requeue), name
    assert plan.status is not None
    if "Stalled" in reasons:
        cond = next(c for c in plan.status["conditions"] if c["type"] == "Stalled")
        assert cond["status"] == "True" and cond["reason"] == "NoProgress" and "last at step 3" in cond["message"]
    elif (report is not None and "progressedAt" not in status) or name.startswith("a restart"):
        assert plan.status["progressedAt"] == "2026-12-06T12:00:00Z"


def test_a_new_attempt_starts_its_own_stall_clock_and_clears_the_condition() -> None:
    """With no retry delay the stalled attempt is replaced in the same pass, and still says why."""
    policy = {"maxAttempts": 3, "retryDelaySeconds": 0}
    stalled = decide(seen(body(running(progressedAt="2026-12-06T11:20:00Z"), runPolicy=policy),
                          job=pytorchjob("Created", "Running"), report=reported(3)), DEFAULTS)
    assert (stalled.phase, kinds(stalled), events(stalled)) == (
        "Pending", ["WriteStatus", "delete:Foreground"], ["AttemptStarted", "Stalled"])
    assert stalled.status is not None and "progressedAt" not in stalled.status
    cond = next(c for c in stalled.status["conditions"] if c["type"] == "Stalled")
    assert (cond["status"], cond["reason"]) == ("True", "NoProgress")
    # The next attempt's job runs and reports: its own clock, and the condition says it is over.
    job = pytorchjob("Created", "Running", attempt=2)
    moving = decide(seen(body(stalled.status, runPolicy=policy), job=job, report=reported(11, "t2")), DEFAULTS)
    assert moving.status is not None and moving.status["progressedAt"] == "2026-12-06T12:00:00Z"
    cond = next(c for c in moving.status["conditions"] if c["type"] == "Stalled")
    assert (cond["status"], cond["reason"]) == ("False", "Progressing")


# -- GPU time (issue 32) -----------------------------------------------------------------------------------------

def test_gpu_time_is_counted_from_the_runs_own_transitions_without_writes_of_its_own() -> None:
    priced = JobDefaults(mlflow_tracking_uri="http://mlflow:5000", gpu_prices={"NVIDIA-H100-80GB-HBM3": 4.0})
    spec = {"resources": {"nodes": 2, "gpusPerNode": 4,
                          "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "runPolicy": {"maxAttempts": 3, "retryDelaySeconds": 0}}
    pending = {**RUNNING, "phase": "Pending", "trainerStartedAt": "t0"}
    start = decide(seen(body(pending, **spec), job=pytorchjob("Created", "Running")), priced)
    assert start.status is not None and start.status["usage"] == {
        "gpus": 8, "gpuSeconds": 0.0, "wallSeconds": 0.0, "attempts": [], "runningSince": "2026-12-06T12:00:00Z",
        "estimatedCost": 0.0}
    # An hour later, still Running and nothing new: the same status, no write.
    later = replace(seen(body(start.status, **spec), job=pytorchjob("Created", "Running")),
                    at=AT + dt.timedelta(hours=1))
    assert decide(later, priced).status == start.status
    # Then the job fails: the stretch is added to attempt 1 and the totals, at $4 a GPU-hour.
    job = pytorchjob("Created", "Failed")
    job["spec"]["runPolicy"]["cleanPodPolicy"] = "Running"
    failed = decide(replace(seen(body(start.status, **spec), job=job), at=AT + dt.timedelta(hours=1)), priced)
    assert failed.status is not None and failed.status["phase"] == "Pending"  # attempt 2 at once (no delay)
    assert failed.status["usage"] == {"gpus": 8, "gpuSeconds": 28800.0, "wallSeconds": 3600.0, "estimatedCost": 32.0,
                                      "attempts": [{"attempt": 1, "gpus": 8, "wallSeconds": 3600.0,
                                                    "gpuSeconds": 28800.0}]}
    # A run that never ran has no usage; one first seen Running (an upgrade) starts at its next transition.
    assert "usage" not in (decide(seen(body(), job=pytorchjob("Created")), priced).status or {})
    assert "usage" not in (decide(seen(body(RUNNING, **spec), job=pytorchjob("Created", "Running")), priced).status
                           or {})


# -- the backend, said at the job's creation (issue 32) -----------------------------------------------------------

def test_the_job_kind_and_a_queued_pytorchjob_are_said_at_creation() -> None:
    queued = seen(body(resources={"queueName": "team-a", "gpusPerNode": 1}),
                  backend_reason=("TrainerV2Preferred", "TrainJob: ..."), backend=TRAINJOB)
    plan = decide(queued, DEFAULTS)
    assert plan.status is not None
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert (conditions["BackendSelected"]["status"], conditions["BackendSelected"]["reason"]) == (
        "True", "TrainerV2Preferred")
    assert "QueueIntegration" not in conditions and events(plan) == []  # a TrainJob: nothing to warn about
    as_v1 = decide(replace(queued, backend=PYTORCH, backend_reason=("NoTrainingRuntime", "PyTorchJob: ...")),
                   DEFAULTS)
    assert as_v1.status is not None and events(as_v1) == ["QueueIntegration"]
    warned = next(c for c in as_v1.status["conditions"] if c["type"] == "QueueIntegration")
    assert warned["status"] == "Unknown" and "kubeflow.org/pytorchjob" in warned["message"]
    # Later passes leave both as they are: no event again, no write of their own.
    later = decide(seen(body(as_v1.status, resources={"queueName": "team-a", "gpusPerNode": 1}),
                        job=pytorchjob("Created")), DEFAULTS)
    assert later.status is not None and events(later) == []
    assert [c for c in later.status["conditions"] if c["type"] in ("BackendSelected", "QueueIntegration")] == \
        [c for c in as_v1.status["conditions"] if c["type"] in ("BackendSelected", "QueueIntegration")]


def test_a_run_an_older_operator_started_is_told_its_job_kind_and_warned_once() -> None:
    """Runs whose job was created before BackendSelected and QueueIntegration existed get them at their next pass
    (one write, one warning), then never again."""
    resources = {"queueName": "team-a", "gpusPerNode": 1, "backend": "pytorchjob"}
    written_before = {**RUNNING, "phase": "Pending", "progress": {}}  # no BackendSelected, no QueueIntegration
    upgraded = seen(body(written_before, resources=resources), job=pytorchjob("Created"),
                    backend_reason=("Recorded", "PyTorchJob, as when this run started (status.backend)"))
    plan = decide(upgraded, DEFAULTS)
    assert plan.status is not None and events(plan) == ["QueueIntegration"]
    told = {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}
    assert told["BackendSelected"] == ("True", "Recorded")
    assert told["QueueIntegration"] == ("Unknown", "PyTorchJobIntegrationOptIn")
    again = decide(replace(upgraded, body=body(plan.status, resources=resources)), DEFAULTS)
    assert again.status == plan.status and events(again) == []


def test_gpu_seconds_reach_prometheus_once_as_stretches_end() -> None:
    from prometheus_client import REGISTRY

    from legistra.operator import prometheus

    labels = {"namespace": "legal-ml", "task": "summarization"}
    before = REGISTRY.get_sample_value("legistra_gpu_seconds_total", labels) or 0.0
    prometheus.count_gpu_seconds("legal-ml", "summarization", {"usage": {"gpuSeconds": 100.0}},
                                 {"usage": {"gpuSeconds": 3700.0}})
    prometheus.count_gpu_seconds("legal-ml", "summarization", {"usage": {"gpuSeconds": 3700.0}},
                                 {"usage": {"gpuSeconds": 3700.0}})  # a pass that ended no stretch
    prometheus.count_gpu_seconds("legal-ml", "summarization", None, None)
    assert REGISTRY.get_sample_value("legistra_gpu_seconds_total", labels) == before + 3600.0
