"""TrainingSchedule decisions (pure): which cron tick is due, whether the data changed, which runs to create
and delete. `schedules.py` does the I/O (S3 HEADs, the API server) around them.

Run names are derived from the tick (`<schedule>-<minutes since epoch>`), so a tick handled twice — two
operator replicas, a restart, a re-applied schedule — can only ever create the same run once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from legistra.api.schedule import TrainingScheduleSpec
from legistra.api.spec import GROUP_VERSION
from legistra.operator.build import MANAGED_BY

SCHEDULE_LABEL = "legistra.io/schedule"
FINISHED = ("Succeeded", "Failed")


@dataclass
class SchedulePlan:
    create: dict[str, Any] | None = None
    delete: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def latest_tick(schedule: str, tz: str, after: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """The most recent cron tick in (after, now], in the schedule's time zone; None if there is none."""
    zone = ZoneInfo(tz)
    it = croniter(schedule, now.astimezone(zone))
    prev: dt.datetime = it.get_prev(dt.datetime)
    return prev if prev > after else None


def run_name(schedule_name: str, tick: dt.datetime) -> str:
    return f"{schedule_name[:40]}-{int(tick.timestamp()) // 60}"


def fingerprint_of(sources: Mapping[str, str | None]) -> str:
    return hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:16]


def plan_schedule(
    name: str,
    namespace: str,
    uid: str,
    spec: TrainingScheduleSpec,
    status: Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    created_at: dt.datetime,
    data_fingerprint: str | None,
) -> SchedulePlan:
    """What to do at `now`, given this schedule's existing runs (oldest first)."""
    plan = SchedulePlan(status=dict(status))
    finished = [r for r in runs if (r.get("status") or {}).get("phase") in FINISHED]
    active = [r["metadata"]["name"] for r in runs if r not in finished]
    plan.status["active"] = active or None

    # History limits apply whatever the clock says.
    ok = [r for r in finished if r["status"]["phase"] == "Succeeded"]
    bad = [r for r in finished if r["status"]["phase"] == "Failed"]
    for group, limit in ((ok, spec.successful_runs_history_limit), (bad, spec.failed_runs_history_limit)):
        if len(group) > limit:
            plan.delete.extend(r["metadata"]["name"] for r in group[: len(group) - limit])

    if spec.suspend:
        plan.reason = "suspended"
        return plan
    last = parse_time(status.get("lastScheduleTime")) or created_at
    tick = latest_tick(spec.schedule, spec.time_zone, last, now)
    if tick is None:
        plan.reason = "no tick due"
        return plan
    plan.status["lastScheduleTime"] = iso(tick)
    if spec.starting_deadline_seconds is not None and (now - tick).total_seconds() > spec.starting_deadline_seconds:
        plan.reason = f"missed tick {iso(tick)}: past startingDeadlineSeconds"
        plan.status["message"] = plan.reason
        return plan
    if spec.data_trigger is not None and spec.data_trigger.enabled:
        if data_fingerprint is None:
            plan.reason = "data fingerprint unavailable; tick skipped"
            plan.status["message"] = plan.reason
            return plan
        if data_fingerprint == status.get("lastDataFingerprint"):
            plan.reason = f"tick {iso(tick)}: training data unchanged, no run"
            plan.status["message"] = plan.reason
            return plan
    if active:
        if spec.concurrency_policy == "Forbid":
            plan.reason = f"tick {iso(tick)} skipped: {', '.join(active)} still active (Forbid)"
            plan.status["message"] = plan.reason
            return plan
        if spec.concurrency_policy == "Replace":
            plan.delete.extend(active)
    new_name = run_name(name, tick)
    labels = {**MANAGED_BY, SCHEDULE_LABEL: name, **(spec.template.metadata.labels or {})}
    plan.create = {
        "apiVersion": GROUP_VERSION,
        "kind": "TrainingRun",
        "metadata": {
            "name": new_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {**(spec.template.metadata.annotations or {}),
                            "legistra.io/scheduled-at": iso(tick)},
            "ownerReferences": [{"apiVersion": GROUP_VERSION, "kind": "TrainingSchedule", "name": name,
                                 "uid": uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": spec.template.spec.wire(),
    }
    plan.status["lastRunName"] = new_name
    plan.status["active"] = [*[a for a in active if a not in plan.delete], new_name]
    if data_fingerprint is not None:
        plan.status["lastDataFingerprint"] = data_fingerprint
    plan.status["message"] = f"created {new_name} for tick {iso(tick)}"
    plan.reason = plan.status["message"]
    return plan


def data_sources_fingerprint(spec: TrainingScheduleSpec, head: Callable[[str], str | None]) -> str | None:
    """Fingerprint of the template's data from `head(location)` (ETag, version id or checksum)."""
    data = spec.template.spec.data
    locations = [data.train] + ([data.validation] if spec.data_trigger and spec.data_trigger.check_validation
                                and data.validation else [])
    seen = {loc: head(loc) for loc in locations}
    if any(v is None for v in seen.values()):
        return None
    return fingerprint_of(seen)
