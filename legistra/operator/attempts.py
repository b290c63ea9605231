"""Pure decision: retry a failed TrainingRun with a new PyTorchJob that resumes from the last checkpoint.

The training-operator already restarts pods (`backoffLimit`), but a job can still end Failed: the limit
is spent, `activeDeadlineSeconds` passed, or multi-node restarts hang on NCCL timeouts until the deadline
(kubeflow/trainer#2000). A new job with the same name and the same checkpoint volume picks training up
where the last checkpoint left it. `status.attempt` is the source of truth; each job carries the attempt it
was built for, so a job left over from an earlier attempt is recognised (and replaced) after any crash.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from legistra.operator.status import job_state, parse_time

ATTEMPT_ANNOTATION = "legistra.io/attempt"

Action = Literal["keep", "create", "wait", "retry", "replace", "finished"]


@dataclass(frozen=True)
class AttemptPlan:
    """keep: mirror the job; create: make the job for `attempt`; wait: a retry is due at `retry_at`;
    retry: start `attempt` now (the failed job goes first); replace: the job is from an earlier attempt;
    finished: the run is over and its job is gone (e.g. ttlSecondsAfterFinished): change nothing."""

    action: Action
    attempt: int
    retry_at: dt.datetime | None = None
    preempted: bool = False  # a retry after a preemption: at once, and not counted against maxAttempts


def job_attempt(job: Mapping[str, Any]) -> int:
    raw = (job.get("metadata", {}).get("annotations") or {}).get(ATTEMPT_ANNOTATION, "1")
    try:
        return max(1, int(raw))
    except (TypeError, ValueError):
        return 1


def _failed_at(job: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and str(c.get("status")) == "True":
            return parse_time(c.get("lastTransitionTime")) or now
    return now


def retry_delay(base_seconds: int, failed_attempt: int) -> dt.timedelta:
    """Doubles with each failed attempt, capped at a day."""
    return dt.timedelta(seconds=min(86_400, base_seconds * 2 ** max(0, failed_attempt - 1)))


def attempt_limit(status: Mapping[str, Any], max_attempts: int) -> int:
    """How many jobs the run may have: `maxAttempts`, plus one per preemption (those do not count)."""
    return max_attempts + int(status.get("preemptions") or 0)


def plan_attempt(current: Mapping[str, Any], job: Mapping[str, Any] | None, max_attempts: int,
                 delay_seconds: int, now: dt.datetime, preempted: bool = False, stopped: bool = False) -> AttemptPlan:
    """`current`: the run's status; `job`: its PyTorchJob or None; `preempted`: its pods stopped on a
    termination signal after saving (`status.preempted`). Preemptions do not count against `max_attempts`.
    `stopped`: the attempt ended now though its job does not say so (the operator stops it, e.g. a TrainJob past
    the run's backoffLimit): planned as if the job had failed at `now`."""
    attempt = max(1, int(current.get("attempt") or 1))
    max_attempts = attempt_limit(current, max_attempts)
    phase = current.get("phase")
    if job is None:
        had_job = bool(current.get("jobName"))
        if phase == "Succeeded" and had_job:
            return AttemptPlan("finished", attempt)
        if phase == "Retrying" and had_job:
            # The failed attempt's job is gone before its retry (training-operator v1.9.4's CleanupJob applies
            # ttlSecondsAfterFinished to Failed jobs too): the attempt still ended. Wait out retryAt, then start
            # the next one; making this attempt's job again would never count up to maxAttempts.
            due = parse_time(current.get("retryAt"))
            if due is not None and now < due:
                return AttemptPlan("wait", attempt, due)
            return AttemptPlan("retry", attempt + 1)
        if phase == "Failed" and had_job:
            # The failed job was deleted (TTL, by hand): retry only if attempts remain (maxAttempts raised).
            return AttemptPlan("retry", attempt + 1) if attempt < max_attempts else AttemptPlan("finished", attempt)
        return AttemptPlan("create", attempt)
    built_for = job_attempt(job)
    if built_for < attempt:
        return AttemptPlan("replace", attempt)
    attempt = max(attempt, built_for)  # a status that lost its attempt (restored from a backup) follows the job
    failed = stopped or job_state(job, False).phase == "Failed"
    if failed and preempted:
        return AttemptPlan("retry", attempt + 1, preempted=True)
    if not failed or attempt >= max_attempts:
        return AttemptPlan("keep", attempt)
    due = (now if stopped else _failed_at(job, now)) + retry_delay(delay_seconds, attempt)
    if now < due:
        return AttemptPlan("wait", attempt, due)
    return AttemptPlan("retry", attempt + 1)
