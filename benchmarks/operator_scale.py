"""Operator scale: N TrainingRuns created as fast as the client can, against the tests' API emulator.

PyTorchJobs are never started; a second phase flips every job to Running and times the mirroring.
Measures: time until every run has its PyTorchJob and a Pending/Running status, p50/p99 create->job
latency, API requests (and writes) per run made by the operator, and the operator's peak RSS. Times come
from watch streams (as `kubectl get -w` would see them), so measuring adds no polling load.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

NS = "bench"


def _run_doc(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": f"run-{i:05d}", "namespace": NS},
        "spec": {"task": "risk-classification", "model": {"name": "nlpaueb/legal-bert-base-uncased"},
                 "data": {"train": f"s3://legal-data/risk/{i}.jsonl"}, "registry": {"modelName": "clause-risk"},
                 "resources": {"gpusPerNode": 1}},
    }


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _operator_requests(cluster: Any) -> tuple[int, int]:
    """(all requests, writes) made by the operator; the benchmark's own client is urllib."""
    return (cluster.requests(from_tests=False),
            cluster.requests(from_tests=False, methods=("POST", "PATCH", "PUT", "DELETE")))


class Watcher:
    """Follows a watch stream and stamps when each object first met a condition (no polling load)."""

    def __init__(self, url: str, path: str, accept: Any) -> None:
        import threading

        self.url, self.path, self.accept = url, path, accept
        self.seen: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import http.client
        import json as _json
        from urllib.parse import urlparse

        u = urlparse(self.url)
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=600)
        conn.request("GET", self.path + "?watch=true")
        resp = conn.getresponse()
        while True:
            line = resp.readline()
            if not line:
                return
            line = line.strip()
            if not line:
                continue
            try:
                event = _json.loads(line)
            except ValueError:
                continue
            obj = event.get("object") or {}
            name = (obj.get("metadata") or {}).get("name")
            if name and name not in self.seen and self.accept(obj):
                self.seen[name] = time.perf_counter()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(n: int, workdir: Path, timeout: float = 300.0) -> dict[str, Any]:
    from tests.k8s_harness import Cluster, OperatorProcess

    workdir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster().start()
    operator = OperatorProcess(cluster.kubeconfig(workdir / "kubeconfig", NS), NS, {}, workdir / "operator.log")
    operator.env = {"LEGISTRA_RESYNC_SECONDS": "30"}
    operator.start()
    assert operator.proc is not None
    try:
        time.sleep(3)  # let kopf finish discovery and open its watches
        jobs = Watcher(cluster.url, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs", lambda o: True)
        pending = Watcher(cluster.url, f"/apis/legistra.io/v1alpha1/namespaces/{NS}/trainingruns",
                          lambda o: (o.get("status") or {}).get("phase") in ("Pending", "Running"))
        running = Watcher(cluster.url, f"/apis/legistra.io/v1alpha1/namespaces/{NS}/trainingruns",
                          lambda o: (o.get("status") or {}).get("phase") == "Running")
        base_reqs, base_writes = _operator_requests(cluster)
        created_at: dict[str, float] = {}
        t0 = time.perf_counter()

        def create(i: int) -> None:
            doc = _run_doc(i)
            cluster.apply_run(doc)
            created_at[doc["metadata"]["name"]] = time.perf_counter()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(n)))
        t_created = time.perf_counter() - t0

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(jobs.seen) < n or len(pending.seen) < n):
            time.sleep(0.05)
        job_seen = jobs.seen
        t_all = max([*pending.seen.values(), *job_seen.values()], default=t0) - t0
        latencies = [job_seen[k] - created_at[k] for k in created_at if k in job_seen]
        reqs, writes = _operator_requests(cluster)
        phase1 = {"runs": n, "reconciled": len(job_seen), "create_seconds": t_created, "all_reconciled_seconds": t_all,
                  "p50_latency_s": statistics.median(latencies) if latencies else None,
                  "p99_latency_s": _pct(latencies, 0.99) if latencies else None,
                  "api_requests_per_run": (reqs - base_reqs) / n, "api_writes_per_run": (writes - base_writes) / n}

        # Phase 2: every job goes Running; time until every run mirrors it.
        t1 = time.perf_counter()
        cond = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]

        def flip(i: int) -> None:
            cluster.patch("kubeflow.org/v1", "pytorchjobs", NS, f"run-{i:05d}", {"status": {"conditions": cond}},
                          sub="status")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(flip, range(n)))
        while time.monotonic() < deadline + timeout and len(running.seen) < n:
            time.sleep(0.05)
        phase2 = {"transitions": n, "mirrored": len(running.seen),
                  "all_mirrored_seconds": max(running.seen.values(), default=t1) - t1}
        wall = time.perf_counter() - t0
        # Where the time goes: the operator's CPU, and this process's (the emulator and the client).
        return {"phase1_create": phase1, "phase2_transitions": phase2,
                "operator_peak_rss_mb": _vm_hwm_mb(operator.proc.pid),
                "operator_cpu_seconds": _cpu_seconds(operator.proc.pid),
                "emulator_and_client_cpu_seconds": resource.getrusage(resource.RUSAGE_SELF).ru_utime
                + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
                "wall_seconds": wall, "cores": os.cpu_count()}
    finally:
        operator.stop()
        cluster.stop()
