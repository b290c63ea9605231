"""Several operator replicas: exactly one acts, and another takes over when it leaves or dies.

Real `legistra operator` processes with kopf peering on, against the API emulator; the peering object is
not pre-created (the operator must create it, or kopf would stay paused forever).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from kit.harness import Cluster, OperatorProcess
from kit.objects import run_doc as kit_run_doc
from legistra.operator.peering import is_leader, peering_objects, peering_priority

NS = "peers"
PEERING = "legistra-operator"


# -- decisions --------------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def record(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()}


def test_an_older_replica_outranks_a_newer_one_and_same_second_starts_differ() -> None:
    assert peering_priority(None, 1_800_000_000, 5) > peering_priority(None, 1_800_000_001, 999)
    assert peering_priority(None, 1_800_000_000, 1) != peering_priority(None, 1_800_000_000, 2)
    assert peering_priority(7, 1_800_000_000, 1) == 7
    assert peering_priority(None, 4_000_000_000 - 1, 0) > 0


@pytest.mark.parametrize(
    ("status", "leads"),
    [
        (None, True),
        ({}, True),
        ({"me": record(10, 0)}, True),
        ({"me": record(10, 0), "other": record(5, 1)}, True),
        ({"me": record(10, 0), "other": record(20, 1)}, False),
        ({"me": record(10, 0), "other": record(10, 1)}, False),  # kopf pauses both on a tie
        ({"me": record(10, 0), "other": record(20, 61)}, True),  # the higher one is dead
        ({"me": record(10, 0), "other": record(20, 9, lifetime=10)}, False),
        ({"me": record(10, 0), "other": {"priority": 20}}, False),  # no lastseen: seen now, as kopf reads it
        ({"me": record(10, 0), "other": "garbage"}, True),
        ({"me": record(10, 0), "other": {"priority": 99, "lifetime": 60, "lastseen": "2026-11-25T11:59:30"}}, False),
    ],
)
def test_is_leader_follows_kopfs_rule(status: dict[str, Any] | None, leads: bool) -> None:
    assert is_leader(status, "me", 10, NOW) is leads


def kopf_pauses(status: dict[str, Any], identity: str, priority: int) -> bool:
    """What kopf itself decides for these records: its own peering handler, given a fresh toggle."""
    import asyncio

    import kopf
    from kopf._cogs.aiokits.aiotoggles import Toggle
    from kopf._core.engines.peering import Identity, process_peering_event

    async def run() -> bool:
        settings = kopf.OperatorSettings()
        settings.peering.name, settings.peering.priority = PEERING, priority
        conflicts = Toggle(False)
        awake = asyncio.Event()
        awake.set()  # kopf sleeps until a blocking peer expires unless its stream has news: it has
        event: Any = {"type": "MODIFIED", "object": {"metadata": {"name": PEERING}, "status": status}}
        await process_peering_event(raw_event=event, namespace=None, resource=None,  # type: ignore[arg-type]
                                    identity=Identity(identity), settings=settings, autoclean=False,
                                    stream_pressure=awake, conflicts_found=conflicts)
        return conflicts.is_on()

    return asyncio.run(run())


def test_is_leader_agrees_with_kopf() -> None:
    """Our loops (resync, schedules) follow kopf's pause rule through a copy of it; kopf's own handler decides
    the same for every mix of peers above, beside and below us, alive or dead, with and without lastseen."""
    now = dt.datetime.now(dt.timezone.utc)
    stamp = lambda ago: (now - dt.timedelta(seconds=ago)).isoformat()  # noqa: E731
    peers: list[dict[str, Any]] = [
        {"priority": p, "lifetime": 60, "lastseen": stamp(ago)} for p in (5, 10, 20) for ago in (0, 30, 300)]
    peers += [{"priority": 20}, {"priority": 5}, {"priority": 10, "lastseen": stamp(10)},
              {"priority": 20, "lifetime": 10, "lastseen": stamp(30)}]
    cases = [{"me": {"priority": 10, "lifetime": 60, "lastseen": stamp(0)}}]
    cases += [{**cases[0], "other": p} for p in peers]
    cases += [{**cases[0], "a": p, "b": q} for p in peers[::3] for q in peers[1::4]]
    for status in cases:
        assert is_leader(status, "me", 10, now) is not kopf_pauses(status, "me", 10), status


def test_peering_objects_match_the_watch_scope() -> None:
    assert peering_objects("p", [None]) == [
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "p"}}]
    objs = peering_objects("p", ["a", "b"])
    assert [(o["kind"], o["metadata"]["namespace"]) for o in objs] == [("KopfPeering", "a"), ("KopfPeering", "b")]


# -- replicas against the emulator ------------------------------------------------------------------------

def run_doc(name: str) -> dict[str, Any]:
    return kit_run_doc(name, NS, resources={"gpusPerNode": 1})


def replica(cluster: Cluster, tmp_path: Path, pod: str) -> OperatorProcess:
    env = {"LEGISTRA_PEERING": PEERING, "LEGISTRA_PEERING_LIFETIME": "6", "POD_ID": pod}
    return OperatorProcess(cluster.kubeconfig(tmp_path / f"{pod}.kubeconfig", NS), NS, env, tmp_path / f"{pod}.log",
                           standalone=False).start()


def peers(cluster: Cluster) -> dict[str, Any]:
    obj = cluster.get("kopf.dev/v1", "kopfpeerings", NS, PEERING) or {}
    return dict(obj.get("status") or {})


def job(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return cluster.get("kubeflow.org/v1", "pytorchjobs", NS, name)


def test_one_replica_acts_and_another_takes_over(tmp_path: Path) -> None:
    cluster = Cluster().start()
    procs: list[OperatorProcess] = []
    try:
        a = replica(cluster, tmp_path, "op-a")
        procs.append(a)
        cluster.wait(lambda: "op-a" in peers(cluster), 60, "replica A in the peering object it created")
        time.sleep(1.1)  # a later start: B ranks below A
        b = replica(cluster, tmp_path, "op-b")
        procs.append(b)
        cluster.wait(lambda: "op-b" in peers(cluster), 60, "replica B in the peering records")
        recs = peers(cluster)
        assert recs["op-a"]["priority"] > recs["op-b"]["priority"]

        cluster.apply_run(run_doc("first"))
        cluster.wait(lambda: job(cluster, "first"), 60, "the leader to create the first job")
        time.sleep(5)  # more than two resync ticks (2 s): the standby's loops must stay quiet too
        assert cluster.writes_from("(op-a)") >= 3  # config, volume, job, status
        assert cluster.writes_from("(op-b)") == 0
        assert "Resuming operations" not in (tmp_path / "op-b.log").read_text()  # kopf starts a peer paused

        # A leaves politely (its record goes with it): B takes over at once.
        a.stop()
        cluster.wait(lambda: "op-a" not in peers(cluster), 30, "A's record to go")
        cluster.apply_run(run_doc("second"))
        cluster.wait(lambda: job(cluster, "second"), 60, "B to create the second job")
        assert "Resuming operations" in (tmp_path / "op-b.log").read_text()
        assert cluster.writes_from("(op-b)") >= 3

        # A comes back (ranking below B now), then B dies without a word: A takes over once B's record expires.
        a2 = replica(cluster, tmp_path, "op-a2")
        procs.append(a2)
        cluster.wait(lambda: "op-a2" in peers(cluster), 60, "A again in the peering records")
        b.kill()
        cluster.apply_run(run_doc("third"))
        cluster.wait(lambda: job(cluster, "third"), 90, "A to take over after B's lifetime expired")
        assert cluster.writes_from("(op-a2)") >= 3
        for name in ("first", "second", "third"):
            st = (cluster.run(NS, name) or {}).get("status") or {}
            assert st.get("phase") == "Pending", (name, st)
        assert cluster.creates("pytorchjobs") == 3  # never a duplicate, whoever acted
    finally:
        for p in procs:
            p.stop()
        cluster.stop()
