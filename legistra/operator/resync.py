"""The operator's own loops: a paced, level-triggered resync of every run, and the schedule tick; both on the
leading replica only."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from legistra.operator.kube import ApiError
from legistra.operator.runstate import RunState, compact
from legistra.operator.runtime import Runtime, Trigger, acting, reconcile_run
from legistra.operator.schedules import reconcile_schedule
from legistra.operator.status import needs_resync

log = logging.getLogger("legistra.operator")


@dataclass
class Pacer:
    """At most `rate` starts a second, evenly spaced: a loop asks before each start how long to wait first."""

    rate: float
    next_at: float = float("-inf")  # monotonic: the earliest moment of the next start

    def delay(self, now: float) -> float:
        """Seconds to wait from `now` before the next start; books that start. Never negative: a caller that
        comes late starts at once, and the spacing counts from then (no catching up in a burst)."""
        start = max(now, self.next_at)
        self.next_at = start + 1 / self.rate
        return start - now


async def every(rt: Runtime, interval: float, what: str, work: Callable[[Runtime, str | None], Awaitable[None]],
                first: Callable[[Runtime], Awaitable[None]] | None = None) -> None:
    """Run `work` for each watched namespace every `interval` seconds, on the leading replica only; `first`
    once per tick before them.

    A failing namespace is logged and retried on the next tick; it never stops the loop or the others.
    """
    while True:
        await asyncio.sleep(interval)
        if not await acting(rt):
            continue
        if first is not None:
            try:
                await first(rt)
            except ApiError as exc:
                log.warning("%s: %s", what, exc)
        for ns in rt.config.watched:
            try:
                await work(rt, ns)
            except ApiError as exc:
                log.warning("%s in %s: %s", what, ns or "all namespaces", exc)
            except Exception:
                log.exception("%s in %s failed", what, ns or "all namespaces")


async def resync(rt: Runtime, ns: str | None, page_size: int = 500) -> None:
    """Level-triggered safety net, and the heartbeat that pulls trainer progress from MLflow.

    One loop for the operator rather than kopf timers per object: kopf guards per-object timers with a
    finalizer, which costs a write per run and blocks deletion whenever the operator is down.

    The runs due are listed first, page by page without a pause, and reconciled after, at the pacer's rate: a
    list's continue token expires with etcd's compaction (every 5 minutes), and a pass paced between its pages
    would lose its tail to a 410 every time at 15,000 runs. What is kept meanwhile is each due run's compact copy
    (`runstate.compact`). `page_size`: runs per list page, and runs between two checks that this replica still leads.
    """
    recent = time.monotonic() - rt.config.resync_seconds / 2
    due: list[tuple[tuple[str, str], RunState | None, bytes]] = []  # key, its state when listed, compact copy
    async for page in rt.kube.pages("TrainingRun", ns, limit=page_size):
        for run in page:
            meta = run["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            st = run.get("status") or {}
            state = rt.runs.get(key)  # read only: a finished run's state is not made here
            if not needs_resync(st, meta.get("generation"), state.lookups if state is not None else 0):
                continue  # finished: no requests at all
            if state is not None and state.reconciled_at > recent:
                continue  # an event reconciled it within half a period: at 10,000 runs a burst would be done twice
            due.append((key, state, compact(run)))
    pacer = Pacer(rt.config.resync_rate)  # spread over the pass: each run costs the API server a request or more
    for i, (key, state, copy) in enumerate(due):
        # A paced pass over 10,000 runs lasts minutes: a replica that lost its lead meanwhile stops soon after.
        if i and i % page_size == 0 and not await acting(rt):
            return
        if (wait := pacer.delay(time.monotonic())) > 0:
            await asyncio.sleep(wait)
        # Deleted since it was listed (the listed copy is older still), or reconciled by an event since.
        if state is not None and (rt.runs.get(key) is not state or state.reconciled_at > recent):
            continue
        run = json.loads(copy)
        if (run.get("status") or {}).get("phase") == "Succeeded":
            rt.state(key).lookups += 1
        # Forced: a run whose status is still this operator's last write is what the resync is for (progress
        # from MLflow, a crash loop's pods, a late model); the event path skips it as an echo.
        await reconcile_run(rt, run, Trigger.RESYNC)


async def tick_schedules(rt: Runtime, ns: str | None) -> None:
    for sched in await rt.kube.list("TrainingSchedule", ns):
        try:
            await reconcile_schedule(rt.kube, sched)
        except Exception:  # a bad schedule must not stop the others
            log.exception("schedule %s/%s failed", sched["metadata"].get("namespace"), sched["metadata"]["name"])
