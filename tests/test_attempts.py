"""Retrying a failed run with a new PyTorchJob: the pure decision and the status it leads to."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from legistra.operator.attempts import ATTEMPT_ANNOTATION, AttemptPlan, job_attempt, plan_attempt, retry_delay
from legistra.operator.build import refused_changes, spec_hash
from tests.status_schema import desired_status

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def job(attempt: int | None = 1, failed_seconds_ago: float | None = None, **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "r"}
    if attempt is not None:
        meta["annotations"] = {ATTEMPT_ANNOTATION: str(attempt)}
    conds = [{"type": "Created", "status": "True"}]
    if failed_seconds_ago is not None:
        at = (NOW - dt.timedelta(seconds=failed_seconds_ago)).isoformat().replace("+00:00", "Z")
        conds.append({"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
                      "message": "PyTorchJob r is failed because 1 Worker replica(s) failed.", "lastTransitionTime": at})
    return {"metadata": meta, "status": {"conditions": conds, **status}}


def plan(current: dict[str, Any], j: dict[str, Any] | None, max_attempts: int = 3, delay: int = 60) -> AttemptPlan:
    return plan_attempt(current, j, max_attempts, delay, NOW)


def test_first_attempt_is_created_and_then_mirrored() -> None:
    assert plan({}, None) == AttemptPlan("create", 1)
    assert plan({"phase": "Pending"}, None) == AttemptPlan("create", 1)
    assert plan({"phase": "Running", "attempt": 1, "jobName": "r"}, job(1)) == AttemptPlan("keep", 1)


def test_a_failed_job_waits_out_the_delay_then_is_retried() -> None:
    running = {"phase": "Running", "attempt": 1, "jobName": "r"}
    waiting = plan(running, job(1, failed_seconds_ago=10))
    assert waiting.action == "wait" and waiting.attempt == 1
    assert waiting.retry_at == NOW + dt.timedelta(seconds=50)
    assert plan(running, job(1, failed_seconds_ago=60)) == AttemptPlan("retry", 2)


def test_an_attempt_the_operator_stops_is_planned_as_failed_now() -> None:
    """A TrainJob past the run's backoffLimit is still running when the operator ends its attempt."""
    running = {"phase": "Running", "attempt": 1, "jobName": "r"}
    stopped = plan_attempt(running, job(1), 3, 60, NOW, stopped=True)
    assert stopped == AttemptPlan("wait", 1, NOW + dt.timedelta(seconds=60))
    last = {"phase": "Running", "attempt": 3, "jobName": "r"}
    assert plan_attempt(last, job(3), 3, 60, NOW, stopped=True) == AttemptPlan("keep", 3)  # Failed for good
    assert plan_attempt(running, job(1), 3, 0, NOW, stopped=True) == AttemptPlan("retry", 2)
    assert plan_attempt(running, job(1), 3, 60, NOW) == AttemptPlan("keep", 1)  # not stopped: mirrored


def test_the_delay_doubles_and_is_capped() -> None:
    assert retry_delay(60, 1) == dt.timedelta(seconds=60)
    assert retry_delay(60, 3) == dt.timedelta(seconds=240)
    assert retry_delay(60, 20) == dt.timedelta(days=1)
    second = plan({"phase": "Running", "attempt": 2, "jobName": "r"}, job(2, failed_seconds_ago=100))
    assert second.action == "wait" and second.retry_at == NOW + dt.timedelta(seconds=20)


def test_the_last_attempt_fails_for_good() -> None:
    assert plan({"phase": "Running", "attempt": 3, "jobName": "r"}, job(3, failed_seconds_ago=999)) == \
        AttemptPlan("keep", 3)
    assert plan({"attempt": 1}, job(1, failed_seconds_ago=999), max_attempts=1) == AttemptPlan("keep", 1)


def test_a_job_from_an_earlier_attempt_is_replaced_never_mirrored() -> None:
    # The operator wrote attempt 2 and died before deleting job 1: job 1 must go, not be retried again.
    assert plan({"phase": "Pending", "attempt": 2, "jobName": "r"}, job(1, failed_seconds_ago=999)) == \
        AttemptPlan("replace", 2)


def test_a_status_without_attempt_follows_the_job() -> None:
    assert plan({"phase": "Running"}, job(2)) == AttemptPlan("keep", 2)
    assert job_attempt(job(None)) == 1 and job_attempt({"metadata": {"annotations": {ATTEMPT_ANNOTATION: "x"}}}) == 1


def test_a_finished_run_whose_job_expired_is_left_alone() -> None:
    # ttlSecondsAfterFinished deleted the job: never train again.
    assert plan({"phase": "Succeeded", "attempt": 1, "jobName": "r"}, None).action == "finished"
    assert plan({"phase": "Failed", "attempt": 3, "jobName": "r"}, None).action == "finished"
    # ...unless maxAttempts was raised after the failure.
    assert plan({"phase": "Failed", "attempt": 3, "jobName": "r"}, None, max_attempts=4) == AttemptPlan("retry", 4)


def test_raising_max_attempts_after_a_failure_retries() -> None:
    failed = {"phase": "Failed", "attempt": 2, "jobName": "r"}
    assert plan(failed, job(2, failed_seconds_ago=999), max_attempts=2).action == "keep"
    assert plan(failed, job(2, failed_seconds_ago=999), max_attempts=3) == AttemptPlan("retry", 3)


def test_max_attempts_and_retry_delay_may_change_after_start() -> None:
    applied = {"task": "risk-classification", "runPolicy": {"maxAttempts": 2, "retryDelaySeconds": 60}}
    desired = {"task": "risk-classification", "runPolicy": {"maxAttempts": 5, "retryDelaySeconds": 5, "suspend": True}}
    assert refused_changes(applied, desired) == []
    assert spec_hash(applied) == spec_hash(desired)
    assert refused_changes(applied, {**desired, "task": "summarization"}) == ["task"]


# -- status ---------------------------------------------------------------------------------------------

def status(current: dict[str, Any], j: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    return desired_status(current, j, generation=1, now="2026-11-25T12:00:00Z", suspended_in_spec=False, **kw)


def cond(st: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in st["conditions"] if c["type"] == kind), None)


def test_retrying_is_its_own_phase_with_when_and_why() -> None:
    st = status({}, job(1, failed_seconds_ago=10), attempt=1, max_attempts=3, retry_at="2026-11-25T12:00:50Z")
    assert st["phase"] == "Retrying" and st["attempt"] == 1 and st["retryAt"] == "2026-11-25T12:00:50Z"
    assert st["message"].startswith("attempt 1 of 3 failed: PyTorchJob r is failed")
    assert "attempt 2 starts at 2026-11-25T12:00:50Z" in st["message"]
    ready = cond(st, "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "RetryScheduled"
    assert cond(st, "Failed") is None  # not a verdict yet


def test_replacing_shows_the_new_attempt_and_drops_the_old_jobs_times() -> None:
    before = {"phase": "Retrying", "attempt": 1, "retryAt": "x", "startTime": "t0", "completionTime": "t1"}
    st = status(before, job(1, failed_seconds_ago=99), attempt=2, max_attempts=3, replacing=True)
    assert st["phase"] == "Pending" and st["attempt"] == 2 and "retryAt" not in st
    assert st["startTime"] == "t0" and "completionTime" not in st
    assert st["message"] == ("attempt 2 of 3: replacing the failed PyTorchJob; training resumes from the last "
                             "checkpoint")


def test_later_attempts_say_which_one_is_running() -> None:
    running = {"metadata": {"name": "r"}, "status": {"conditions": [{"type": "Running", "status": "True"}],
                                                      "startTime": "t2"}}
    st = status({"attempt": 2, "startTime": "t0"}, running, attempt=2, max_attempts=3)
    assert st["phase"] == "Running" and st["message"] == "attempt 2 of 3: training" and st["startTime"] == "t0"


@pytest.mark.parametrize(("max_attempts", "prefix"), [(1, "PyTorchJob r is failed"), (3, "attempt 3 of 3 failed:")])
def test_the_final_failure_names_the_attempts(max_attempts: int, prefix: str) -> None:
    st = status({}, job(max_attempts, failed_seconds_ago=1), attempt=max_attempts, max_attempts=max_attempts)
    assert st["phase"] == "Failed" and st["message"].startswith(prefix)
    failed = cond(st, "Failed")
    assert failed is not None and failed["status"] == "True"


def test_a_new_attempt_after_a_final_failure_clears_the_failed_condition() -> None:
    failed = status({}, job(2, failed_seconds_ago=1), attempt=2, max_attempts=2)
    again = status(failed, job(2, failed_seconds_ago=1), attempt=3, max_attempts=3, replacing=True)
    c = cond(again, "Failed")
    assert again["phase"] == "Pending" and c is not None and c["status"] == "False" and c["reason"] == "NewAttempt"


def test_fields_a_status_drops_are_nulled_in_the_merge_patch() -> None:
    from legistra.operator.kube import status_patch

    assert status_patch({"phase": "Retrying", "retryAt": "t", "attempt": 1}, {"phase": "Pending", "attempt": 2}) == \
        {"phase": "Pending", "attempt": 2, "retryAt": None}


def test_a_preempted_failure_is_retried_at_once_and_not_counted() -> None:
    from legistra.operator.status import preempted

    running = {"phase": "Running", "attempt": 3, "jobName": "r"}
    failed = job(3, failed_seconds_ago=1)
    # Attempts are spent (3 of 3): an ordinary failure ends the run, a preemption does not, and waits for nothing.
    assert plan_attempt(running, failed, 3, 60, NOW) == AttemptPlan("keep", 3)
    assert plan_attempt(running, failed, 3, 60, NOW, preempted=True) == AttemptPlan("retry", 4, preempted=True)
    # Two preemptions so far: maxAttempts 3 allows five jobs, and the next ordinary failure of job 4 retries.
    assert plan_attempt({**running, "attempt": 4, "preemptions": 2}, job(4, failed_seconds_ago=1000), 3, 60,
                        NOW) == AttemptPlan("retry", 5)
    assert plan_attempt({**running, "attempt": 5, "preemptions": 2}, job(5, failed_seconds_ago=60), 3, 60,
                        NOW) == AttemptPlan("keep", 5)

    def pod(message: str, job_name: str = "r") -> dict[str, Any]:
        return {"metadata": {"labels": {"training.kubeflow.org/job-name": job_name}},
                "status": {"containerStatuses": [{"name": "pytorch", "lastState": {"terminated": {
                    "exitCode": 1, "message": message}}}]}}

    said = "Preempted: stopped on a termination signal; checkpoint-40 saved, the next attempt resumes there"
    assert preempted([pod(said)], "r")
    assert not preempted([pod(said, job_name="other")], "r")
    assert not preempted([pod("InvalidData: train.jsonl, row 2: missing label")], "r")
    assert not preempted([pod("Traceback (most recent call last): ...")], "r")


def test_a_failed_job_deleted_by_its_ttl_before_the_retry_still_counts() -> None:
    """training-operator v1.9.4 (CleanupJob) deletes a Failed job after ttlSecondsAfterFinished too. Before, a run
    Retrying without its job made the same attempt again, so attempt never rose and maxAttempts was never reached."""
    due = NOW + dt.timedelta(seconds=30)
    retrying = {"phase": "Retrying", "attempt": 1, "jobName": "r", "retryAt": due.isoformat().replace("+00:00", "Z")}
    assert plan(retrying, None) == AttemptPlan("wait", 1, due)
    later = plan_attempt(retrying, None, 3, 60, due + dt.timedelta(seconds=1))
    assert later == AttemptPlan("retry", 2)
    assert plan({**retrying, "retryAt": "not a time"}, None) == AttemptPlan("retry", 2)
    # the last attempt's job expiring is the end, as before
    assert plan({"phase": "Failed", "attempt": 3, "jobName": "r"}, None).action == "finished"
