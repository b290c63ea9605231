"""Test-side cluster: kmock's KubernetesEmulator over HTTP, a Kubeflow training-operator stand-in that runs
every PyTorchJob replica as local processes (with the environment the real one injects), and a garbage
collector for owner references. The operator under test talks to all of it over plain HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import yaml

from kit.ports import free_port
from legistra.cli.logs import COMPLETION_INDEX
from legistra.operator.attempts import ATTEMPT_ANNOTATION
from legistra.operator.backends import BACKENDS, QUEUE_LABEL

VENV_BIN = Path(sys.executable).parent

RESOURCES = {
    # kopf's backbone: without these it finishes discovery and silently never watches anything.
    "v1/namespaces": ("Namespace", False, set()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, set()),
    "v1/events": ("Event", True, set()),
    "v1/configmaps": ("ConfigMap", True, set()),
    "v1/secrets": ("Secret", True, set()),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True, set()),
    "v1/pods": ("Pod", True, {"status"}),
    "legistra.io/v1alpha1/trainingruns": ("TrainingRun", True, {"status"}),
    "legistra.io/v1alpha1/trainingschedules": ("TrainingSchedule", True, {"status"}),
    "kubeflow.org/v1/pytorchjobs": ("PyTorchJob", True, {"status"}),
    "trainer.kubeflow.org/v1alpha1/trainjobs": ("TrainJob", True, {"status"}),
    "trainer.kubeflow.org/v1alpha1/clustertrainingruntimes": ("ClusterTrainingRuntime", False, set()),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True, set()),
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", False, set()),
}
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def selector(text: str) -> list[tuple[str, str | None]]:
    """An equality-based label selector (`a=b,c`), which kmock ignores: (key, value or None for "has key")."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = term.partition("=")
        terms.append((key.rstrip("="), value.lstrip("=") if "=" in term else None))
    return terms


def matches(labels: dict[str, str], terms: list[tuple[str, str | None]]) -> bool:
    return all(key in labels and (value is None or labels[key] == value) for key, value in terms)


def lean_emulator() -> Any:
    """kmock's KubernetesEmulator that forgets each request once it is served, after counting it.

    kmock keeps every request for assertions and matches each new one by walking that whole history, so a
    long run turns quadratic (a benchmark of 1,000 runs spent most of its CPU there). The tests only need
    counts, so a request stays in the history while in flight (matching needs it) and leaves with its reply.
    """
    import kmock
    from aiohttp import web

    ROUTES = {kmock.action.LIST: "_serve_list", kmock.action.FETCH: "_serve_fetch",
              kmock.action.CREATE: "_serve_create", kmock.action.UPDATE: "_serve_update",
              kmock.action.DELETE: "_serve_delete"}  # kmock's fallback reactions (not WATCH: a stream)

    class DirectRoutes(kmock.RawHandler):
        """kmock answers a request by matching it against every reaction (kmock's own 14 here), sorted anew for
        each request, and renders the answer through its general payload machinery: together ~40% of the
        emulator's CPU at 2,000 runs. While no test has added a reaction of its own, a resource request goes
        straight to the handler that kmock's fallback reaction for its action would pick, and its answer straight
        to JSON; watches and everything else take kmock's way."""

        builtin_reactions: int | None = None  # how many reactions kmock itself installs (set at construction)

        async def _handle(self, request: Any) -> Any:
            serve = self._direct_route(request)
            if serve is None:
                return await super()._handle(request)
            return web.json_response(await serve(request))

        def _direct_route(self, request: Any) -> Any:
            name = ROUTES.get(request.action)
            if name is None or request.resource is None or not request.resource.plural:
                return None  # not a resource request (API discovery parses as a resource without a plural)
            if len(getattr(self, "_payloads", ())) != self.builtin_reactions:
                return None  # a test's own reaction may take it: kmock decides
            return getattr(self, name, None)  # kmock's private names: should they change, only speed is lost

    class LeanEmulator(kmock.KubernetesEmulator, DirectRoutes):
        counts: dict[tuple[str, str, bool], int]
        named_counts: dict[tuple[str, str, str], int]
        writes_by_agent: dict[str, int]
        pod_logs: dict[tuple[str, str], Pod]

        by_name: dict[str, list[Any]]
        by_resource: dict[tuple[Any, ...], list[Any]]
        indexed: int

        def __attrs_post_init__(self) -> None:
            super().__attrs_post_init__()
            self.builtin_reactions = len(getattr(self, "_payloads", ()))

        def _index(self) -> dict[Any, Any]:
            """Stored keys by name and by resource. kmock keeps a deleted object's key (soft delete) and a dict
            keeps insertion order, so only the keys added since the last call need indexing."""
            stored = self._objects._objects
            if getattr(self, "indexed", 0) > len(stored):  # keys went away after all: index again
                self.indexed = 0
            if getattr(self, "indexed", 0) == 0:
                self.by_name, self.by_resource, self.indexed = {}, {}, 0
            if self.indexed != len(stored):
                for key in itertools.islice(stored.keys(), self.indexed, None):
                    self.by_name.setdefault(key[2], []).append(key)
                    self.by_resource.setdefault(self._resource_key(key[0]), []).append(key)
                self.indexed = len(stored)
            return stored

        @staticmethod
        def _resource_key(resource: Any) -> tuple[Any, ...]:
            return (resource.group, resource.version, resource.plural)  # what kmock's resource equality compares

        def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:
            # kmock's own scan compares every stored object with every request: quadratic in a long run (every
            # pod list of the operator walked 50,000 objects at 10,000 runs). A named request looks its name up
            # first, a list its resource; the answer is the same. A private hook: if kmock renames it, only speed
            # is lost.
            check = self._KubernetesEmulator__check  # type: ignore[attr-defined]
            wanted = selector(request.params.get("labelSelector", ""))
            stored = self._index()
            if request.name is not None:
                keys = self.by_name.get(request.name, [])
            elif request.resource is not None:
                keys = self.by_resource.get(self._resource_key(request.resource), [])
            else:
                keys = list(stored.keys())
            return [stored[key] for key in keys
                    if check(request, *key, strict=strict)
                    and matches(stored[key].get("metadata", {}).get("labels") or {}, wanted)]

        async def _render_error(self, exc: Exception) -> Any:
            # kmock puts a formatted traceback in every 404's details: a third of a missed GET's cost, unread.
            if not isinstance(exc, kmock.KubernetesError) or exc.details:
                return await super()._render_error(exc)
            return web.json_response({"apiVersion": "v1", "kind": "Status", "metadata": {}, "code": exc.status,
                                      "status": "Failure", "reason": exc.reason or type(exc).__name__,
                                      "message": exc.message or repr(exc), "details": {}}, status=exc.status)

        def _get_resources(self) -> list[Any]:
            # Every resource is declared up front (RESOURCES); kmock would also scan every stored object per list.
            return list(kmock.KubernetesScaffold._get_resources(self))

        def _forget(self, request: Any) -> None:
            log = self._requests
            for i in range(len(log) - 1, -1, -1):  # by identity: similar requests compare equal
                if log[i] is request:
                    del log[i]
                    return

        async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
            self._forget(request)  # matched already; a watch would otherwise sit in the history for minutes
            async for chunk in super()._serve_watch(request):
                yield chunk

        async def _handle(self, request: Any) -> Any:
            try:
                path = request.url.path
                if path.endswith("/log") and "/pods/" in path:
                    return await self._pod_log(request)
                self._generate_name(request)
                self._created_at(request)
                self._kueue_webhook(request)
                return await super()._handle(request)
            finally:
                self._forget(request)
                method = request.method.value if hasattr(request.method, "value") else request.method
                key = (str(method), request.resource.plural if request.resource is not None else "",
                       "urllib" in request.headers.get("User-Agent", ""))
                self.counts[key] = self.counts.get(key, 0) + 1
                if request.name and not key[2]:  # the operator's requests for one named object
                    named = (key[0], key[1], str(request.name))
                    self.named_counts[named] = self.named_counts.get(named, 0) + 1
                if key[0] != "GET":
                    agent = request.headers.get("User-Agent", "")
                    self.writes_by_agent[agent] = self.writes_by_agent.get(agent, 0) + 1

        @staticmethod
        def _generate_name(request: Any) -> None:
            """The API server names a created object that has only `generateName` (kopf's and our Events); kmock
            would file them all under no name, and every post after the first would be refused as a conflict."""
            meta = request.data.get("metadata") if isinstance(request.data, dict) else None
            if request.action == kmock.action.CREATE and meta and meta.get("generateName") and not meta.get("name"):
                # 10 characters, not the API server's 5: that one retries a name already taken, kmock refuses it
                # (5 hex characters met 128 conflicts among a 10,000-run benchmark's 20,000 Events).
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:10]

        @staticmethod
        def _created_at(request: Any) -> None:
            """The API server stamps every created object (kmock does not): what the operator's grace periods
            (a checkpoint volume unbound for a minute) count from."""
            meta = request.data.get("metadata") if isinstance(request.data, dict) else None
            if request.action == kmock.action.CREATE and meta is not None:
                meta.setdefault("creationTimestamp", now_iso())

        @staticmethod
        def _kueue_webhook(request: Any) -> None:
            """Kueue's mutating webhook: a job created with a queue-name label is created suspended, for Kueue to
            admit (kueue pkg/controller/jobframework, ApplyDefaultForSuspend)."""
            data = request.data if isinstance(request.data, dict) else None
            if request.action != kmock.action.CREATE or not data or data.get("kind") not in ("PyTorchJob",
                                                                                              "TrainJob"):
                return
            if (data.get("metadata", {}).get("labels") or {}).get(QUEUE_LABEL):
                spec = data.setdefault("spec", {})
                (spec.setdefault("runPolicy", {}) if data["kind"] == "PyTorchJob" else spec)["suspend"] = True

        async def _pod_log(self, request: Any) -> Any:
            """A kubelet's pods/log: the stand-in's pod output; with follow=true, once its process has ended."""
            parts = request.url.path.split("/")  # /api/v1/namespaces/NS/pods/NAME/log
            pod = self.pod_logs.get((parts[4], parts[6]))
            if pod is None:
                return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                                          "reason": "NotFound", "message": f'pods "{parts[6]}" not found'},
                                         status=404)
            if request.params.get("follow") == "true":
                while pod.proc.poll() is None:
                    await asyncio.sleep(0.3)
            return web.Response(text=pod.log.read_text(errors="replace"), content_type="text/plain")

    return LeanEmulator


class Cluster:
    """The API emulator in a background thread, plus a small synchronous JSON client for the tests."""

    def __init__(self, without: tuple[str, ...] = ()) -> None:
        """`without`: resources (e.g. "trainer.kubeflow.org/v1alpha1/trainjobs") this cluster does not serve."""
        self.without = without
        self.url = ""
        self.counts: dict[tuple[str, str, bool], int] = {}
        self.named_counts: dict[tuple[str, str, str], int] = {}
        self.writes_by_agent: dict[str, int] = {}
        self.pod_logs: dict[tuple[str, str], Pod] = {}  # (namespace, pod name): what pods/log serves
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.emulator: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import kmock

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = lean_emulator()(strict=False)
        emulator.counts = self.counts
        emulator.named_counts = self.named_counts
        emulator.writes_by_agent = self.writes_by_agent
        emulator.pod_logs = self.pod_logs
        for key, (kind, namespaced, subresources) in RESOURCES.items():
            if key in self.without:
                continue
            emulator.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subresources)
        async with emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def requests(self, *, from_tests: bool | None = None, methods: tuple[str, ...] | None = None,
                 plural: str | None = None) -> int:
        """Requests answered so far."""
        return sum(n for (m, p, t), n in list(self.counts.items())
                   if (from_tests is None or t == from_tests) and (methods is None or m in methods)
                   and (plural is None or p == plural))

    def requests_for(self, *names: str) -> int:
        """The operator's requests that named one of these objects (any kind)."""
        return sum(n for (_, _, name), n in list(self.named_counts.items()) if name in names)

    def writes_from(self, agent_part: str) -> int:
        """Writes (anything but GET) by clients whose User-Agent contains `agent_part`."""
        return sum(n for agent, n in list(self.writes_by_agent.items()) if agent_part in agent)

    def start(self) -> Cluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the API emulator did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": namespace}}],
        }))
        return path

    # -- a tiny client -------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            raise

    @staticmethod
    def path(group_version: str, plural: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        out = f"{base}/namespaces/{namespace}/{plural}"
        return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def apply_run(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Create as the API server would: it assigns uid, generation and creationTimestamp."""
        doc = json.loads(json.dumps(doc))
        meta = doc["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", now_iso())
        plural = {"TrainingRun": "trainingruns", "TrainingSchedule": "trainingschedules"}[doc["kind"]]
        return dict(self.request("POST", self.path("legistra.io/v1alpha1", plural, meta["namespace"]), doc))

    def get(self, gv: str, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        found = self.request("GET", self.path(gv, plural, ns, name))
        return dict(found) if found else None

    def list(self, gv: str, plural: str, ns: str) -> list[dict[str, Any]]:
        return list((self.request("GET", self.path(gv, plural, ns)) or {}).get("items", []))

    def patch(self, gv: str, plural: str, ns: str, name: str, body: Any, sub: str | None = None) -> Any:
        return self.request("PATCH", self.path(gv, plural, ns, name, sub), body, "application/merge-patch+json")

    def delete(self, gv: str, plural: str, ns: str, name: str) -> None:
        self.request("DELETE", self.path(gv, plural, ns, name))

    def run(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get("legistra.io/v1alpha1", "trainingruns", ns, name)

    def edit_spec(self, ns: str, name: str, spec_patch: dict[str, Any]) -> None:
        """A user's edit: the API server bumps metadata.generation on spec changes."""
        run = self.run(ns, name)
        assert run is not None
        gen = int(run["metadata"].get("generation", 1)) + 1
        self.patch("legistra.io/v1alpha1", "trainingruns", ns, name, {"metadata": {"generation": gen},
                                                                      "spec": spec_patch})

    def creates(self, plural: str) -> int:
        """POST requests that reached the emulator for `plural` (to count duplicate creates)."""
        return self.requests(methods=("POST",), plural=plural)

    def wait(self, predicate: Callable[[], Any], timeout: float = 240, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.25)
        raise TimeoutError(f"timed out waiting for {what}")


class Poller:
    """A daemon thread calling `tick()` every `interval` seconds until stopped; errors are reported, not fatal
    (the test's waits will show the symptom)."""

    interval = 0.2

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def tick(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                print(f"{type(self).__name__}: {exc!r}", file=sys.stderr)
            time.sleep(self.interval)


@dataclass
class Pod:
    replica: str
    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    termination: Path | None = None  # the container's terminationMessagePath, as a local file
    fallback_to_logs: bool = False
    cmd: list[str] = field(default_factory=list)  # what the container runs, to start it again in place
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0  # the container's restartCount
    last_terminated: dict[str, Any] | None = None  # its lastState.terminated
    crashed_at: float | None = None  # monotonic time its container last exited non-zero (back-off from there)

    def spawn(self) -> None:
        """Start the container's process (again, in place, after a crash: the log goes on, the message file is the
        new container's)."""
        if self.termination is not None:
            self.termination.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=open(self.log, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def termination_message(self) -> str:
        """What the kubelet reports: the file, else (FallbackToLogsOnError, on an error) the log's tail."""
        text = self.termination.read_text(errors="replace") if self.termination and self.termination.exists() else ""
        if not text and self.fallback_to_logs and self.log.exists():
            text = "\n".join(self.log.read_text(errors="replace").splitlines()[-80:])[-2048:]
        return text[:4096]

    def signal_all(self, sig: int) -> None:
        """`sig` to every process of the pod, whatever session torchrun gave it (found by the pod's folder)."""
        marker = str(self.log.parent).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), sig)
            except (OSError, ProcessLookupError):
                continue

    def kill(self) -> None:
        """Like a container runtime: every process of the pod goes, whatever session torchrun gave it."""
        self.signal_all(signal.SIGKILL)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@dataclass
class JobState:
    uid: str
    name: str
    kind: str = "PyTorchJob"
    pods: list[Pod] = field(default_factory=list)
    done: bool = False
    conditions: list[dict[str, Any]] = field(default_factory=list)
    start_time: str | None = None
    finished_at: float | None = None  # monotonic time the job became Succeeded or Failed


def trainjob_node_pod(trainjob: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A TrainJob's node pod spec as Trainer v2.3 assembles it: `base` (the runtime's node pod spec; none: an empty
    one), the TrainJob's runtime patches merged in (containers by name), then spec.trainer's image, command, args
    and env on the `node` container, which keeps the Kubernetes default terminationMessagePath."""
    pod = copy.deepcopy(base or {})
    pod.setdefault("containers", [])
    for patch in trainjob["spec"].get("runtimePatches", []):
        for rj in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if rj["name"] != "node":
                continue
            patched = copy.deepcopy(rj["template"]["spec"]["template"]["spec"])
            containers = patched.pop("containers", [])
            pod.update(patched)
            for container in containers:
                into = next((c for c in pod["containers"] if c["name"] == container["name"]), None)
                if into is None:
                    pod["containers"].append(container)
                else:
                    into.update(container)
    node = next((c for c in pod["containers"] if c["name"] == "node"), None)
    if node is None:
        node = {"name": "node"}
        pod["containers"].append(node)
    trainer = trainjob["spec"]["trainer"]
    node.update({k: trainer[k] for k in ("image", "command", "args") if k in trainer})
    node["env"] = [*trainer.get("env", []), *node.get("env", [])]
    node.setdefault("terminationMessagePath", "/dev/termination-log")
    return pod


class FakeTrainingOperator(Poller):
    """Stands in for Kubeflow's training-operator v1.9.4 (PyTorchJobs), for Trainer v2.3 with JobSet v0.12
    (TrainJobs on the torch-distributed runtime) and for the kubelet under them: runs each pod as processes.

    What it reproduces, each from the controller's source (kubeflow/trainer at v1.9.4 and v2.3.0):
    - the env injected (MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_*), the container's command and env
      (secretKeyRef resolved), ConfigMap and PVC mounts (the PVC is a folder that survives restarts);
    - the kubelet under `restartPolicy: OnFailure`: a container that exits non-zero is started again in place,
      in the same pod, after a back-off (`crash_backoff`, seconds here, 10 s doubling on a node): `restartCount`
      rises, the exit code and termination message move to `lastState.terminated`, the phase stays Running;
    - PastBackoffLimit (pkg/core/job.go): a PyTorchJob fails when the summed restartCount of its Running pods
      reaches `backoffLimit` (any restart for 0), with the message "Job <name> has failed because it has reached
      the specified backoff limit" (ReconcileJobs, pkg/controller.v1/common/job.go). `Restarting` is set only for
      a pod in phase Failed (ReconcilePods, pkg/controller.v1/common/pod.go), which an OnFailure pod never
      reaches: this stand-in never sets it. `replicaStatuses` is rebuilt on each pass from the pods (active:
      Running pods; failed: Failed ones, so 0 here);
    - cleanPodPolicy at the end (DeletePodsAndServices): None keeps every pod, and the kubelet goes on restarting
      a Failed job's crashed containers; Running deletes running and pending pods; All deletes all.
      `delete_pods_before_failure` plays v1.9.0-1.9.3, which deleted every pod before setting Failed;
    - ttlSecondsAfterFinished on every finished job, Failed ones included (CleanupJob);
    - suspend (pods deleted, job kept), conditions and status written through the status subresource, pods with
      an ownerReference to their job (the GarbageCollector deletes them with it);
    - a TrainJob as JobSet runs it: one Indexed Job for all nodes, its pods restarted in place up to the Job's
      backoffLimit (6: the torch-distributed runtime sets none and Trainer v2.3's runtimePatches cannot), then
      the Job fails and its pods are deleted, and the JobSet (no failurePolicy) fails with reason FailedJobs.
    Not reproduced: scheduling, images, resource limits, NCCL.
    """

    crash_backoff = 0.5
    delete_pods_before_failure = False  # training-operator <= 1.9.3
    JOB_BACKOFF_LIMIT = 6  # a Kubernetes Job's default backoffLimit, which Trainer v2.3's Job keeps

    def __init__(self, cluster: Cluster, namespace: str, workdir: Path) -> None:
        super().__init__()
        self.cluster, self.ns, self.workdir = cluster, namespace, workdir
        self.jobs: dict[str, JobState] = {}
        self.failed: set[str] = set()  # the jobs this stand-in failed (backoff limit), as opposed to deleted
        self.lock = threading.Lock()

    def stop(self) -> None:
        super().stop()
        for state in self.jobs.values():
            self._kill(state)

    def pvc_dir(self, job_name: str) -> Path:
        return self.workdir / job_name / "pvc"

    def restarts(self, job: str) -> int:
        """The summed restartCount of a job's pods (0 once they are gone)."""
        state = self.jobs.get(job)
        return sum(p.restarts for p in state.pods) if state else 0

    # -- the loop ----------------------------------------------------------------------------------------
    def tick(self) -> None:
        jobs = {}
        for gv, plural in (("kubeflow.org/v1", "pytorchjobs"), ("trainer.kubeflow.org/v1alpha1", "trainjobs")):
            if f"{gv}/{plural}" not in self.cluster.without:
                jobs.update({j["metadata"]["name"]: j for j in self.cluster.list(gv, plural, self.ns)})
        with self.lock:
            for name, state in list(self.jobs.items()):
                if name not in jobs or self._identity(name, jobs[name]) != state.uid:
                    self._kill(state)  # job deleted: its pods go with it
                    del self.jobs[name]
            for name, job in jobs.items():
                self._sync(name, job)

    def _expire(self, name: str, job: dict[str, Any], state: JobState) -> None:
        """runPolicy.ttlSecondsAfterFinished as training-operator v1.9.4 applies it (pkg/controller.v1/common/
        job.go, CleanupJob): to every finished job, Failed ones included, counted from completion."""
        ttl = job["spec"].get("runPolicy", {}).get("ttlSecondsAfterFinished")
        if ttl is None or state.finished_at is None or time.monotonic() - state.finished_at < int(ttl):
            return
        self.cluster.delete("kubeflow.org/v1", "pytorchjobs", self.ns, name)

    def _set(self, name: str, state: JobState, kind: str | None, reason: str = "", message: str = "",
             others_false: tuple[str, ...] = ()) -> None:
        """Write the job's status: `kind` condition set True (None: none changes), replicaStatuses rebuilt."""
        if kind is not None:
            conds = [c for c in state.conditions if c["type"] != kind]
            for c in conds:
                if c["type"] in others_false:
                    c["status"] = "False"
            conds.append({"type": kind, "status": "True", "reason": reason, "message": message,
                          "lastTransitionTime": now_iso(), "lastUpdateTime": now_iso()})
            state.conditions = conds
        replicas: dict[str, dict[str, int]] = {}
        for p in state.pods:
            counts = replicas.setdefault(p.replica, {"active": 0, "failed": 0, "succeeded": 0})
            counts["succeeded" if p.proc.poll() == 0 else "active"] += 1
        status: dict[str, Any] = {"conditions": state.conditions, "replicaStatuses": replicas}
        if state.start_time:
            status["startTime"] = state.start_time
        if kind in ("Succeeded", "Failed"):
            status["completionTime"] = now_iso()
            state.finished_at = time.monotonic()
        self.cluster.patch("kubeflow.org/v1", "pytorchjobs", self.ns, name, {"status": status}, sub="status")

    @staticmethod
    def _identity(name: str, job: dict[str, Any]) -> str:
        """A recreated job is a new object. kmock assigns no uids to the operator's objects, so a job deleted
        and created again between two ticks is told apart by the attempt it was built for."""
        meta = job["metadata"]
        return str(meta.get("uid") or f"{name}#{(meta.get('annotations') or {}).get(ATTEMPT_ANNOTATION, '1')}")

    @staticmethod
    def _past_backoff_limit(restarts: int, limit: int | None) -> bool:
        """PastBackoffLimit (training-operator v1.9.4, pkg/core/job.go; the Job controller's is the same)."""
        if limit is None:
            return False
        return restarts > 0 if limit == 0 else restarts >= limit

    def _sync(self, name: str, job: dict[str, Any]) -> None:
        if job["kind"] == "TrainJob":
            self._sync_trainjob(name, job)
            return
        uid = self._identity(name, job)
        state = self.jobs.get(name)
        if state is None:
            state = self.jobs[name] = JobState(uid=uid, name=name)
            self._set(name, state, "Created", "PyTorchJobCreated", f"PyTorchJob {name} is created.")
        if state.done:
            self._kubelet(name, state)  # pods kept (cleanPodPolicy None) go on crash-looping
            self._expire(name, job, state)
            return
        run_policy = job["spec"].get("runPolicy", {})
        if run_policy.get("suspend"):
            if state.pods or not any(c["type"] == "Suspended" and c["status"] == "True" for c in state.conditions):
                self._kill(state)
                self._set(name, state, "Suspended", "PyTorchJobSuspended", f"PyTorchJob {name} is suspended.",
                          others_false=("Running", "Restarting"))
            return
        if not state.pods:
            self._launch(name, job, state)
            if any(c["type"] == "Suspended" for c in state.conditions):
                state.conditions = [c for c in state.conditions if c["type"] != "Suspended"]
            self._set(name, state, "Running", "PyTorchJobRunning", f"PyTorchJob {name} is running.",
                      others_false=("Restarting", "Suspended"))
            return
        changed = self._kubelet(name, state)
        limit = run_policy.get("backoffLimit")
        if self._past_backoff_limit(sum(p.restarts for p in state.pods), None if limit is None else int(limit)):
            state.done = True
            self.failed.add(name)
            policy = run_policy.get("cleanPodPolicy") or "None"
            if self.delete_pods_before_failure or policy in ("All", "Running"):
                self._kill(state)  # every pod here is running or crash-looping: both policies delete it
            self._set(name, state, "Failed", "PyTorchJobFailed",
                      f"Job {name} has failed because it has reached the specified backoff limit",
                      others_false=("Running",))
            return
        if all(p.proc.poll() == 0 for p in state.pods):
            state.done = True
            for p in state.pods:
                self._put_pod(name, p, {"phase": "Succeeded", "containerStatuses": [self._container(name, p)]})
            self._set(name, state, "Succeeded", "PyTorchJobSucceeded",
                      f"PyTorchJob {name} is successfully completed.", others_false=("Running",))
        elif changed:
            self._set(name, state, None)

    def _kubelet(self, name: str, state: JobState) -> bool:
        """The kubelet under `restartPolicy: OnFailure`: a container that exited non-zero is shown terminated,
        then (after the back-off) started again in the same pod. Whether any pod changed."""
        changed = False
        now = time.monotonic()
        for p in state.pods:
            code = p.proc.poll()
            if code in (None, 0):
                continue
            if p.crashed_at is None:
                p.crashed_at = now
                p.last_terminated = {"exitCode": code, "reason": "Error", "message": p.termination_message(),
                                     "finishedAt": now_iso()}
            elif now - p.crashed_at >= self.crash_backoff:
                p.crashed_at = None
                p.restarts += 1
                p.spawn()
            else:
                continue
            self._put_pod(name, p, {"phase": "Running", "containerStatuses": [self._container(name, p)]})
            changed = True
        return changed

    def _container(self, job: str, pod: Pod) -> dict[str, Any]:
        """The trainer container's status as the kubelet reports it."""
        code = pod.proc.poll()
        if code is None:
            state: dict[str, Any] = {"running": {"startedAt": now_iso()}}
        else:  # a crashed one is shown terminated until the back-off is over (the kubelet says CrashLoopBackOff)
            state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                    "message": pod.termination_message()}}
        out = {"name": self._pod_identity(job, pod)[2], "ready": code is None, "restartCount": pod.restarts,
               "image": "trainer", "imageID": "", "state": state}
        if pod.last_terminated is not None:
            out["lastState"] = {"terminated": pod.last_terminated}
        return out

    # -- Trainer v2: TrainJobs on the torch-distributed runtime --------------------------------------------------
    def _trainjob_status(self, name: str, state: JobState, condition: str | None, reason: str = "",
                         message: str = "", pending: bool = False) -> None:
        """Conditions Complete / Failed / Suspended and jobsStatus for the one replicated job, `node`."""
        if condition is not None:
            state.conditions = [c for c in state.conditions if c["type"] != condition] + [
                {"type": condition, "status": "True", "reason": reason, "message": message,
                 "lastTransitionTime": now_iso()}]
        running = [p for p in state.pods if p.proc.poll() is None]
        suspended = any(c["type"] == "Suspended" and c["status"] == "True" for c in state.conditions)
        # One child Job for all nodes (Trainer v2.3's torch plugin); JobSet counts it active while it has pods
        # (pending ones too), ready once all of them are, failed once the Job failed (jobset v0.12
        # ReplicatedJobStatus).
        status = {"conditions": state.conditions, "jobsStatus": [{
            "name": "node", "active": 1 if state.pods or pending else 0,
            "ready": 1 if state.pods and len(running) == len(state.pods) else 0,
            "failed": 1 if condition == "Failed" else 0,
            "succeeded": 1 if condition == "Complete" else 0, "suspended": 1 if suspended else 0}]}
        self.cluster.patch("trainer.kubeflow.org/v1alpha1", "trainjobs", self.ns, name, {"status": status},
                           sub="status")

    def _sync_trainjob(self, name: str, job: dict[str, Any]) -> None:
        uid = self._identity(name, job)
        state = self.jobs.get(name)
        if state is None:
            state = self.jobs[name] = JobState(uid=uid, name=name, kind="TrainJob")
        if state.done:
            return
        if job["spec"].get("suspend"):
            if state.pods or not any(c["type"] == "Suspended" for c in state.conditions):
                self._kill(state)
                self._trainjob_status(name, state, "Suspended", "Suspended", "TrainJob is suspended")
            return
        if not state.pods:
            state.conditions = [c for c in state.conditions if c["type"] != "Suspended"]
            claim = self._unbound_claim(trainjob_node_pod(job))
            if claim is not None:  # the scheduler leaves the pods Pending; JobSet counts their Job active
                self._pending_pods(name, job, claim)
                self._trainjob_status(name, state, None, pending=True)
                return
            self._launch_trainjob(name, job, state)
            self._trainjob_status(name, state, None)
            return
        changed = self._kubelet(name, state)
        if self._past_backoff_limit(sum(p.restarts for p in state.pods), self.JOB_BACKOFF_LIMIT):
            # The Job fails (BackoffLimitExceeded) and its controller deletes its pods; with no failurePolicy the
            # JobSet fails on its first failed Job.
            self._kill(state)
            state.done = True
            self.failed.add(name)
            self._trainjob_status(name, state, "Failed", "FailedJobs", f"jobset {name} failed: job node-0 failed")
        elif all(p.proc.poll() == 0 for p in state.pods):
            state.done = True
            state.pods = []
            self._trainjob_status(name, state, "Complete", "JobsCompleted", "jobset completed successfully")
        elif changed:
            self._trainjob_status(name, state, None)

    def _unbound_claim(self, pod: dict[str, Any]) -> str | None:
        """A claim of the pod that is not bound: the emulator has no volume provisioner, so a claim counts as
        bound unless its status says Pending (as a test sets it, for a class that provides no volume)."""
        for volume in pod.get("volumes", []):
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            pvc = self.cluster.get("v1", "persistentvolumeclaims", self.ns, claim) if claim else None
            if pvc is not None and (pvc.get("status") or {}).get("phase") == "Pending":
                return str(claim)
        return None

    def _pending_pods(self, name: str, job: dict[str, Any], claim: str) -> None:
        """The nodes' pods as the scheduler leaves them while their claim is unbound (no process runs)."""
        for index in range(int(job["spec"]["trainer"].get("numNodes", 1))):
            placeholder = Pod("Node", index, cast("subprocess.Popen[bytes]", None), Path(os.devnull))
            self._put_pod(name, placeholder, {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": f"0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims ({claim})"}]})

    def _launch_trainjob(self, name: str, job: dict[str, Any], state: JobState) -> None:
        """Each node as local processes: the trainer's image/command/args/env from spec.trainer, volumes and
        mounts from the runtime patches, and the PET_* environment the torch runtime injects."""
        trainer = job["spec"]["trainer"]
        template = {"spec": trainjob_node_pod(job)}
        nnodes = int(trainer.get("numNodes", 1))
        port = free_port()
        for rank in range(nnodes):
            node = self._pod(name, template, "Node", rank, rank, nnodes, str(trainer.get("numProcPerNode", 1)), port,
                             container="node")
            state.pods.append(node)
            self._announce_pod(name, node)

    # -- pods ----------------------------------------------------------------------------------------------
    def _put_pod(self, job: str, pod: Pod, status: dict[str, Any]) -> str:
        """The pod as its controller makes it (created once; Indexed Job pods annotated with their completion
        index), with `status`; its name."""
        name, labels, container = self._pod_identity(job, pod)
        if self.cluster.get("v1", "pods", self.ns, name) is None:
            state = self.jobs[job]
            annotations = {COMPLETION_INDEX: str(pod.index)} if state.kind == "TrainJob" else {}
            # Owned by the job (by its child Job under JobSet, which the emulator does not have).
            owner = {"apiVersion": "kubeflow.org/v1" if state.kind == "PyTorchJob" else "batch/v1",
                     "kind": state.kind if state.kind == "PyTorchJob" else "Job",
                     "name": job if state.kind == "PyTorchJob" else f"{job}-node-0", "uid": state.uid,
                     "controller": True, "blockOwnerDeletion": True}
            self.cluster.request("POST", f"/api/v1/namespaces/{self.ns}/pods", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.ns, "labels": labels, "annotations": annotations,
                             "ownerReferences": [owner]},
                "spec": {"containers": [{"name": container, "image": "trainer"}]}})
        self.cluster.patch("v1", "pods", self.ns, name, {"status": status}, sub="status")
        return name

    def _secret(self, name: str, key: str) -> str:
        secret = self.cluster.get("v1", "secrets", self.ns, name)
        if secret is None or key not in secret.get("data", {}):
            raise KeyError(f"secret {name}/{key} not found")
        return base64.b64decode(secret["data"][key]).decode()

    def _launch(self, name: str, job: dict[str, Any], state: JobState) -> None:
        state.start_time = state.start_time or now_iso()
        specs = job["spec"]["pytorchReplicaSpecs"]
        nproc = job["spec"].get("nprocPerNode", "1")
        nnodes = sum(int(s.get("replicas", 1)) for s in specs.values())
        port = free_port()
        node_rank = 0
        for replica in ("Master", "Worker"):
            if replica not in specs:
                continue
            for index in range(int(specs[replica].get("replicas", 1))):
                pod = self._pod(name, specs[replica]["template"], replica, index, node_rank, nnodes, nproc, port)
                state.pods.append(pod)
                self._announce_pod(name, pod)
                node_rank += 1

    def _pod_identity(self, job: str, pod: Pod) -> tuple[str, dict[str, str], str]:
        """A pod's name, labels and container as its controller makes them: the training-operator's (what Kubeflow's
        TrainingClient selects by) or JobSet's for a TrainJob node (what `legistra logs` selects by)."""
        if self.jobs[job].kind == "TrainJob":
            # Trainer v2.3's torch plugin runs every node as a pod of ONE Indexed Job (replicated job "node", job
            # index 0, parallelism = numNodes): the node rank is the pod's completion index (PET_NODE_RANK from
            # the batch.kubernetes.io/job-completion-index annotation; pkg/runtime/framework/plugins/torch), and
            # the pod is <jobset>-node-0-<completion index>-<suffix>.
            return (f"{job}-node-0-{pod.index}", {"jobset.sigs.k8s.io/jobset-name": job,
                                                   "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                                   "jobset.sigs.k8s.io/job-index": "0",
                                                   COMPLETION_INDEX: str(pod.index)}, "node")
        labels = {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": pod.replica.lower(),
                  "training.kubeflow.org/replica-index": str(pod.index)}
        if pod.replica == "Master":
            labels["training.kubeflow.org/job-role"] = "master"
        return f"{job}-{pod.replica.lower()}-{pod.index}", labels, "pytorch"

    def _announce_pod(self, job: str, pod: Pod) -> None:
        """The running pod as the API shows it, its output served as pods/log."""
        name = self._pod_identity(job, pod)[0]
        self.cluster.pod_logs[(self.ns, name)] = pod
        self._put_pod(job, pod, {"phase": "Running", "containerStatuses": [self._container(job, pod)]})

    def _pod(self, job: str, template: dict[str, Any], replica: str, index: int, node_rank: int, nnodes: int,
             nproc: str, port: int, container: str = "pytorch") -> Pod:
        pod_dir = self.workdir / job / f"{replica.lower()}-{index}-{time.monotonic_ns()}"
        mounts: dict[str, Path] = {}
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        spec = next(c for c in template["spec"]["containers"] if c["name"] == container)
        for vm in spec.get("volumeMounts", []):
            vol = volumes[vm["name"]]
            if "configMap" in vol:
                cm = self.cluster.get("v1", "configmaps", self.ns, vol["configMap"]["name"])
                target = pod_dir / "config"
                target.mkdir(parents=True, exist_ok=True)
                for key, value in (cm or {}).get("data", {}).items():
                    (target / key).write_text(value)
            elif "persistentVolumeClaim" in vol:
                target = self.pvc_dir(job)
                target.mkdir(parents=True, exist_ok=True)
            else:
                target = pod_dir / vm["name"]
                target.mkdir(parents=True, exist_ok=True)
            mounts[vm["mountPath"]] = target

        def local(value: str) -> str:
            for mount, target in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if value == mount or value.startswith(mount + "/"):
                    return str(target) + value[len(mount):]
            return value

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "LEGISTRA_", "MLFLOW_"))}
        termination = pod_dir / "termination-log" if spec.get("terminationMessagePath") else None
        for e in spec.get("env", []):
            if "value" in e and termination and e["value"] == spec["terminationMessagePath"]:
                env[e["name"]] = str(termination)  # the kubelet's file for the termination message
            elif "value" in e:
                env[e["name"]] = local(e["value"])
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self._secret(ref["name"], ref["key"])
        # What the training-operator injects for a torchrun entry point.
        env.update({
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nnodes), "RANK": str(node_rank),
            "PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(node_rank),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        })
        cmd = [local(a) for a in spec.get("command", []) + spec.get("args", [])]
        pod_dir.mkdir(parents=True, exist_ok=True)
        pod = Pod(replica, index, cast("subprocess.Popen[bytes]", None), pod_dir / "pod.log", termination,
                  spec.get("terminationMessagePolicy") == "FallbackToLogsOnError", cmd, env)
        pod.spawn()
        return pod

    def _kill(self, state: JobState) -> None:
        """The pods deleted (suspend, cleanPodPolicy, a failed Job, the job itself deleted): processes and objects."""
        for p in state.pods:
            p.kill()
            if state.name in self.jobs:
                self.cluster.delete("v1", "pods", self.ns, self._pod_identity(state.name, p)[0])
        state.pods = []

    def kill_pod(self, job: str, replica: str = "Master") -> None:
        """A node loss: the pod's processes die with a non-zero code; the kubelet restarts it in place."""
        with self.lock:
            for p in self.jobs[job].pods:
                if p.replica == replica and p.proc.poll() is None:
                    p.kill()

    def hang(self, job: str) -> None:
        """A hung collective on every node: each pod's processes stop (SIGSTOP) and stay up, Running, silent."""
        with self.lock:
            for p in self.jobs[job].pods:
                if p.proc is not None and p.proc.poll() is None:
                    p.signal_all(signal.SIGSTOP)

    def logs(self, job: str) -> str:
        out = []
        for path in sorted((self.workdir / job).glob("*/pod.log")):
            out.append(f"--- {path.parent.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


class FakeKueue(Poller):
    """Stands in for Kueue's job reconciler on queue-labelled jobs (its webhook is in the emulator): a job stays
    suspended until the test admits it, is unsuspended then, and is suspended again whenever it is found running
    without admission. `undone` counts those: each is someone else undoing Kueue's decision."""

    interval = 0.2

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__()
        self.cluster, self.ns = cluster, namespace
        self.admitted: set[str] = set()
        self.undone: dict[str, int] = {}

    def admit(self, name: str) -> None:
        self.admitted.add(name)

    def tick(self) -> None:
        for backend in BACKENDS.values():
            if f"{backend.api_version}/{backend.plural}" in self.cluster.without:
                continue
            for job in self.cluster.list(backend.api_version, backend.plural, self.ns):
                if not (job["metadata"].get("labels") or {}).get(QUEUE_LABEL):
                    continue
                name, wanted = job["metadata"]["name"], job["metadata"]["name"] not in self.admitted
                if backend.suspended(job) == wanted:
                    continue
                if wanted:
                    self.undone[name] = self.undone.get(name, 0) + 1
                # Kueue writes suspend alone, not the operator's record of its own last word.
                body = {"spec": backend.suspend_patch(wanted)["spec"]}
                self.cluster.patch(backend.api_version, backend.plural, self.ns, name, body)


class GarbageCollector(Poller):
    """Kubernetes' owner-reference GC, which the emulator does not do: children of a deleted owner go."""

    KINDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("v1", "configmaps"), ("v1", "persistentvolumeclaims"), ("kubeflow.org/v1", "pytorchjobs"),
        ("trainer.kubeflow.org/v1alpha1", "trainjobs"), ("legistra.io/v1alpha1", "trainingruns"))
    OWNERS: ClassVar[dict[str, tuple[str, str]]] = {"TrainingRun": ("legistra.io/v1alpha1", "trainingruns"),
              "TrainingSchedule": ("legistra.io/v1alpha1", "trainingschedules")}

    interval = 0.3

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        super().__init__()
        self.cluster, self.ns = cluster, namespace

    def tick(self) -> None:
        for gv, plural in self.KINDS:
            if f"{gv}/{plural}" in self.cluster.without:
                continue
            for obj in self.cluster.list(gv, plural, self.ns):
                for ref in obj["metadata"].get("ownerReferences", []):
                    owner_kind = self.OWNERS.get(ref["kind"])
                    if owner_kind is None:
                        continue
                    owner = self.cluster.get(*owner_kind, self.ns, ref["name"])
                    if owner is None or owner["metadata"].get("uid") != ref.get("uid"):
                        self.cluster.delete(gv, plural, self.ns, obj["metadata"]["name"])
                        break


class OperatorProcess:
    """`legistra operator` as a real process against the emulator (so it can be killed and restarted)."""

    def __init__(self, kubeconfig: Path, namespace: str, env: dict[str, str], log: Path,
                 standalone: bool = True, args: list[str] | None = None) -> None:
        """`args`: the command's own arguments (a Deployment's), instead of --namespace and --standalone."""
        self.kubeconfig, self.ns, self.env, self.log = kubeconfig, namespace, env, log
        self.standalone, self.args = standalone, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()
        self.liveness_port = free_port()

    def start(self) -> OperatorProcess:
        env = {**os.environ, "LEGISTRA_RESYNC_SECONDS": "2", "LEGISTRA_SCHEDULE_TICK": "1", **self.env,
               "KUBECONFIG": str(self.kubeconfig), "LEGISTRA_METRICS_PORT": str(self.metrics_port),
               "LEGISTRA_METRICS_ADDR": "127.0.0.1"}
        args = self.args or ["operator", "--namespace", self.ns, *(["--standalone"] if self.standalone else []),
                             "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"]
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "legistra"), *args],
            env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def serve() -> None:
    """`python -m kit.harness`: the emulator alone in this process (the operator-scale benchmark's).
    Prints its URL; then, for each line "counts" on stdin, the requests so far as one JSON line of
    [method, resource, "tests" or "operator", count]; any other line stops it."""
    cluster = Cluster().start()
    print(cluster.url, flush=True)
    for line in sys.stdin:
        if line.strip() != "counts":
            break
        print(json.dumps([[m, p, "tests" if t else "operator", n] for (m, p, t), n in list(cluster.counts.items())]),
              flush=True)
    cluster.stop()


if __name__ == "__main__":
    serve()
