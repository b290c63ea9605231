"""Fault campaigns against the real API server, small (the full ones are `make bench`'s,
benchmarks/faults.py): the operator SIGKILLed at random points, and the operator behind a proxy that fails a
fifth of its requests and cuts watch streams. Each must end with every run Succeeded, no job created twice,
no status lost or moved backwards. The verdict itself is a pure function with its own table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.faults import judge, kill_campaign, proxy_campaign
from kit.apiserver import ApiServer


def st(phase: str, attempt: int = 1, gen: int = 1) -> dict[str, Any]:
    return {"phase": phase, "attempt": attempt, "observedGeneration": gen}


CLEAN_RETRY = [st("Pending"), st("Running"), st("Retrying"), st("Pending", 2), st("Running", 2), st("Succeeded", 2)]


@pytest.mark.parametrize(("history", "jobs", "expected", "verdict"), [
    ({"r": [st("Pending"), st("Running"), st("Succeeded")]}, {"r": {"u1": 1}}, 1, {}),
    ({"r": CLEAN_RETRY}, {"r": {"u1": 1, "u2": 2}}, 2, {}),
    ({"r": [st("Pending"), st("Succeeded")]}, {"r": {"u1": 1, "u2": 1}}, 1, {"duplicate_jobs": 1}),
    ({"r": [*CLEAN_RETRY[:5], st("Retrying", 2), st("Pending", 3), st("Succeeded", 3)]},
     {"r": {"u1": 1, "u2": 2, "u3": 3}}, 2, {"extra_attempts": 1}),
    ({"r": [st("Running"), st("Pending"), st("Succeeded")]}, {"r": {"u1": 1}}, 1, {"regressed_statuses": 1}),
    ({"r": [st("Pending", 2), st("Running", 1), st("Succeeded", 2)]}, {"r": {"u2": 2}}, 2,
     {"regressed_statuses": 1}),
    ({"r": [st("Succeeded"), st("Running"), st("Succeeded")]}, {"r": {"u1": 1}}, 1, {"regressed_statuses": 1}),
    ({"r": [st("Running", gen=2), st("Succeeded", gen=1)]}, {"r": {"u1": 1}}, 1, {"regressed_statuses": 1}),
    ({"r": [st("Running"), {}, st("Succeeded")]}, {"r": {"u1": 1}}, 1, {"lost_statuses": 1}),
    ({"r": [st("Running"), {"phase": "Running"}, st("Succeeded")]}, {"r": {"u1": 1}}, 1, {"lost_statuses": 1}),
    ({"r": [st("Pending"), st("Running")]}, {"r": {"u1": 1}}, 1, {"not_converged": 1}),
    ({}, {}, 1, {"not_converged": 1}),
])
def test_the_verdict_counts_every_kind_of_harm(history: dict[str, Any], jobs: dict[str, Any], expected: int,
                                                verdict: dict[str, int]) -> None:
    got = judge(history, jobs, {"r": expected}).as_dict()
    counts = {k: got[k] for k in ("duplicate_jobs", "extra_attempts", "regressed_statuses", "lost_statuses",
                                  "not_converged")}
    assert counts == {k: verdict.get(k, 0) for k in counts}
    assert judge(history, jobs, {"r": expected}).clean is (not verdict)


@pytest.fixture(scope="module")
def crds(apiserver: ApiServer) -> ApiServer:
    apiserver.install_crds()
    return apiserver


@pytest.mark.apiserver
@pytest.mark.slow
def test_the_operator_killed_at_random_points_loses_and_duplicates_nothing(crds: ApiServer, tmp_path: Path) -> None:
    res = kill_campaign(crds, tmp_path, runs=12, kills=5, seed=3, timeout=90)
    assert res["kills"] == 5 and len(res["kill_seconds"]) == 5
    assert res["clean"], json.dumps(res)
    assert res["duplicate_jobs"] == res["extra_attempts"] == res["regressed_statuses"] == res["lost_statuses"] \
        == res["not_converged"] == 0


@pytest.mark.apiserver
@pytest.mark.slow
def test_every_run_converges_through_a_proxy_that_fails_a_fifth_of_the_requests(crds: ApiServer,
                                                                                  tmp_path: Path) -> None:
    res = proxy_campaign(crds, tmp_path, runs=10, rate=0.2, watch_lifetime=3.0, seed=5, timeout=90)
    assert res["clean"], json.dumps(res)
    # The faults really happened, of every kind, on reads and on writes.
    assert {"500-before", "500-after", "429", "409"} <= set(res["injected"]), res["injected"]
    assert res["injected_total"] >= 0.1 * res["requests_total"]
    assert res["watches_cut"] >= 2 and res["requests"]["WATCH"] > 2  # cut, and resumed
    assert res["operator_alive"], "the operator process exited under the faults"
