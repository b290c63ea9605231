"""What the operator keeps per run between events, and how it tells its own writes' echoes from news.

Watch bodies lag behind the operator's own status writes; a pass that reconciled a lagging body would redo
work, and its write would fail its resourceVersion precondition. `Written` remembers the last write, `freshest`
lays it over an older body, `late_job` spots a job event older than what was mirrored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from legistra.operator.kube import newer_version, resource_version


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
    wakeup: asyncio.Task[None] | None = None  # a reconcile at the run's next due time (Outcome.requeue_after)
    wakeup_at: float = float("inf")  # monotonic: when that wake-up fires


# Bookkeeping the API server keeps on every object that reconcile never reads: on a real server it is most of a
# run's bytes (managedFields, kubectl's last-applied copy of the whole spec; sizes in docs/operator.md).
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
    compact JSON, a sixth of the parsed dict's memory (docs/operator.md, "Measurements behind the design");
    parsed again only when a job event needs its run.

    Kept from `run_event`'s passes rather than by a `kopf.index`: kopf runs an index through its whole handler
    machinery on every event, a measurable share of the operator's CPU at scale; `run_event` sees the same
    events."""
    return json.dumps(lean(body), separators=(",", ":")).encode()


