"""Hot standby for several operator replicas, on kopf's peering.

kopf pauses a replica while a live peer of higher priority exists, and pauses *every* replica while two
live peers share a priority. It also stays paused, when peering is mandatory, until its peering object
exists. So each replica gets a distinct priority (the oldest replica leads; a rolling update's new pod
waits until the old one leaves), and the operator creates its peering object itself at start-up.

kopf's pause covers its watch handlers only; `is_leader` lets the operator's own loops (resync,
schedules) follow the same rule from the same peering records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

# Far enough in the future that the priority stays positive for decades.
_EPOCH_END = 4_000_000_000


def peering_priority(explicit: int | None, started: float, tie_break: int) -> int:
    """An explicit priority wins; otherwise earlier start -> higher priority, so leadership is stable.

    `tie_break` (0-999) separates replicas started within the same second, which would otherwise share a
    priority and pause each other.
    """
    if explicit is not None:
        return explicit
    return (_EPOCH_END - int(started)) * 1000 + tie_break % 1000


def peering_objects(name: str, namespaces: Iterable[str | None]) -> list[dict[str, Any]]:
    """The peering object(s) kopf expects: one cluster-wide, or one in each watched namespace."""
    ns = list(namespaces)
    if None in ns:
        return [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}]
    return [{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": n}}
            for n in ns if n]


def is_leader(status: Mapping[str, Any] | None, identity: str, priority: int, now: dt.datetime) -> bool:
    """kopf's rule over one peering object's records: no live peer above us and none beside us. A copy of
    kopf's `process_peering_event` (its own needs a running kopf), pinned to it by
    tests/test_operator_peering.py::test_is_leader_agrees_with_kopf."""
    for peer_id, info in (status or {}).items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        try:
            # A record without lastseen counts as seen now, as kopf's own Peer reads it.
            seen = dt.datetime.fromisoformat(str(info["lastseen"])) if "lastseen" in info else now
            seen = seen if seen.tzinfo else seen.replace(tzinfo=dt.timezone.utc)
            alive = seen + dt.timedelta(seconds=int(info.get("lifetime", 60))) > now
            their = int(info.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue  # a record we cannot read is treated as no peer, as kopf does with dead ones
        if alive and their >= priority:
            return False
    return True
