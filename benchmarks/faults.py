"""Fault campaigns against the real API server (envtest): the operator killed at random points, and the
operator behind a proxy that fails a fifth of its requests. Each campaign reports duplicate jobs, lost or
regressed statuses and runs that never converge (targets: 0, 0, 0), and what the faults cost in requests.

A stand-in training-operator drives every PyTorchJob Created -> Running -> Succeeded (or Failed on its
first attempt, for every `fail_every`-th run, so retries happen under the faults too) and plays the garbage
collector's part in foreground deletion. Two watches, straight to the API server, record every version of
every run and every job ever created; the verdict is computed from that record alone.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kit.harness import Poller, now_iso
from kit.objects import run_doc as kit_run_doc
from legistra.operator.attempts import job_attempt

RUNS = ("legistra.io/v1alpha1", "trainingruns")
JOBS = ("kubeflow.org/v1", "pytorchjobs")
# Order of phases within one attempt; a status may only move forward (or to a later attempt). Retrying is the
# end of a failed attempt (the next one starts as Pending with the attempt number raised).
RANK = {"Pending": 0, "Suspended": 0, "Running": 1, "Retrying": 2, "Succeeded": 2, "Failed": 2}


# -- the verdict: pure -------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    duplicate_jobs: int  # jobs created beyond one per (run, attempt)
    extra_attempts: int  # attempts beyond what the stand-in's failures called for
    regressed: list[str]  # "run: what went backwards"
    lost: list[str]  # "run: what disappeared"
    not_converged: list[str]  # runs not Succeeded at the end

    @property
    def clean(self) -> bool:
        return not (self.duplicate_jobs or self.extra_attempts or self.regressed or self.lost or self.not_converged)

    def as_dict(self) -> dict[str, Any]:
        return {"duplicate_jobs": self.duplicate_jobs, "extra_attempts": self.extra_attempts,
                "regressed_statuses": len(self.regressed), "lost_statuses": len(self.lost),
                "not_converged": len(self.not_converged),
                "examples": (self.regressed + self.lost + self.not_converged)[:10]}


def judge(history: dict[str, list[dict[str, Any]]], jobs: dict[str, dict[str, int]],
          attempts_expected: dict[str, int]) -> Verdict:
    """`history`: each run's statuses in resourceVersion order; `jobs`: per run, job uid -> the attempt it was
    built for; `attempts_expected`: per run, the attempts its job failures call for."""
    duplicate = 0
    extra = 0
    regressed: list[str] = []
    lost: list[str] = []
    not_converged: list[str] = []
    for run, expected in sorted(attempts_expected.items()):
        built = jobs.get(run, {})
        per_attempt: dict[int, int] = {}
        for attempt in built.values():
            per_attempt[attempt] = per_attempt.get(attempt, 0) + 1
        duplicate += sum(n - 1 for n in per_attempt.values())
        statuses = history.get(run, [])
        final = statuses[-1] if statuses else {}
        extra += max(0, int(final.get("attempt") or 1) - expected, len(per_attempt) - expected)
        if final.get("phase") != "Succeeded":
            not_converged.append(f"{run}: ends {final.get('phase') or 'without a status'}")
        before: dict[str, Any] = {}
        for st in statuses:
            if before.get("phase") and not st.get("phase"):
                lost.append(f"{run}: phase {before['phase']} vanished")
            elif before.get("attempt") and not st.get("attempt"):
                lost.append(f"{run}: attempt {before['attempt']} vanished")
            elif before.get("phase") and st.get("phase"):
                was = (int(before.get("attempt") or 1), RANK.get(before["phase"], 0))
                now = (int(st.get("attempt") or 1), RANK.get(st["phase"], 0))
                if now < was or (before["phase"] == "Succeeded" and st["phase"] != "Succeeded"):
                    regressed.append(f"{run}: {before['phase']}#{was[0]} -> {st['phase']}#{now[0]}")
                if int(st.get("observedGeneration") or 0) < int(before.get("observedGeneration") or 0):
                    regressed.append(f"{run}: observedGeneration went back")
            before = st
    return Verdict(duplicate, extra, regressed, lost, not_converged)


# -- the world around the operator ----------------------------------------------------------------------------
class Recorder:
    """Watches runs and jobs in one namespace straight from the API server (resuming where a stream ended)."""

    def __init__(self, rest: Any, ns: str) -> None:
        self.rest, self.ns = rest, ns
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.jobs: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._follow, args=(gv, plural), daemon=True)
                         for gv, plural in (RUNS, JOBS)]

    def start(self) -> Recorder:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _events(self, gv: str, plural: str) -> Iterator[dict[str, Any]]:
        version = ""
        while not self._stop.is_set():
            path = self.rest.path(gv, plural, self.ns) + f"?watch=true&timeoutSeconds=30&resourceVersion={version}"
            try:
                with self.rest.open(path, timeout=60) as resp:
                    for line in resp:
                        event = json.loads(line)
                        if event.get("type") == "ERROR":  # 410 Gone: start over from now
                            version = ""
                            break
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        yield event
            except OSError:
                time.sleep(0.2)

    def _follow(self, gv: str, plural: str) -> None:
        for event in self._events(gv, plural):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if plural == "trainingruns":
                st = obj.get("status") or {}
                seen = self.history.setdefault(name, [])
                if not seen or seen[-1] != st:
                    seen.append(st)
            elif event["type"] == "ADDED":
                self.jobs.setdefault(name, {})[obj["metadata"]["uid"]] = job_attempt(obj)


def job_conditions(*types: str) -> dict[str, Any]:
    """A PyTorchJob status patch, the training-operator's way: the last condition is the state; Running turns
    False once it ends."""
    return {"status": {"conditions": [
        {"type": t, "status": "False" if t == "Running" and t != types[-1] else "True",
         "reason": f"PyTorchJob{t}", "lastTransitionTime": now_iso()} for t in types]}}


class StandInTrainingOperator(Poller):
    """Kubeflow's training-operator and the garbage collector, as far as our runs need them."""

    interval = 0.3

    def __init__(self, rest: Any, ns: str, fail_first: set[str], run_seconds: float = 1.0) -> None:
        super().__init__()
        self.rest, self.ns, self.fail_first, self.run_seconds = rest, ns, fail_first, run_seconds
        self.started: dict[str, float] = {}

    def tick(self) -> None:
        for job in self.rest.list(*JOBS, self.ns):
            meta = job["metadata"]
            name, uid = meta["name"], meta["uid"]
            if meta.get("deletionTimestamp"):
                if meta.get("finalizers"):  # foreground deletion: no pods to wait for
                    self.rest.patch(*JOBS, self.ns, name, {"metadata": {"finalizers": None}})
                continue
            types = [c["type"] for c in (job.get("status") or {}).get("conditions") or []]
            if not types:
                self.rest.patch(*JOBS, self.ns, name, job_conditions("Created", "Running"), sub="status")
                self.started[uid] = time.monotonic()
            elif types[-1] == "Running" and time.monotonic() - self.started.setdefault(uid, time.monotonic()) \
                    >= self.run_seconds:
                end = "Failed" if name in self.fail_first and job_attempt(job) == 1 else "Succeeded"
                self.rest.patch(*JOBS, self.ns, name, job_conditions("Created", "Running", end), sub="status")


def run_doc(ns: str, i: int) -> dict[str, Any]:
    return kit_run_doc(f"run-{i:03d}", ns, data={"train": f"s3://legal-data/risk/{i}.jsonl"},
                       resources={"gpusPerNode": 1}, runPolicy={"maxAttempts": 3, "retryDelaySeconds": 1})


@dataclass
class Campaign:
    """One namespace of runs, the stand-in and the recorder around one operator process at a time."""

    api: Any  # kit.apiserver.ApiServer
    workdir: Path
    runs: int
    fail_every: int = 5
    ns: str = ""
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rest = self.api.rest()
        self.ns = self.api.namespace("faults")
        self.names = [f"run-{i:03d}" for i in range(self.runs)]
        self.fail_first = {n for i, n in enumerate(self.names) if self.fail_every and i % self.fail_every == 0}
        self.recorder = Recorder(self.rest, self.ns).start()
        self.standin = StandInTrainingOperator(self.rest, self.ns, self.fail_first).start()
        time.sleep(0.5)  # the watches are open before the first run exists

    def operator(self, kubeconfig: Path, log: Path) -> Any:
        from kit.harness import OperatorProcess

        return OperatorProcess(kubeconfig, self.ns, {"LEGISTRA_RESYNC_SECONDS": "3"}, log)

    def create(self, indices: range) -> None:
        for i in indices:
            self.rest.create(*RUNS, self.ns, run_doc(self.ns, i))

    def converged(self) -> bool:
        return all((self.recorder.history.get(n) or [{}])[-1].get("phase") == "Succeeded" for n in self.names)

    def wait(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout and not self.converged():
            time.sleep(0.25)
        return time.monotonic() - t0

    def verdict(self) -> Verdict:
        time.sleep(1.0)  # the recorder's streams catch up with the last writes
        expected = {n: 2 if n in self.fail_first else 1 for n in self.names}
        return judge(self.recorder.history, self.recorder.jobs, expected)

    def close(self) -> None:
        self.standin.stop()
        self.recorder.stop()
        self.api.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)


def kill_campaign(api: Any, workdir: Path, runs: int = 50, kills: int = 20, seed: int = 7,
                  timeout: float = 180) -> dict[str, Any]:
    """SIGKILL the operator at `kills` random moments while `runs` runs are created, fail and retry, and finish;
    a new operator process starts at once each time (as a Deployment's would)."""
    rng = random.Random(seed)
    c = Campaign(api, workdir / "kill", runs)
    try:
        op = c.operator(api.kubeconfig, c.workdir / "operator.log").start()
        waves = [range(k * runs // kills, (k + 1) * runs // kills) for k in range(kills)]
        kill_times: list[float] = []
        t0 = time.monotonic()
        for wave in waves:
            c.create(wave)
            time.sleep(rng.uniform(0.3, 3.0))  # a random point: start-up, list, creates, status writes
            op.kill()
            kill_times.append(round(time.monotonic() - t0, 2))
            op.start()
        settle = c.wait(timeout)
        op.stop()
        verdict = c.verdict()
        return {"runs": runs, "kills": kills, "seed": seed, "kill_seconds": kill_times,
                "converged_seconds_after_last_kill": round(settle, 2), **verdict.as_dict(), "clean": verdict.clean}
    finally:
        c.close()


def proxy_campaign(api: Any, workdir: Path, runs: int = 50, rate: float = 0.2, watch_lifetime: float = 5.0,
                   seed: int = 11, timeout: float = 180) -> dict[str, Any]:
    """The operator behind the fault proxy while `runs` runs go through their lives (some with a retry)."""
    from kit.fault_proxy import FaultProxy, Faults, kubeconfig_for

    c = Campaign(api, workdir / f"proxy-{rate}", runs)
    proxy = FaultProxy(api.server, api.ssl_context(), Faults(rate, watch_lifetime, seed)).start()
    kubeconfig = c.workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(proxy.url, c.ns)))
    op = c.operator(kubeconfig, c.workdir / "operator.log").start()
    try:
        t0 = time.monotonic()
        c.create(range(runs))
        took = c.wait(timeout)
        op.stop()
        verdict = c.verdict()
        tally = proxy.tally.as_dict()
        return {"runs": runs, "fault_rate": rate, "watch_lifetime_s": watch_lifetime, "seed": seed,
                "converged_seconds": round(took, 2), "operator_alive": op.proc is not None and
                op.proc.returncode in (0, -15, None), **tally,
                "requests_per_run": round(tally["requests_total"] / runs, 2),
                **verdict.as_dict(), "clean": verdict.clean, "wall_seconds": round(time.monotonic() - t0, 2)}
    finally:
        op.stop()
        proxy.stop()
        c.close()


def run(workdir: Path, runs: int = 50, kills: int = 20) -> dict[str, Any]:
    """`make bench`'s campaigns: kills, then the proxy without faults (the baseline) and with 20% faults."""
    from kit import apiserver

    server = apiserver.start()
    api = next(server)
    try:
        api.install_crds()
        kill = kill_campaign(api, workdir, runs, kills)
        baseline = proxy_campaign(api, workdir, runs, rate=0.0, watch_lifetime=0.0)
        faulty = proxy_campaign(api, workdir, runs, rate=0.2, watch_lifetime=5.0)
        faulty["extra_requests"] = faulty["requests_total"] - baseline["requests_total"]
        faulty["extra_requests_ratio"] = round(faulty["requests_total"] / max(1, baseline["requests_total"]), 2)
        return {"sigkill": kill, "proxy_baseline": baseline, "proxy_faults": faulty}
    finally:
        server.close()
