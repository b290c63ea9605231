"""Operator scale: N TrainingRuns created as fast as the client can, against the tests' API emulator or the
real API server (envtest: kube-apiserver v1.20 + etcd on the same machine).

PyTorchJobs are never started; a second phase flips every job to Running and times the mirroring.
Measures: time until every run has its PyTorchJob and a Pending/Running status, p50/p99 create->job
latency, API requests (and writes) per run made by the operator, and the operator's peak RSS. Times come
from watch streams (as `kubectl get -w` would see them), so measuring adds no polling load.
"""

from __future__ import annotations

import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

NS = "bench"
ROOT = Path(__file__).resolve().parent.parent
WRITES = ("POST", "PATCH", "PUT", "DELETE")


def _run_doc(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": f"run-{i:05d}", "namespace": NS},
        "spec": {"task": "risk-classification", "model": {"name": "nlpaueb/legal-bert-base-uncased"},
                 "data": {"train": f"s3://legal-data/risk/{i}.jsonl"}, "registry": {"modelName": "clause-risk"},
                 "resources": {"gpusPerNode": 1}},
    }


def _vm_mb(pid: int, field: str = "VmHWM") -> float:
    """VmHWM: peak resident memory so far; VmRSS: resident now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watcher:
    """Follows a watch stream and stamps when each object first met each condition (no polling load: one
    stream per resource, however many conditions)."""

    def __init__(self, open_stream: Callable[[str], Any], path: str,
                 conditions: dict[str, Callable[[dict[str, Any]], bool]]) -> None:
        self.open_stream, self.path, self.conditions = open_stream, path, conditions
        self.seen: dict[str, dict[str, float]] = {label: {} for label in conditions}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.open_stream(self.path + "?watch=true&timeoutSeconds=900") as resp:
            for raw in resp:
                line = raw.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                obj = event.get("object") or {}
                name = (obj.get("metadata") or {}).get("name")
                for label, accept in self.conditions.items():
                    if name and name not in self.seen[label] and accept(obj):
                        self.seen[label][name] = time.perf_counter()


class Emulator:
    """The tests' API emulator (kmock) in a process of its own (`python -m kit.harness`): the benchmark's
    client threads would otherwise share its interpreter lock. It counts each request by client."""

    name = "emulator"

    def __init__(self, workdir: Path) -> None:
        from kit.harness import Cluster

        log = workdir / "emulator.log"
        with log.open("w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "kit.harness"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.cluster = Cluster()  # its client half only: requests go to the emulator's process
        self.cluster.url = self.process.stdout.readline().strip()
        if not self.cluster.url:  # say why: this once failed in a test run with nothing kept to tell
            code = self.process.wait(timeout=30)
            raise RuntimeError(f"the API emulator did not start (exit {code}): {log.read_text()[-2000:]}")
        self.kubeconfig = self.cluster.kubeconfig(workdir / "kubeconfig", NS)

    def open_stream(self, path: str) -> Any:
        import urllib.request

        return urllib.request.urlopen(self.cluster.url + path, timeout=900)

    def create(self, doc: dict[str, Any]) -> None:
        self.cluster.apply_run(doc)

    def job_status(self, name: str, status: dict[str, Any]) -> None:
        self.cluster.patch("kubeflow.org/v1", "pytorchjobs", NS, name, {"status": status}, sub="status")

    def operator_requests(self) -> tuple[int, int]:
        """(all requests, writes) made by the operator; the benchmark's own client is urllib."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("counts\n")
        self.process.stdin.flush()
        self.cluster.counts = {(m, p, t == "tests"): n for m, p, t, n in json.loads(self.process.stdout.readline())}
        return (self.cluster.requests(from_tests=False),
                self.cluster.requests(from_tests=False, methods=WRITES))

    def server_cpu_seconds(self) -> float:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.communicate("stop\n", timeout=30)


class RealApiServer:
    """kube-apiserver + etcd (envtest). The operator's requests are the server's own request counters
    (`apiserver_request_total`) less the benchmark's, which it counts itself; watches are not requests here."""

    name = "apiserver"

    def __init__(self, workdir: Path, api: Any = None) -> None:
        """`api`: a running kit.apiserver.ApiServer to use (and leave running); by default one of its own."""
        from kit import apiserver

        self._server = apiserver.start() if api is None else None
        self.api = api if self._server is None else next(self._server)
        self.api.install_crds()
        self.api.ensure_namespace(NS)
        self.rest = self.api.rest()
        self.kubeconfig = self.api.kubeconfig
        self.ours = {"all": 0, "writes": 0}
        self._lock = threading.Lock()

    def open_stream(self, path: str) -> Any:
        return self.rest.open(path, timeout=900)

    def create(self, doc: dict[str, Any]) -> None:
        self.rest.create("legistra.io/v1alpha1", "trainingruns", NS, doc)
        self._count_ours()

    def job_status(self, name: str, status: dict[str, Any]) -> None:
        self.rest.patch("kubeflow.org/v1", "pytorchjobs", NS, name, {"status": status}, sub="status")
        self._count_ours()

    def _count_ours(self) -> None:
        with self._lock:  # eight creator threads
            self.ours["all"] += 1
            self.ours["writes"] += 1

    def server_cpu_seconds(self) -> float | None:
        return None  # kube-apiserver and etcd: processes of their own, not counted here

    def operator_requests(self) -> tuple[int, int]:
        """Resource requests served (not watches; not /metrics, discovery or health: resource=""), and the
        writes among them that succeeded, less ours."""
        total = writes = 0
        for line in self.rest.request_text("/metrics").splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            text, value = line.rsplit(" ", 1)
            labels = dict(re.findall(r'(\w+)="([^"]*)"', text))
            verb = labels.get("verb", "")
            if not labels.get("resource") or verb in ("WATCH", "CONNECT"):
                continue
            total += int(float(value))
            # A write refused with 409 (a stale copy, re-read and retried) changed nothing: not a write.
            writes += int(float(value)) if verb in WRITES and labels.get("code", "").startswith("2") else 0
        return total - self.ours["all"], writes - self.ours["writes"]

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def calibration_ms(repeats: int = 5) -> float:
    """This machine's single-core speed just now: the best time of a fixed pure-Python workload (JSON both ways,
    dicts, sorting), in ms; lower is faster. The shared 2-core machines vary by 20% and more between runs of the
    same code, so a figure is comparable with another only at a similar calibration."""
    doc = {"items": [{"name": f"run-{i:05d}", "labels": {"a": str(i), "b": "x" * (i % 17)}, "n": i * 0.5}
                     for i in range(200)]}
    best = float("inf")
    gc.disable()  # a collection would walk this process's heap, whose size (torch imported or not) is not the machine
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(200):
                back = json.loads(json.dumps(doc, sort_keys=True))
                sorted((item["name"] for item in back["items"]), reverse=True)
            best = min(best, time.perf_counter() - start)
    finally:
        gc.enable()
    return best * 1000


def _wait_for_slot(start: float, i: int, rate: float | None) -> None:
    """Paced: the i-th request of a phase leaves at `start + i / rate` (perf_counter); a burst never waits."""
    if rate is not None and (wait := start + i / rate - time.perf_counter()) > 0:
        time.sleep(wait)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(n: int, workdir: Path, timeout: float = 300.0, backend: str = "emulator", api: Any = None,
        rate: float | None = None) -> dict[str, Any]:
    """`backend`: "emulator" or "apiserver" (`api`: an envtest server already running, else one is started).
    `rate`: create the runs, and then flip their jobs, at this steady rate (per second) instead of as fast as the
    client can: under a burst faster than the operator the latencies measure the queue, at a rate it keeps up
    with its own delay."""
    from kit.harness import OperatorProcess

    workdir.mkdir(parents=True, exist_ok=True)
    calibration = calibration_ms()
    own_cpu_at_start = _cpu_seconds(os.getpid())  # `make bench` runs both backends in one process
    cluster: Emulator | RealApiServer = Emulator(workdir) if backend == "emulator" \
        else RealApiServer(workdir, api)
    operator = OperatorProcess(cluster.kubeconfig, NS, {}, workdir / "operator.log")
    operator.env = {"LEGISTRA_RESYNC_SECONDS": "30"}
    operator.start()
    assert operator.proc is not None
    try:
        time.sleep(3)  # let kopf finish discovery and open its watches
        job_watch = Watcher(cluster.open_stream, f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs",
                            {"created": lambda o: True})
        run_watch = Watcher(cluster.open_stream, f"/apis/legistra.io/v1alpha1/namespaces/{NS}/trainingruns", {
            "pending": lambda o: (o.get("status") or {}).get("phase") in ("Pending", "Running"),
            "running": lambda o: (o.get("status") or {}).get("phase") == "Running"})
        jobs, pending, running = job_watch.seen["created"], run_watch.seen["pending"], run_watch.seen["running"]
        base_reqs, base_writes = cluster.operator_requests()
        created_at: dict[str, float] = {}
        t0 = time.perf_counter()

        def create(i: int) -> None:
            doc = _run_doc(i)
            _wait_for_slot(t0, i, rate)
            cluster.create(doc)
            created_at[doc["metadata"]["name"]] = time.perf_counter()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(n)))
        t_created = time.perf_counter() - t0

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(jobs) < n or len(pending) < n):
            time.sleep(0.05)
        t_all = max([*pending.values(), *jobs.values()], default=t0) - t0
        latencies = [jobs[k] - created_at[k] for k in created_at if k in jobs]
        time.sleep(1.0)  # the operator's last status writes land before the count
        # Against the final peak: what a backlog cost, and in which phase.
        rss_reconciled, peak_reconciled = _vm_mb(operator.proc.pid, "VmRSS"), _vm_mb(operator.proc.pid)
        reqs, writes = cluster.operator_requests()
        phase1 = {"runs": n, "paced_rate": rate, "reconciled": len(jobs), "create_seconds": t_created,
                  "all_reconciled_seconds": t_all,
                  "p50_latency_s": statistics.median(latencies) if latencies else None,
                  "p99_latency_s": _pct(latencies, 0.99) if latencies else None,
                  "api_requests_per_run": (reqs - base_reqs) / n, "api_writes_per_run": (writes - base_writes) / n}

        # Phase 2: every job goes Running; time until every run mirrors it.
        t1 = time.perf_counter()
        cond = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]

        def flip(i: int) -> None:
            _wait_for_slot(t1, i, rate)
            cluster.job_status(f"run-{i:05d}", {"conditions": cond})
            flipped_at[f"run-{i:05d}"] = time.perf_counter()

        flipped_at: dict[str, float] = {}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(flip, range(n)))
        while time.monotonic() < deadline + timeout and len(running) < n:
            time.sleep(0.05)
        mirror = [running[k] - flipped_at[k] for k in flipped_at if k in running]
        phase2 = {"transitions": n, "mirrored": len(running),
                  "all_mirrored_seconds": max(running.values(), default=t1) - t1,
                  "p50_latency_s": statistics.median(mirror) if mirror else None,
                  "p99_latency_s": _pct(mirror, 0.99) if mirror else None}
        wall = time.perf_counter() - t0
        # Where the time goes: the operator's CPU, the emulator's and this process's (the client's).
        return {"backend": cluster.name, "phase1_create": phase1, "phase2_transitions": phase2,
                "operator_peak_rss_mb": _vm_mb(operator.proc.pid),
                "operator_rss_reconciled_mb": rss_reconciled, "operator_peak_rss_phase1_mb": peak_reconciled,
                "operator_cpu_seconds": _cpu_seconds(operator.proc.pid),
                "emulator_cpu_seconds": cluster.server_cpu_seconds(),
                "client_cpu_seconds": _cpu_seconds(os.getpid()) - own_cpu_at_start,
                "wall_seconds": wall, "cores": os.cpu_count(), "calibration_ms": calibration}
    finally:
        operator.stop()
        cluster.stop()
