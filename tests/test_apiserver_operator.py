"""The operator's reconcile against a real kube-apiserver (envtest): real CRD defaulting and pruning, the status
subresource, generation bumps. The emulator suite covers the long end-to-end chains; this covers what only a
real API server does."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.apiserver import ApiServer
from legistra.api.validation import parse_training_run
from legistra.contract import run_document
from legistra.operator.build import SPEC_HASH_ANNOTATION, build_children, spec_hash
from legistra.operator.config import JobDefaults
from legistra.operator.credentials import cluster_credentials
from legistra.operator.kube import ApiError, Kube
from legistra.operator.reconcile import reconcile
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def crds(apiserver: ApiServer) -> ApiServer:
    apiserver.install_crds()
    return apiserver


@pytest.fixture()
def ns(crds: ApiServer) -> Iterator[str]:
    yield crds.namespace("run")


class Events:
    """The events reconcile would post, as (type, reason)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.seen.append((kind, reason, message))


def reconcile_once(api: ApiServer, body: dict[str, Any], events: Events) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        kube = Kube(cluster_credentials(str(api.kubeconfig), None, {}), agent="legistra-tests")
        try:
            outcome = await reconcile(kube, body, JobDefaults(), None, events)
            return outcome.status or {}
        finally:
            await kube.close()

    return asyncio.run(go())


def apply_run(api: ApiServer, ns: str, name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns}
    api.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc))
    return api.get("trainingrun", name, "-n", ns)


@contextlib.asynccontextmanager
async def first_pass(api: ApiServer, ns: str, *bodies: dict[str, Any],
                     env: dict[str, str] | None = None) -> AsyncIterator[Any]:
    """The operator's runtime for `ns` (its handlers' state, without kopf; `env`: its settings) after its first
    pass over each of `bodies`: the runs' children exist and their status is Pending."""
    from legistra.operator.config import OperatorConfig
    from legistra.operator.runtime import Runtime, Trigger, discover, reconcile_run

    kube = Kube(cluster_credentials(str(api.kubeconfig), None, {}), agent="legistra-tests")
    rt = Runtime(OperatorConfig.from_env((ns,), env or {}), kube)
    try:
        await discover(rt)
        for body in bodies:
            await reconcile_run(rt, body, Trigger.RUN_EVENT)
        yield rt
    finally:
        await kube.close()


def test_a_run_becomes_children_and_status_goes_through_the_subresource(crds: ApiServer, ns: str) -> None:
    body = apply_run(crds, ns, "risk-a")
    assert body["metadata"]["generation"] == 1
    assert body["spec"]["training"]["compile"] is False  # defaulted by the real API server from our CRD
    events = Events()
    status = reconcile_once(crds, body, events)
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    live = crds.get("trainingrun", "risk-a", "-n", ns)
    assert live["status"]["observedGeneration"] == 1 and live["metadata"]["generation"] == 1  # status: no bump
    job = crds.get("pytorchjob", "risk-a", "-n", ns)
    assert job["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    cm = crds.get("configmap", "risk-a-config", "-n", ns)
    assert json.loads(cm["data"]["run.json"])["metadata"]["uid"] == body["metadata"]["uid"]
    assert crds.get("pvc", "risk-a-checkpoints", "-n", ns)["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_an_operator_upgrade_that_adds_a_defaulted_field_refuses_nothing(crds: ApiServer, ns: str,
                                                                         tmp_path: Path) -> None:
    """The job was built by an operator whose schema had no `training.compile`: same spec, no refusal, no event."""
    body = apply_run(crds, ns, "risk-old")
    run = parse_training_run(body)
    older = run_document(run)
    del older["spec"]["training"]["compile"]
    children = build_children(run, JobDefaults())
    children[0]["data"]["run.json"] = json.dumps(older)
    children[2]["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = spec_hash(older["spec"])
    for child in children:
        crds.kubectl("create", "--validate=false", "-f", "-", input=yaml.safe_dump(child))
    events = Events()
    status = reconcile_once(crds, crds.get("trainingrun", "risk-old", "-n", ns), events)
    assert not any(c["type"] == "SpecChangeRefused" and c["status"] == "True" for c in status["conditions"])
    assert [e for e in events.seen if e[1] == "SpecChangeRefused"] == []
    # A real edit is still refused, against the same old run.json, and bumps the generation.
    crds.kubectl("patch", "trainingrun", "risk-old", "-n", ns, "--type=merge",
                 "-p", json.dumps({"spec": {"training": {"learningRate": 0.001}}}))
    edited = crds.get("trainingrun", "risk-old", "-n", ns)
    assert edited["metadata"]["generation"] == 2
    status = reconcile_once(crds, edited, events)
    refused = next(c for c in status["conditions"] if c["type"] == "SpecChangeRefused")
    assert refused["status"] == "True" and "training.learningRate" in refused["message"]
    assert "training.compile" not in refused["message"]
    assert [e[1] for e in events.seen].count("SpecChangeRefused") == 1
    assert copy.deepcopy(crds.get("trainingrun", "risk-old", "-n", ns)["status"]["observedGeneration"]) == 2


def test_a_new_run_never_takes_over_a_job_of_its_name_that_is_not_its_own(crds: ApiServer, ns: str) -> None:
    """A run without status skips reading its job first; the job found at creation is checked all the same."""
    from benchmarks.faults import job_conditions

    body = apply_run(crds, ns, "risk-taken")
    crds.kubectl("create", "configmap", "someone-else", "-n", ns)
    owner = crds.get("configmap", "someone-else", "-n", ns)["metadata"]
    theirs = build_children(parse_training_run(body), JobDefaults())[-1]
    theirs["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "someone-else",
                                              "uid": owner["uid"]}]
    crds.kubectl("create", "--validate=false", "-f", "-", input=yaml.safe_dump(theirs))
    # Failed, as its owner's attempt may be: a run that took it for its own would delete it to retry.
    crds.kubectl("patch", "pytorchjob", "risk-taken", "-n", ns, "--subresource=status", "--type=merge",
                 "-p", json.dumps(job_conditions("Created", "Running", "Failed")))
    before = crds.get("pytorchjob", "risk-taken", "-n", ns)
    events = Events()
    status = reconcile_once(crds, body, events)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (status["phase"], ready["reason"]) == ("Pending", "JobNameTaken")
    assert status["message"].startswith("a PyTorchJob named risk-taken exists and is not owned by this TrainingRun")
    assert not any(c["type"] in ("JobCreated", "SpecChangeRefused") for c in status["conditions"])  # not ours
    assert [e[:2] for e in events.seen] == [("Warning", "JobNameTaken")]
    after = crds.get("pytorchjob", "risk-taken", "-n", ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # untouched
    # Once that job is gone (the next resync reads the run with its status), this run makes its own.
    crds.kubectl("delete", "pytorchjob", "risk-taken", "-n", ns)
    status = reconcile_once(crds, crds.get("trainingrun", "risk-taken", "-n", ns), events)
    mine = crds.get("pytorchjob", "risk-taken", "-n", ns)
    assert mine["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] != "JobNameTaken"


def test_the_real_api_server_refuses_malformed_kubernetes_values(crds: ApiServer, ns: str) -> None:
    """Quantities, names and image references are patterns in the CRD: refused at `kubectl apply`."""
    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    doc["metadata"] = {"name": "risk-bad-values", "namespace": ns}
    doc["spec"]["resources"] = {"cpu": "eight", "memory": "64 GB", "priorityClassName": "High_Priority"}
    res = crds.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert res.returncode != 0
    for field in ("spec.resources.cpu", "spec.resources.memory", "spec.resources.priorityClassName"):
        assert field in res.stderr, res.stderr
    assert crds.kubectl("get", "trainingrun", "risk-bad-values", "-n", ns, check=False).returncode != 0


@pytest.mark.apiserver
def test_batch_size_is_a_number_or_auto_on_the_real_api_server(crds: ApiServer, ns: str) -> None:
    """`batchSize` is int-or-string in the CRD: 8 and auto are stored as given, anything else is refused."""
    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    for name, value in (("risk-auto", "auto"), ("risk-eight", 8)):
        doc["metadata"] = {"name": name, "namespace": ns}
        doc["spec"]["training"]["batchSize"] = value
        crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
        got = crds.kubectl("get", "trainingrun", name, "-n", ns, "-o", "jsonpath={.spec.training.batchSize}")
        assert got.stdout == str(value)
    doc["metadata"] = {"name": "risk-big", "namespace": ns}
    doc["spec"]["training"]["batchSize"] = "big"
    res = crds.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert res.returncode != 0 and "spec.training.batchSize" in res.stderr, res.stderr


def test_a_stale_copy_never_overwrites_a_newer_status(crds: ApiServer, ns: str) -> None:
    """Two writers of one run's status (another replica, a lagging index): each status write carries the
    resourceVersion it was computed from, the real API server answers 409 to the stale one, and the operator's
    handler re-reads and decides again from the live object."""
    from legistra.operator.config import OperatorConfig
    from legistra.operator.runtime import Runtime, Trigger, discover, reconcile_run

    stale = apply_run(crds, ns, "risk-race")

    async def go() -> None:
        kube = Kube(cluster_credentials(str(crds.kubeconfig), None, {}), agent="legistra-tests")
        rt = Runtime(OperatorConfig.from_env((ns,), {}), kube)
        try:
            await discover(rt)  # the job kinds this server serves, as at the operator's start
            await reconcile_run(rt, stale, Trigger.RUN_EVENT)  # replica A: children and a Pending status
            nonlocal_state["after_a"] = crds.get("trainingrun", "risk-race", "-n", ns)
            crds.kubectl("patch", "pytorchjob", "risk-race", "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"conditions": [
                             {"type": "Created", "status": "True", "reason": "PyTorchJobCreated",
                              "lastTransitionTime": "2026-11-26T00:00:00Z"},
                             {"type": "Running", "status": "True", "reason": "PyTorchJobRunning",
                              "lastTransitionTime": "2026-11-26T00:00:01Z"}]}}))
            # Replica B mirrors the running job from a fresh read.
            other = Kube(cluster_credentials(str(crds.kubeconfig), None, {}), agent="legistra-tests-b")
            try:
                fresh = crds.get("trainingrun", "risk-race", "-n", ns)
                assert (await reconcile(other, fresh, JobDefaults(), None, Events())).phase == "Running"
            finally:
                await other.close()
            live = crds.get("trainingrun", "risk-race", "-n", ns)
            old_copy = nonlocal_state["after_a"]
            # Reconciling A's copy directly: refused by the server, the live status untouched.
            with pytest.raises(ApiError) as refused:
                await reconcile(kube, old_copy, JobDefaults(), None, Events())
            assert refused.value.status == 409
            assert crds.get("trainingrun", "risk-race", "-n", ns)["metadata"]["resourceVersion"] == \
                live["metadata"]["resourceVersion"]
            # The handler, given the stale copy with the job's event (as kopf's index can lag): re-read, converge.
            job = crds.get("pytorchjob", "risk-race", "-n", ns)
            await reconcile_run(rt, old_copy, Trigger.JOB_EVENT, job)
            after = crds.get("trainingrun", "risk-race", "-n", ns)
            assert after["status"]["phase"] == "Running" and after["status"]["observedGeneration"] == 1
            written = rt.runs[(ns, "risk-race")].written
            assert written is not None and written.version == after["metadata"]["resourceVersion"]
            assert int(after["status"].get("attempt") or 1) == 1
        finally:
            await kube.close()

    nonlocal_state: dict[str, Any] = {}
    asyncio.run(go())
    jobs = json.loads(crds.kubectl("get", "pytorchjobs", "-n", ns, "-o", "json").stdout)["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["risk-race"]


def test_a_job_event_older_than_what_was_mirrored_changes_nothing(crds: ApiServer, ns: str) -> None:
    """A job event can wait for its run's lock while another pass (the resync, a wake-up) reads the job afresh
    and mirrors a later state; the waiting event's body is then older than the run's status and must not
    take it back (seen once as Succeeded -> Running in the SIGKILL campaign). Also after a 409, when the other
    writer was another replica, the job is read again with the run."""
    from benchmarks.faults import job_conditions
    from legistra.operator.runtime import Trigger, reconcile_run

    body = apply_run(crds, ns, "risk-late")

    async def go() -> None:
        async with first_pass(crds, ns, body) as rt:
            crds.kubectl("patch", "pytorchjob", "risk-late", "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps(job_conditions("Created", "Running")))
            running_job = crds.get("pytorchjob", "risk-late", "-n", ns)  # the body the late event carries
            crds.kubectl("patch", "pytorchjob", "risk-late", "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps(job_conditions("Created", "Running", "Succeeded")))
            run = crds.get("trainingrun", "risk-late", "-n", ns)
            await reconcile_run(rt, run, Trigger.RESYNC)  # the resync's pass: reads the job, mirrors Succeeded
            done = crds.get("trainingrun", "risk-late", "-n", ns)
            assert done["status"]["phase"] == "Succeeded"
            await reconcile_run(rt, run, Trigger.JOB_EVENT, running_job)  # the late event, with the run copy it had
            assert crds.get("trainingrun", "risk-late", "-n", ns)["status"] == done["status"]
            # Another replica's write since our last one: the 409 re-reads the run and the job, not the late body.
            rt.runs[(ns, "risk-late")].written = None
            await reconcile_run(rt, run, Trigger.JOB_EVENT, running_job)
            assert crds.get("trainingrun", "risk-late", "-n", ns)["status"]["phase"] == "Succeeded"

    asyncio.run(go())


def test_events_from_the_operators_own_loops_reach_the_api_server(crds: ApiServer, ns: str) -> None:
    """The resync and wake-up loops run outside kopf's handlers, where kopf has no event queue (kopf.info raises
    LookupError there, which used to abort the whole resync pass): the event is posted by our client instead."""
    from legistra.operator.config import OperatorConfig
    from legistra.operator.runtime import Runtime

    body = apply_run(crds, ns, "risk-events")

    async def go() -> None:
        kube = Kube(cluster_credentials(str(crds.kubeconfig), None, {}), agent="legistra-tests")
        rt = Runtime(OperatorConfig.from_env((ns,), {"POD_ID": "op-0"}), kube)
        try:
            rt.emit(body, "Warning", "RunFailed", "attempt 1 of 2 failed")
            await asyncio.sleep(0.5)  # posted in the background, as kopf does
        finally:
            await kube.close()

    asyncio.run(go())
    events = json.loads(crds.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    ours = [e for e in events if e["reason"] == "RunFailed"]
    assert len(ours) == 1, events
    e = ours[0]
    assert e["type"] == "Warning" and e["message"] == "attempt 1 of 2 failed"
    assert e["involvedObject"]["uid"] == body["metadata"]["uid"] and e["involvedObject"]["kind"] == "TrainingRun"
    assert e["source"]["component"] == "legistra" and e["metadata"]["name"].startswith("risk-events.")


def test_lists_come_in_pages_that_add_up(crds: ApiServer, ns: str) -> None:
    """The resync lists runs in pages (the API server's continue tokens), never one response of every run."""
    for i in range(7):
        apply_run(crds, ns, f"risk-page-{i}")

    async def go() -> list[list[str]]:
        kube = Kube(cluster_credentials(str(crds.kubeconfig), None, {}), agent="legistra-tests")
        try:
            return [[r["metadata"]["name"] for r in page] async for page in kube.pages("TrainingRun", ns, limit=3)]
        finally:
            await kube.close()

    pages = asyncio.run(go())
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(n for p in pages for n in p) == [f"risk-page-{i}" for i in range(7)]


def test_a_jobs_start_event_leaves_its_pods_to_the_next_resync_which_finds_a_crash_loop(crds: ApiServer,
                                                                                       ns: str) -> None:
    """With `restartPolicy: OnFailure` a trainer that refuses its data is restarted in place and the job shows no
    condition. The job's start event does not list its pods (too early to find anything; a wave of 10,000 starts
    would be 10,000 LISTs), but it must not make the resync pass skip the run as recently reconciled: that pass
    reads the trainer's message and fails the run for good."""
    from benchmarks.faults import job_conditions
    from legistra.operator.backends import BACKENDS
    from legistra.operator.resync import resync
    from legistra.operator.runtime import Trigger, reconcile_run

    name = "risk-crashloop"
    body = apply_run(crds, ns, name)
    message = "InvalidData: train.jsonl, row 7, field 'label': missing label"

    async def go() -> None:
        async with first_pass(crds, ns, body) as rt:
            crds.kubectl("patch", "pytorchjob", name, "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps(job_conditions("Created", "Running")))
            pod = f"{name}-master-0"
            crds.kubectl("apply", "-f", "-", input=yaml.safe_dump({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {BACKENDS["pytorchjob"].pod_label: name}},
                "spec": {"containers": [{"name": "pytorch", "image": "trainer"}]}}))
            crds.kubectl("patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(
                {"status": {"phase": "Running", "containerStatuses": [{
                    "name": "pytorch", "image": "trainer", "imageID": "", "ready": False, "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": message}}}]}}))
            await reconcile_run(rt, crds.get("trainingrun", name, "-n", ns), Trigger.JOB_EVENT,
                                 crds.get("pytorchjob", name, "-n", ns))  # the job's start event
            assert crds.get("trainingrun", name, "-n", ns)["status"]["phase"] == "Running"  # pods not read
            await resync(rt, ns)  # the next tick, however soon after the event
            status = crds.get("trainingrun", name, "-n", ns)["status"]
            failed = next(c for c in status["conditions"] if c["type"] == "Failed")
            assert status["phase"] == "Failed" and failed["reason"] == "InvalidData" and "row 7" in failed["message"]

    asyncio.run(go())


def test_the_resync_pulls_the_trainers_progress_between_job_events(crds: ApiServer, ns: str,
                                                                   mlflow_server: str) -> None:
    """While a job runs it sends no events; the run's progress comes from the trainer's MLflow run, and the resync
    pass is what reads it. That pass used to stop at the echo check of watch events (the run's status was still
    this operator's last write), so progress froze at whatever the job's start event had read."""
    import mlflow

    from benchmarks.faults import job_conditions
    from legistra.contract import TAG_PROGRESS, TAG_RUN_KEY
    from legistra.operator.report import MlflowReporter
    from legistra.operator.resync import resync
    from legistra.operator.runtime import Trigger, reconcile_run

    name = "risk-heartbeat"
    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns}
    doc["spec"]["tracking"] = {"mlflow": {"trackingUri": mlflow_server, "experiment": f"heartbeat-{ns}"}}
    crds.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc))
    body = crds.get("trainingrun", name, "-n", ns)
    client = mlflow.MlflowClient(mlflow_server)
    trainer_run = client.create_run(client.create_experiment(f"heartbeat-{ns}"),
                                    tags={TAG_RUN_KEY: body["metadata"]["uid"]})

    def progress(step: int) -> None:  # what the trainer's rank 0 keeps current
        client.set_tag(trainer_run.info.run_id, TAG_PROGRESS, json.dumps({"step": step, "totalSteps": 10}))

    async def go() -> None:
        async with first_pass(crds, ns, body, env={"LEGISTRA_RESYNC_SECONDS": "0.4"}) as rt:
            rt.reporters[mlflow_server] = MlflowReporter(mlflow_server, ttl_s=0.0)  # no cache between passes
            progress(3)
            crds.kubectl("patch", "pytorchjob", name, "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps(job_conditions("Created", "Running")))
            await reconcile_run(rt, crds.get("trainingrun", name, "-n", ns), Trigger.JOB_EVENT,
                                 crds.get("pytorchjob", name, "-n", ns))  # the job's start event
            assert crds.get("trainingrun", name, "-n", ns)["status"]["progress"]["step"] == 3
            progress(7)
            await asyncio.sleep(0.3)  # past half a resync period: not "reconciled just now"
            await resync(rt, ns)
            status = crds.get("trainingrun", name, "-n", ns)["status"]
            assert status["phase"] == "Running" and status["progress"]["step"] == 7

    asyncio.run(go())


def test_the_resync_pass_is_paced_and_skips_a_run_deleted_while_it_waited(crds: ApiServer, ns: str) -> None:
    """The pass spreads its runs over time (LEGISTRA_RESYNC_RATE), so the runs of a listed page are seconds older
    when their turn comes; one deleted meanwhile (its watch's DELETED event) is not reconciled from that copy."""
    import kopf

    from legistra.operator.handlers import run_event
    from legistra.operator.resync import resync

    bodies = {name: apply_run(crds, ns, name) for name in ("pace-a", "pace-b", "pace-c")}

    async def go() -> None:
        env = {"LEGISTRA_RESYNC_SECONDS": "0.4", "LEGISTRA_RESYNC_RATE": "2"}  # a start every 0.5 s
        async with first_pass(crds, ns, *bodies.values(), env=env) as rt:
            assert {(ns, n) for n in bodies} <= set(rt.runs)
            await asyncio.sleep(0.3)  # past half a resync period: none was reconciled "just now"
            started = time.monotonic()
            passing = asyncio.create_task(resync(rt, ns))
            await asyncio.sleep(0.2)  # pace-a done at once; the pass waits for pace-b's slot (0.5 s)
            crds.kubectl("delete", "trainingrun", "pace-b", "-n", ns, "--wait=false")
            memo = kopf.Memo()
            memo.runtime = rt
            await run_event(type="DELETED", body=bodies["pace-b"], memo=memo)  # what its watch delivers
            await passing
            took = time.monotonic() - started
            assert took >= 0.95  # pace-c's slot came at 1.0 s: spaced, not a burst
            assert (ns, "pace-b") not in rt.runs  # not reconciled (that would have made its state again)
            assert rt.runs[(ns, "pace-a")].reconciled_at >= started
            assert rt.runs[(ns, "pace-c")].reconciled_at >= started + 0.95

    asyncio.run(go())


def test_a_replica_that_loses_its_lead_stops_its_resync_pass(crds: ApiServer, ns: str) -> None:
    """kopf pauses its own handlers when a peer of higher priority appears, not our loops: a paced pass lasts
    minutes at scale, so it asks the peering records again every `page_size` runs and stops once it no longer
    leads (two replicas never both act for longer than that)."""
    from legistra.operator.peering import peering_objects
    from legistra.operator.resync import resync
    from legistra.operator.runtime import Peering

    bodies = {name: apply_run(crds, ns, name) for name in ("lead-a", "lead-b", "lead-c")}
    record = peering_objects("legistra-resync", [ns])[0]
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(record))

    async def go() -> None:
        env = {"LEGISTRA_RESYNC_SECONDS": "0.4", "LEGISTRA_RESYNC_RATE": "2"}  # a start every 0.5 s
        async with first_pass(crds, ns, *bodies.values(), env=env) as rt:
            rt.peering = Peering([record], priority=10, identity="replica-a")
            await asyncio.sleep(0.3)  # past half a resync period
            started = time.monotonic()
            passing = asyncio.create_task(resync(rt, ns, page_size=2))
            await asyncio.sleep(0.2)  # lead-a reconciled; the pass waits for lead-b's slot
            seen = datetime.datetime.now(datetime.timezone.utc).isoformat()
            crds.kubectl("patch", "kopfpeering", record["metadata"]["name"], "-n", ns, "--type=merge", "-p",
                         json.dumps({"status": {"replica-b": {"priority": 20, "lastseen": seen, "lifetime": 60}}}))
            await passing
            done = {name: rt.runs[(ns, name)].reconciled_at >= started for name in bodies}
            # lead-b's turn was already booked in the first page; before lead-c the pass asks, and stops.
            assert done == {"lead-a": True, "lead-b": True, "lead-c": False}

    asyncio.run(go())


def test_a_run_with_its_own_tracking_credentials_is_not_read_and_its_status_says_so(
        crds: ApiServer, ns: str, mlflow_server: str) -> None:
    """The operator reads no Secrets, so it cannot read a tracking server that takes the run's own credentials:
    it leaves that server alone (the trainer's progress tag there is not read) and says so in status.mlflow."""
    import mlflow

    from benchmarks.faults import job_conditions
    from legistra.contract import TAG_PROGRESS, TAG_RUN_KEY
    from legistra.operator.runtime import Trigger, reconcile_run

    name = "risk-private"
    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns}
    doc["spec"]["tracking"] = {"mlflow": {"trackingUri": mlflow_server, "experiment": f"private-{ns}",
                                          "credentialsSecret": "team-mlflow"}}
    crds.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc))
    body = crds.get("trainingrun", name, "-n", ns)
    client = mlflow.MlflowClient(mlflow_server)
    client.create_run(client.create_experiment(f"private-{ns}"),
                      tags={TAG_RUN_KEY: body["metadata"]["uid"], TAG_PROGRESS: json.dumps({"step": 3,
                                                                                            "totalSteps": 10})})

    async def go() -> None:
        async with first_pass(crds, ns, body) as rt:
            crds.kubectl("patch", "pytorchjob", name, "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps(job_conditions("Created", "Running")))
            await reconcile_run(rt, crds.get("trainingrun", name, "-n", ns), Trigger.JOB_EVENT,
                                 crds.get("pytorchjob", name, "-n", ns))
            assert rt.reporters == {}  # never asked

    asyncio.run(go())
    status = crds.get("trainingrun", name, "-n", ns)["status"]
    assert status["phase"] == "Running" and "progress" not in status
    assert status["mlflow"]["note"].startswith(f"not read by the operator: {mlflow_server} takes this run's own")
    env = {e["name"]: e for e in crds.get("pytorchjob", name, "-n", ns)["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "team-mlflow",
                                                                            "key": "password", "optional": True}
