"""The same TrainingRuns on Kubeflow Trainer v2: TrainJobs end to end (a stand-in for Trainer's torch runtime runs
each node as local processes with the PET_* environment it injects), retries, suspend/resume, the operator's own
TTL, and `backend: auto` on clusters that serve one kind, the other, both or neither."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.harness import Cluster, FakeTrainingOperator, OperatorProcess
from tests.test_operator_e2e import NS, full_world, kill_after_first_checkpoint, training_run, wait_phase

pytestmark = pytest.mark.slow
TRAINJOBS = ("trainer.kubeflow.org/v1alpha1", "trainjobs")
NO_TRAINJOBS = "trainer.kubeflow.org/v1alpha1/trainjobs"
NO_PYTORCHJOBS = "kubeflow.org/v1/pytorchjobs"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, s3_endpoint: str) -> Iterator[dict[str, Any]]:
    """A Trainer v2 cluster (no PyTorchJob CRD at all), MLflow and S3, and an operator on backend auto."""
    yield from full_world(tmp_path_factory.mktemp("trainer-v2"), mlflow_server, s3_endpoint, "v2-models",
                          without=(NO_PYTORCHJOBS,))


def test_a_run_on_two_nodes_suspended_resumed_succeeds_and_its_trainjob_expires(
        world: dict[str, Any], tiny_models: dict[str, Path], mlflow_server: str) -> None:
    """Trainer v2 has no ttlSecondsAfterFinished: the operator deletes the finished TrainJob itself."""
    cluster: Cluster = world["cluster"]
    cluster.apply_run(training_run("v2-ok", tiny_models,  # nodes: 2, no backend named: auto
                                   runPolicy={"suspend": True, "ttlSecondsAfterFinished": 2}))
    st = wait_phase(world, "v2-ok", "Suspended")["status"]
    job = cluster.get(*TRAINJOBS, NS, "v2-ok")
    assert job is not None and job["spec"]["suspend"] is True and "suspended" in st["message"]
    assert job["spec"]["trainer"]["numNodes"] == 2 and job["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    # The stand-in sees the job on its next poll; the run can be Suspended before that.
    stand_in = world["kubeflow"].jobs
    assert world["cluster"].wait(lambda: "v2-ok" in stand_in, 10, "the stand-in to see the job")
    assert not stand_in["v2-ok"].pods
    cluster.edit_spec(NS, "v2-ok", {"runPolicy": {"suspend": False}})
    done = wait_phase(world, "v2-ok", "Succeeded")
    assert job["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    assert not any(c["type"] == "SpecChangeRefused" and c["status"] == "True" for c in done["status"]["conditions"])
    st = cluster.wait(lambda: (r := cluster.run(NS, "v2-ok")) and r["status"].get("model") and r["status"],
                      60, "the model in status")
    assert st["backend"] == "trainjob" and st["jobName"] == "v2-ok"
    assert st["model"]["uri"] == "s3://v2-models/registry/v2-ok/v1" and st["model"]["alias"] == "champion"
    assert st["mlflow"]["url"].startswith(mlflow_server) and "eval_f1_macro" in st["metrics"]
    assert st["progress"]["percent"] == 100
    assert next(c for c in st["conditions"] if c["type"] == "JobCreated")["message"] == "TrainJob v2-ok"
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=mlflow_server).get_run(st["mlflow"]["runId"])
    assert run.data.params["resolved.world_size"] == "2"  # two nodes joined through the PET_* rendezvous
    # Its nodes' logs through `legistra logs`, found by JobSet's labels: node 0 (rank 0) by default, node 1 for
    # rank 1 (one process per CPU node), every line when following.
    from tests.conftest import legistra

    kubeconfig = str(world["root"] / "kubeconfig")
    first = legistra("logs", "v2-ok", "--kubeconfig", kubeconfig)
    assert first.returncode == 0, first.stderr
    assert "validation rows" in first.stdout  # what rank 0 alone logs
    second = legistra("logs", "v2-ok", "--rank", "1", "--kubeconfig", kubeconfig)
    assert second.returncode == 0 and second.stdout and "validation rows" not in second.stdout, second.stderr
    followed = legistra("logs", "v2-ok", "-f", "--kubeconfig", kubeconfig)
    assert followed.returncode == 0 and followed.stdout == first.stdout, followed.stderr
    cluster.wait(lambda: cluster.get(*TRAINJOBS, NS, "v2-ok") is None, 30, "the TTL deletion")
    st = cluster.wait(lambda: (r := cluster.run(NS, "v2-ok")) and "jobDeleteAt" not in r["status"]
                      and r["status"], 30, "jobDeleteAt to be cleared")
    assert st["phase"] == "Succeeded" and st["model"]["version"] == 1
    time.sleep(3)  # and it stays deleted: a finished run never gets a new job
    assert cluster.get(*TRAINJOBS, NS, "v2-ok") is None and cluster.run(NS, "v2-ok")["status"]["phase"] == "Succeeded"


def test_backoff_limit_holds_on_a_trainjob_and_the_next_attempt_resumes(world: dict[str, Any],
                                                                        tiny_models: dict[str, Path]) -> None:
    """JobSet restarts a failed node's container in place up to its Job's backoffLimit (6: Trainer v2.3 cannot patch
    it), so runPolicy.backoffLimit used to be ignored on this backend. The operator holds it: once the trainer's
    restarts reach it, the attempt ends (Retrying, reason in the message), the TrainJob goes, the next attempt
    resumes from the checkpoint."""
    # 90 steps: the restarted trainer must not finish before a resync pass sees its restart (on a loaded 2-core
    # machine, 30 steps after checkpoint-10 took under 4 s, and the run succeeded first).
    doc = training_run("v2-retry", tiny_models, training={"maxSteps": 90, "saveSteps": 10, "batchSize": 2},
                       data={"maxSamples": 120},
                       runPolicy={"backoffLimit": 1, "maxAttempts": 2, "retryDelaySeconds": 2})
    cluster: Cluster = world["cluster"]
    trainer: FakeTrainingOperator = world["kubeflow"]
    posts = cluster.creates("trainjobs")
    cluster.apply_run(doc)
    kill_after_first_checkpoint(world, "v2-retry", "Node")
    retrying = wait_phase(world, "v2-retry", "Retrying", timeout=90)["status"]
    assert retrying["attempt"] == 1 and "reaching runPolicy.backoffLimit (1)" in retrying["message"], retrying
    assert retrying["restarts"] >= 1 and "v2-retry" not in trainer.failed  # the runtime's limit (6) was not hit
    done = wait_phase(world, "v2-retry", "Succeeded")["status"]
    assert done["attempt"] == 2 and cluster.creates("trainjobs") - posts == 2
    result = json.loads((trainer.pvc_dir("v2-retry") / "output" / "result.json").read_text())
    assert result["globalStep"] == 90 and "checkpoint-" in (result["resumedFrom"] or "")


def test_a_trainjob_whose_pods_wait_for_their_volume_is_pending_and_says_why(world: dict[str, Any],
                                                                            tiny_models: dict[str, Path]) -> None:
    """JobSet counts the nodes' Job active while its pods are Pending (here: their checkpoint claim is unbound);
    only ready means running. The run reads Pending, and once the claim has waited a minute, VolumePending with
    what to do (it used to read Running, and the volume was never looked at)."""
    import datetime as dt

    cluster: Cluster = world["cluster"]
    doc = training_run("v2-waiting", tiny_models, runPolicy={"suspend": True})
    doc["spec"]["resources"]["nodes"] = 1
    cluster.apply_run(doc)
    wait_phase(world, "v2-waiting", "Suspended")
    claim = "v2-waiting-checkpoints"
    assert cluster.get("v1", "persistentvolumeclaims", NS, claim) is not None
    # Made two minutes ago, and no class provides the volume: the claim stays Pending.
    ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.patch("v1", "persistentvolumeclaims", NS, claim,
                  {"metadata": {"creationTimestamp": ago}, "status": {"phase": "Pending"}})
    cluster.patch(*TRAINJOBS, NS, "v2-waiting", {"metadata": {"creationTimestamp": ago}})
    cluster.edit_spec(NS, "v2-waiting", {"runPolicy": {"suspend": False}})
    st = cluster.wait(lambda: (r := cluster.run(NS, "v2-waiting")) and any(
        c["type"] == "CheckpointStorage" and c["reason"] == "VolumePending" for c in r["status"]["conditions"])
        and r["status"], 60, "VolumePending")
    assert st["phase"] == "Pending" and st["message"].startswith(f"checkpoint volume {claim} is still Pending")
    job = cluster.get(*TRAINJOBS, NS, "v2-waiting")
    assert job is not None
    assert job["status"]["jobsStatus"][0]["active"] == 1 and job["status"]["jobsStatus"][0]["ready"] == 0
    pod = cluster.get("v1", "pods", NS, "v2-waiting-node-0-0")
    assert pod is not None and pod["status"]["phase"] == "Pending"
    cluster.delete("legistra.io/v1alpha1", "trainingruns", NS, "v2-waiting")


@pytest.mark.parametrize(("without", "setting", "runtime", "expected", "why"), [
    ((), "auto", False, "pytorchjobs", "NoTrainingRuntime"),  # both CRDs, but no runtime a TrainJob could use
    ((), "auto", True, "trainjobs", "TrainerV2Preferred"),  # both, and Trainer v2 usable: v1 is deprecated
    ((NO_PYTORCHJOBS,), "auto", False, "trainjobs", "OnlyServed"),
    ((NO_TRAINJOBS,), "auto", False, "pytorchjobs", "OnlyServed"),
    ((NO_PYTORCHJOBS, NO_TRAINJOBS), "auto", False, None, None),
    ((), "trainjob", False, "trainjobs", "Configured"),
    ((NO_TRAINJOBS,), "trainjob", False, None, None),  # asked for what the cluster does not serve
])
def test_backend_auto_follows_what_the_cluster_serves(tmp_path: Path, tiny_models: dict[str, Path],
                                                      without: tuple[str, ...], setting: str, runtime: bool,
                                                      expected: str | None, why: str | None) -> None:
    cluster = Cluster(without=without).start()
    if runtime:  # Trainer v2's default runtime, as its manifests install it (cluster-scoped)
        cluster.request("POST", "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes", {
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
            "metadata": {"name": "torch-distributed"}, "spec": {}})
    operator = OperatorProcess(cluster.kubeconfig(tmp_path / "kc", NS), NS, {"LEGISTRA_BACKEND": setting},
                               tmp_path / "operator.log").start()
    try:
        cluster.apply_run(training_run("pick", tiny_models, runPolicy={"suspend": True}))
        if expected is None:
            st = cluster.wait(lambda: (r := cluster.run(NS, "pick")) and r.get("status", {}).get("message")
                              and r["status"], 60, "the run's verdict")
            assert st["phase"] == "Pending"
            ready = next(c for c in st["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "BackendUnavailable" and "install" in ready["message"]
            time.sleep(3)
            assert cluster.creates("pytorchjobs") == cluster.creates("trainjobs") == 0
        else:
            st = cluster.wait(lambda: (r := cluster.run(NS, "pick")) and r.get("status", {}).get("backend")
                              and r["status"], 60, "the job")
            assert st["backend"] == expected.removesuffix("s")
            chosen = next(c for c in st["conditions"] if c["type"] == "BackendSelected")
            assert chosen["reason"] == why, chosen
            assert cluster.creates(expected) == 1
            other = "trainjobs" if expected == "pytorchjobs" else "pytorchjobs"
            assert cluster.creates(other) == 0
        assert operator.proc is not None and operator.proc.poll() is None  # a missing CRD never crashes it
    finally:
        operator.stop()
        cluster.stop()


def test_bad_data_and_spec_edits_behave_as_on_pytorchjobs(world: dict[str, Any], tiny_models: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """A deterministic failure ends the run after one TrainJob; an edit of a started run is refused."""
    from tests.conftest import DATA

    cluster: Cluster = world["cluster"]
    bad = tmp_path / "bad.jsonl"
    rows = (DATA / "risk_train.jsonl").read_text().splitlines()[:20]
    rows[2] = json.dumps({"text": "no label"})
    bad.write_text("\n".join(rows) + "\n")
    posts = cluster.creates("trainjobs")
    cluster.apply_run(training_run("v2-bad", tiny_models, data={"train": str(bad)},
                                   runPolicy={"maxAttempts": 3, "retryDelaySeconds": 1}))
    cluster.apply_run(training_run("v2-edit", tiny_models, runPolicy={"suspend": True}))
    st = wait_phase(world, "v2-bad", "Failed", timeout=120)["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidData" and f"{bad}, row 3, field 'label': missing label" in failed["message"]
    wait_phase(world, "v2-edit", "Suspended")
    cluster.edit_spec(NS, "v2-edit", {"training": {"learningRate": 0.5}})
    cond = cluster.wait(lambda: next((c for c in (cluster.run(NS, "v2-edit") or {}).get("status", {})
                                      .get("conditions", []) if c["type"] == "SpecChangeRefused"
                                      and c["status"] == "True"), None), 30, "SpecChangeRefused")
    assert "training.learningRate" in cond["message"]
    time.sleep(2)
    assert cluster.creates("trainjobs") - posts == 2  # one each, never a retry of the bad one
