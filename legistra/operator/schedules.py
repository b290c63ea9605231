"""TrainingSchedule I/O: read the schedule's runs and data fingerprints, apply the plan (`schedule_plan.py`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Callable
from typing import Any

from legistra import s3
from legistra.api.schedule import TrainingScheduleSpec
from legistra.operator import prometheus
from legistra.operator.schedule_plan import (
    SCHEDULE_LABEL,
    SchedulePlan,
    data_sources_fingerprint,
    parse_time,
    plan_schedule,
)

log = logging.getLogger("legistra.operator")


@functools.cache
def _s3() -> Any:
    """One client for the process: building one costs far more than the HEAD it serves."""
    return s3.client()


def s3_head(location: str) -> str | None:
    """ETag (and version id where versioning is on) of an s3:// object; None for anything else."""
    if not s3.is_s3(location):
        return None
    bucket, key = s3.parse_s3_uri(location)
    try:
        head = _s3().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        log.warning("cannot read %s for the data trigger: %s", location, exc)
        return None
    return f"{head.get('ETag', '')}:{head.get('VersionId', '')}"


async def reconcile_schedule(
    kube: Any, body: dict[str, Any], now: Callable[[], dt.datetime] | None = None,
    head: Callable[[str], str | None] = s3_head,
) -> SchedulePlan:
    meta = body["metadata"]
    spec = TrainingScheduleSpec.model_validate(body["spec"])
    runs = await kube.list("TrainingRun", meta["namespace"], label_selector=f"{SCHEDULE_LABEL}={meta['name']}")
    runs = sorted(runs, key=lambda r: r["metadata"].get("creationTimestamp") or r["metadata"]["name"])
    # HEAD requests block: off the event loop that serves every run.
    fp = (await asyncio.to_thread(data_sources_fingerprint, spec, head)
          if spec.data_trigger and spec.data_trigger.enabled else None)
    current = dict(body.get("status") or {})
    created_at = parse_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.timezone.utc)
    plan = plan_schedule(meta["name"], meta["namespace"], meta.get("uid", ""), spec, current, runs,
                         (now or (lambda: dt.datetime.now(dt.timezone.utc)))(), created_at, fp)
    for name in plan.delete:
        await kube.delete("TrainingRun", meta["namespace"], name)
    if plan.create is not None:
        _, created = await kube.create_or_get(plan.create, read=False)
        if created:
            prometheus.SCHEDULE_RUNS.inc()
    if plan.status != current:
        await kube.patch_status("TrainingSchedule", meta["namespace"], meta["name"], current, plan.status)
    return plan
