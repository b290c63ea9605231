"""Ports for test servers: never in the kernel's ephemeral range, never one slice for two workers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kit import ports


def test_each_worker_and_each_other_process_has_a_slice_of_its_own() -> None:
    assert [ports.slice_index(f"gw{i}", 1234) for i in range(8)] == list(range(8))
    outside = {ports.slice_index(None, pid) for pid in range(100, 116)}
    assert outside == set(range(8, 16))  # processes outside xdist never share a worker's slice
    assert ports.slice_index("master", 9) == ports.slice_index(None, 9)


def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t60999\n")
    assert ports.ephemeral_low(f) == 40000
    assert ports.ephemeral_low(tmp_path / "missing") == 32768


def test_free_ports_are_below_the_ephemeral_range_and_never_repeated() -> None:
    low = ports.ephemeral_low()
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == 50 and all(1024 <= p < low for p in given)


def test_a_port_someone_listens_on_or_already_given_is_skipped() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        given: set[int] = set()
        free = ports.pick([taken, 0], given)  # port 0: the kernel's choice, always bindable
        assert free == 0 and given == {0}
        with pytest.raises(RuntimeError, match="no free port"):
            ports.pick([taken, 0], given)
