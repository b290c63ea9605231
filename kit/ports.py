"""Ports for the servers that tests and benchmarks start: below the kernel's ephemeral range.

A port from bind(("", 0)) is an ephemeral port, and so is the local end of every outgoing connection: any
client (of MLflow, S3, the API server) can take it between the choice and the server's bind, and the server
exits with "address already in use" (seen in CI with `mlflow server`). The kernel never gives out ports below
its ephemeral range on its own, so only our own servers use them; each process draws from a slice of its own
(per xdist worker), so two processes of one run never pick the same port either.
"""

from __future__ import annotations

import functools
import os
import random
import socket
from pathlib import Path

SLICES = 16  # 0-7: xdist workers gw0-gw7; 8-15: other processes, by pid
SLICE_SIZE = 700


def ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The lowest port the kernel hands to outgoing connections (Linux's default: 32768)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def slice_index(worker: str | None, pid: int) -> int:
    """This process's slice: an xdist worker's own ("gw3" -> 3), else one by pid among the rest."""
    if worker and worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % (SLICES // 2)
    return SLICES // 2 + pid % (SLICES // 2)


@functools.cache  # per process: the kernel's range and this process's slice do not change
def _slice() -> range:
    start = ephemeral_low() - SLICES * SLICE_SIZE + slice_index(os.environ.get("PYTEST_XDIST_WORKER"),
                                                                os.getpid()) * SLICE_SIZE
    return range(max(start, 1024), max(start, 1024) + SLICE_SIZE)


_given: set[int] = set()


def pick(candidates: list[int], given: set[int]) -> int:
    """The first of `candidates` that this process has not given out and no one listens on; added to `given`."""
    for port in candidates:
        if port in given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        given.add(port)
        return port
    raise RuntimeError(f"no free port left among {len(candidates)} (from {candidates[0]})")


def free_port() -> int:
    """A port no one listens on now, never given out before by this process."""
    ports = list(_slice())
    offset = random.randrange(len(ports))  # a random start: a restarted process rarely meets its own old ports
    return pick(ports[offset:] + ports[:offset], _given)
