"""TrainingSchedule decisions on a fake clock (no sleeps), and the adapter against the API emulator."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from legistra.api.schedule import TrainingScheduleSpec
from legistra.operator.schedule_plan import (
    SCHEDULE_LABEL,
    data_sources_fingerprint,
    latest_tick,
    plan_schedule,
    run_name,
)
from legistra.operator.schedules import reconcile_schedule

UTC = dt.timezone.utc
CREATED = dt.datetime(2026, 11, 1, 0, 0, tzinfo=UTC)


def spec(**kw: Any) -> TrainingScheduleSpec:
    base: dict[str, Any] = {
        "schedule": "0 3 * * 1",
        "template": {"spec": {"task": "risk-classification", "model": {"name": "m"},
                              "data": {"train": "s3://d/train.jsonl"}, "registry": {"modelName": "risk"}}},
    }
    base.update(kw)
    return TrainingScheduleSpec.model_validate(base)


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def run(name: str, phase: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase} if phase else {}}


def plan(s: TrainingScheduleSpec, now: dt.datetime, status: dict[str, Any] | None = None,
         runs: list[dict[str, Any]] | None = None, fp: str | None = None) -> Any:
    return plan_schedule("weekly", "legal-ml", "uid-1", s, status or {}, runs or [], now, CREATED, fp)


def test_latest_tick_in_time_zone() -> None:
    # Mondays 03:00 in New York are 08:00 UTC in November (EST).
    tick = latest_tick("0 3 * * 1", "America/New_York", CREATED, at(2026, 11, 2, 9, 0))
    assert tick is not None and tick.astimezone(UTC) == at(2026, 11, 2, 8, 0)
    assert latest_tick("0 3 * * 1", "America/New_York", CREATED, at(2026, 11, 2, 7, 59)) is None


def test_no_tick_before_first_monday_then_one_run() -> None:
    s = spec()
    assert plan(s, at(2026, 11, 1, 12)).create is None
    p = plan(s, at(2026, 11, 2, 3, 0, 30))
    assert p.create is not None
    assert p.create["metadata"]["name"] == run_name("weekly", at(2026, 11, 2, 3)) == "weekly-29893140"
    assert p.create["metadata"]["labels"][SCHEDULE_LABEL] == "weekly"
    assert p.create["metadata"]["ownerReferences"][0]["kind"] == "TrainingSchedule"
    assert p.create["spec"]["training"]["learningRate"] == 2e-5
    assert p.status["lastScheduleTime"] == "2026-11-02T03:00:00Z"
    assert p.status["active"] == ["weekly-29893140"]


def test_same_tick_twice_creates_the_same_name() -> None:
    s = spec()
    first = plan(s, at(2026, 11, 2, 3, 1))
    again = plan(s, at(2026, 11, 2, 3, 5))  # e.g. the status write was lost, or a second replica
    assert first.create["metadata"]["name"] == again.create["metadata"]["name"]
    done = plan(s, at(2026, 11, 2, 3, 5), status=first.status)
    assert done.create is None and done.reason == "no tick due"


@pytest.mark.parametrize(("policy", "creates", "deletes"), [
    ("Forbid", False, []), ("Allow", True, []), ("Replace", True, ["weekly-old"]),
])
def test_concurrency_policies(policy: str, creates: bool, deletes: list[str]) -> None:
    s = spec(concurrencyPolicy=policy)
    p = plan(s, at(2026, 11, 9, 3, 1), status={"lastScheduleTime": "2026-11-02T03:00:00Z"},
             runs=[run("weekly-old", "Running")])
    assert (p.create is not None) == creates
    assert p.delete == deletes
    if policy == "Forbid":
        assert "still active (Forbid)" in p.reason
        assert p.status["lastScheduleTime"] == "2026-11-09T03:00:00Z"  # the tick is consumed, not retried


def test_starting_deadline_skips_late_ticks() -> None:
    s = spec(startingDeadlineSeconds=600)
    assert plan(s, at(2026, 11, 2, 3, 9)).create is not None
    late = plan(s, at(2026, 11, 2, 3, 11))
    assert late.create is None and "startingDeadlineSeconds" in late.reason


def test_data_trigger_runs_only_on_new_data() -> None:
    s = spec(dataTrigger={"enabled": True})
    first = plan(s, at(2026, 11, 2, 3, 1), fp="etag-1")
    assert first.create is not None and first.status["lastDataFingerprint"] == "etag-1"
    same = plan(s, at(2026, 11, 9, 3, 1), status={**first.status, "active": None}, fp="etag-1")
    assert same.create is None and "unchanged" in same.reason
    assert same.status["lastScheduleTime"] == "2026-11-09T03:00:00Z"
    changed = plan(s, at(2026, 11, 16, 3, 1), status=same.status, fp="etag-2")
    assert changed.create is not None and changed.status["lastDataFingerprint"] == "etag-2"
    unknown = plan(s, at(2026, 11, 23, 3, 1), status=changed.status, fp=None)
    assert unknown.create is None and "unavailable" in unknown.reason


def test_suspend_and_history_limits() -> None:
    runs = [run(f"weekly-{i}", "Succeeded") for i in range(5)] + [run("weekly-f1", "Failed"), run("weekly-f2", "Failed")]
    p = plan(spec(suspend=True, successfulRunsHistoryLimit=2, failedRunsHistoryLimit=1), at(2026, 11, 2, 3, 1),
             runs=runs)
    assert p.create is None and p.reason == "suspended"
    assert p.delete == ["weekly-0", "weekly-1", "weekly-2", "weekly-f1"]


def test_fingerprint_of_sources() -> None:
    s = spec(dataTrigger={"enabled": True, "checkValidation": True},
             template={"spec": {"task": "risk-classification", "model": {"name": "m"},
                                "data": {"train": "s3://d/t", "validation": "s3://d/v"},
                                "registry": {"modelName": "x"}}})
    heads = {"s3://d/t": "a", "s3://d/v": "b"}
    fp = data_sources_fingerprint(s, heads.get)
    assert fp is not None and fp != data_sources_fingerprint(s, {"s3://d/t": "a", "s3://d/v": "c"}.get)
    assert data_sources_fingerprint(s, {"s3://d/t": "a"}.get) is None


# -- the adapter against the API emulator ------------------------------------------------------------------


@pytest.fixture()
def cluster() -> Iterator[Any]:
    from kit.harness import Cluster

    c = Cluster().start()
    yield c
    c.stop()


def test_reconcile_schedule_against_the_emulator(cluster: Any, tmp_path: Path) -> None:
    from legistra.operator.credentials import cluster_credentials
    from legistra.operator.kube import Kube

    ns = "legal-ml"
    body = cluster.apply_run({
        "apiVersion": "legistra.io/v1alpha1", "kind": "TrainingSchedule",
        "metadata": {"name": "weekly", "namespace": ns, "creationTimestamp": "2026-11-01T00:00:00Z"},
        "spec": {"schedule": "0 3 * * 1", "dataTrigger": {"enabled": True}, "concurrencyPolicy": "Forbid",
                 "template": spec().template.wire()},
    })
    etag = {"value": "v1"}

    async def tick(now: dt.datetime) -> Any:
        kube = Kube(cluster_credentials(str(cluster.kubeconfig(tmp_path / "kc", ns)), None, {}))
        try:
            current = cluster.get("legistra.io/v1alpha1", "trainingschedules", ns, "weekly")
            return await reconcile_schedule(kube, current, now=lambda: now, head=lambda loc: etag["value"])
        finally:
            await kube.close()

    p1 = asyncio.run(tick(at(2026, 11, 2, 3, 1)))
    assert p1.create is not None
    runs = cluster.list("legistra.io/v1alpha1", "trainingruns", ns)
    assert [r["metadata"]["name"] for r in runs] == ["weekly-29893140"]
    again = asyncio.run(tick(at(2026, 11, 2, 3, 2)))  # same tick, status already recorded
    assert again.create is None
    assert len(cluster.list("legistra.io/v1alpha1", "trainingruns", ns)) == 1
    sched = cluster.get("legistra.io/v1alpha1", "trainingschedules", ns, "weekly")
    assert sched["status"]["lastRunName"] == "weekly-29893140" and sched["status"]["lastDataFingerprint"]
    # Next week, the first run still active and the data unchanged: nothing; data changed but Forbid: nothing.
    assert asyncio.run(tick(at(2026, 11, 9, 3, 1))).create is None
    etag["value"] = "v2"
    assert "Forbid" in asyncio.run(tick(at(2026, 11, 16, 3, 1))).reason
    cluster.patch("legistra.io/v1alpha1", "trainingruns", ns, "weekly-29893140", {"status": {"phase": "Succeeded"}},
                  sub="status")
    p4 = asyncio.run(tick(at(2026, 11, 23, 3, 1)))
    assert p4.create is not None and body["metadata"]["name"] == "weekly"
    assert len(cluster.list("legistra.io/v1alpha1", "trainingruns", ns)) == 2
