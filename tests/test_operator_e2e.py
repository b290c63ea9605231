"""The operator end to end: kopf handlers against kmock's KubernetesEmulator over HTTP, a stand-in Kubeflow
training-operator running the replicas as local processes, a real MLflow server and S3 (moto)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.harness import Cluster, FakeKueue, FakeTrainingOperator, GarbageCollector, OperatorProcess
from tests.conftest import base_run

pytestmark = pytest.mark.slow
NS = "legal-ml"
JOBS = ("kubeflow.org/v1", "pytorchjobs")


def full_world(root: Path, mlflow_server: str, s3_endpoint: str, bucket: str,
               without: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """An API emulator with the S3 Secret, the Kubeflow stand-in, the GC and an operator that tracks in the
    MLflow server and registers in `bucket`: what the end-to-end tests of both backends run in."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=bucket)
    cluster = Cluster(without=without).start()
    cluster.request("POST", f"/api/v1/namespaces/{NS}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS},
        "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"testing").decode(),
                 "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"testing").decode()}})
    kubeflow = FakeTrainingOperator(cluster, NS, root / "pods").start()
    gc = GarbageCollector(cluster, NS).start()
    kueue = FakeKueue(cluster, NS).start()
    env = {
        "LEGISTRA_MLFLOW_TRACKING_URI": mlflow_server,
        "LEGISTRA_REGISTRY_URI": f"s3://{bucket}/registry",
        "LEGISTRA_S3_ENDPOINT": s3_endpoint,
        "LEGISTRA_S3_SECRET": "s3-creds",
        "LEGISTRA_TRAINER_EXTRA_ENV": json.dumps({
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_DEFAULT_REGION": "us-east-1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}),
    }
    operator = OperatorProcess(cluster.kubeconfig(root / "kubeconfig", NS), NS, env, root / "operator.log").start()
    yield {"cluster": cluster, "kubeflow": kubeflow, "operator": operator, "root": root, "kueue": kueue}
    operator.stop()
    kueue.stop()
    gc.stop()
    kubeflow.stop()
    cluster.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, s3_endpoint: str) -> Iterator[dict[str, Any]]:
    yield from full_world(tmp_path_factory.mktemp("cluster"), mlflow_server, s3_endpoint, "operator-models")


def training_run(name: str, tiny_models: dict[str, Path], **spec: Any) -> dict[str, Any]:
    doc = base_run("risk-classification", tiny_models["bert"], name,
                   resources={"nodes": 2, "gpusPerNode": 0}, **spec)
    doc["metadata"]["namespace"] = NS
    doc["spec"]["registry"].setdefault("promotion", {"metric": "eval_f1_macro"})
    return doc


def phase_of(world: dict[str, Any], name: str) -> str | None:
    run = world["cluster"].run(NS, name)
    return (run or {}).get("status", {}).get("phase")


def wait_phase(world: dict[str, Any], name: str, *phases: str, timeout: float = 240) -> dict[str, Any]:
    cluster: Cluster = world["cluster"]
    try:
        return dict(cluster.wait(lambda: (r := cluster.run(NS, name)) and r.get("status", {}).get("phase") in phases
                                 and r, timeout, f"{name} to reach {phases}"))
    except TimeoutError:
        if world["kubeflow"] is not None:
            print(world["kubeflow"].logs(name))
        print(Path(world["root"] / "operator.log").read_text()[-5000:])
        raise


def test_run_succeeds_with_metrics_mlflow_and_model_in_status(world: dict[str, Any], tiny_models: dict[str, Path],
                                                             mlflow_server: str) -> None:
    cluster: Cluster = world["cluster"]
    cluster.apply_run(training_run("risk-ok", tiny_models))
    running = wait_phase(world, "risk-ok", "Running", "Succeeded")
    assert running["status"]["jobName"] == "risk-ok"
    job = cluster.get(*JOBS, NS, "risk-ok")
    assert job is not None
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master", "Worker"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == running["metadata"]["uid"]

    done = wait_phase(world, "risk-ok", "Succeeded")
    st = cluster.wait(lambda: (r := cluster.run(NS, "risk-ok")) and r["status"].get("model") and r["status"],
                      60, "the model in status")
    assert st["model"]["name"] == "risk-ok" and st["model"]["version"] == 1
    assert st["model"]["uri"] == "s3://operator-models/registry/risk-ok/v1"
    assert st["model"]["alias"] == "champion"
    assert st["mlflow"]["runId"] and st["mlflow"]["url"].startswith(mlflow_server)
    assert "eval_f1_macro" in st["metrics"] and st["keyMetric"].startswith("f1_macro=")
    assert st["progress"]["percent"] == 100 and st["progress"]["step"] == 6
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert done["status"]["observedGeneration"] == 1
    # The trainer in the "pods" ran as 2 nodes x 1 process, one MLflow run, logged by rank 0 alone.
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=mlflow_server).get_run(st["mlflow"]["runId"])
    assert run.data.params["resolved.world_size"] == "2"
    assert run.data.tags["legistra.run_key"] == done["metadata"]["uid"]

    # Its pods' logs, found and read by Kubeflow's TrainingClient through `legistra logs` (pods/log here is the
    # stand-in's process output): rank 0's by default, the Worker's for rank 1, every line when following.
    from tests.conftest import legistra

    kubeconfig = str(world["root"] / "kubeconfig")
    master = legistra("logs", "risk-ok", "--kubeconfig", kubeconfig)
    assert master.returncode == 0, master.stderr
    assert "validation rows" in master.stdout  # what rank 0 alone logs
    worker = legistra("logs", "risk-ok", "--rank", "1", "--kubeconfig", kubeconfig)
    assert worker.returncode == 0, worker.stderr
    assert "validation rows" not in worker.stdout
    followed = legistra("logs", "risk-ok", "-f", "--kubeconfig", kubeconfig)
    assert followed.returncode == 0 and "[Pod risk-ok-master-0]:" in followed.stdout, followed.stderr
    beyond = legistra("logs", "risk-ok", "--rank", "2", "--kubeconfig", kubeconfig)
    assert beyond.returncode == 1 and beyond.stderr.strip() == "error: --rank 2: this run has 2 ranks (0-1)"


def test_a_run_that_fails_on_its_last_attempt_leaves_no_running_pod(world: dict[str, Any],
                                                                    tiny_models: dict[str, Path]) -> None:
    """A crash that says nothing (a killed pod, an NCCL hang) restarts the containers in place until their restarts
    reach backoffLimit; the job fails. Under cleanPodPolicy None training-operator v1.9.4 keeps a failed job's
    pods and the kubelet goes on restarting them, holding their GPUs for ever: the operator, once it has read
    them, deletes the job. Before, the failed job stayed with its pods running."""
    doc = training_run("risk-broken", tiny_models, training={"maxSteps": 400, "batchSize": 2},
                       data={"maxSamples": 200}, runPolicy={"backoffLimit": 1, "maxAttempts": 1})
    cluster: Cluster = world["cluster"]
    kubeflow: FakeTrainingOperator = world["kubeflow"]
    cluster.apply_run(doc)
    cluster.wait(lambda: (s := kubeflow.jobs.get("risk-broken")) and len(s.pods) == 2, 120, "the job's pods")
    state = kubeflow.jobs["risk-broken"]
    kubeflow.kill_pod("risk-broken", "Worker")
    st = wait_phase(world, "risk-broken", "Failed")["status"]
    assert "Job risk-broken has failed because it has reached the specified backoff limit" in st["message"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "PyTorchJobFailed"
    assert "risk-broken" in kubeflow.failed  # the training-operator failed it (backoffLimit), not the operator
    cluster.wait(lambda: cluster.get(*JOBS, NS, "risk-broken") is None, 30, "the failed job to be deleted")
    cluster.wait(lambda: all(p.proc.poll() is not None for p in state.pods), 30, "its pods to stop")
    pods = [p for p in cluster.list("v1", "pods", NS)
            if p["metadata"]["labels"].get("training.kubeflow.org/job-name") == "risk-broken"]
    assert pods == []
    assert wait_phase(world, "risk-broken", "Failed")["status"]["message"] == st["message"]


def test_a_deterministic_failure_after_progress_is_read_from_the_restarted_container(
        world: dict[str, Any], tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A run that diverges (NaN weights) fails at the end of training, after progress, exits 2 and says Diverged.
    Under OnFailure the kubelet restarts it in place: no job condition changes, and the message moves to the
    container's lastState. The trainer's new start (in MLflow) makes the operator read the pods: Failed, Diverged,
    long before the job spends its backoffLimit (it used to be seen only once the job had failed)."""
    from tests.conftest import diverging_model

    poisoned = diverging_model(tiny_models["bert"], tmp_path / "poisoned")
    doc = training_run("risk-nan", tiny_models, training={"maxSteps": 500, "batchSize": 2, "loggingSteps": 5},
                       data={"maxSamples": 60}, runPolicy={"backoffLimit": 8, "maxAttempts": 2})
    doc["spec"]["model"]["name"] = str(poisoned)
    doc["spec"]["resources"]["nodes"] = 1
    cluster: Cluster = world["cluster"]
    kubeflow: FakeTrainingOperator = world["kubeflow"]
    posts = cluster.creates("pytorchjobs")
    cluster.apply_run(doc)
    st = wait_phase(world, "risk-nan", "Failed", timeout=180)["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Diverged", failed
    assert "risk-nan" not in kubeflow.failed  # stopped by the operator, not at the job's backoffLimit
    assert st["progress"]["step"] > 0 and 1 <= st["restarts"] < 8  # seen in lastState, after a restart
    assert st["attempt"] == 1 and cluster.creates("pytorchjobs") - posts == 1
    cluster.wait(lambda: cluster.get(*JOBS, NS, "risk-nan") is None, 30, "the crash-looping job to go")


def test_bad_data_fails_at_once_with_the_row_named(world: dict[str, Any], tiny_models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """The trainer's deterministic failure (exit 2 + termination message) ends the run after one attempt,
    backoffLimit and maxAttempts notwithstanding, with the bad row in the condition."""
    from tests.conftest import DATA

    rows = (DATA / "risk_train.jsonl").read_text().splitlines()[:40]
    rows[6] = json.dumps({"text": "Either party may terminate this Agreement.", "lab": "low"})  # row 7: no label
    bad = tmp_path / "train-bad.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    cluster: Cluster = world["cluster"]
    posts = cluster.creates("pytorchjobs")
    cluster.apply_run(training_run("risk-bad-row", tiny_models, data={"train": str(bad)},
                                   runPolicy={"backoffLimit": 3, "maxAttempts": 3, "retryDelaySeconds": 1}))
    st = wait_phase(world, "risk-bad-row", "Failed", timeout=120)["status"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidData"
    assert f"{bad}, row 7, field 'label': missing label" in failed["message"], failed["message"]
    assert st["attempt"] == 1 and "retryAt" not in st
    time.sleep(3)  # past retryDelaySeconds: still one job, never another attempt
    assert cluster.creates("pytorchjobs") - posts == 1
    assert phase_of(world, "risk-bad-row") == "Failed"
    assert cluster.wait(lambda: cluster.get(*JOBS, NS, "risk-bad-row") is None, 30, "the crash-looping job to go")


def kill_after_first_checkpoint(world: dict[str, Any], name: str, replica: str) -> None:
    """Wait for the run's checkpoint-10 on its volume, then kill one pod of `replica` as a node loss would."""
    kubeflow: FakeTrainingOperator = world["kubeflow"]
    ckpt = kubeflow.pvc_dir(name) / "output" / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    world["cluster"].wait(ckpt.exists, 240, "the first checkpoint")
    kubeflow.kill_pod(name, replica)


def test_pod_restart_resumes_from_the_checkpoint(world: dict[str, Any], tiny_models: dict[str, Path]) -> None:
    """A lost node's container restarts in place (OnFailure), under backoffLimit: the same job, the same attempt,
    training resumes from the last checkpoint."""
    doc = training_run("risk-restart", tiny_models, training={"maxSteps": 60, "saveSteps": 10, "batchSize": 2},
                       data={"maxSamples": 200}, runPolicy={"backoffLimit": 6})
    cluster: Cluster = world["cluster"]
    kubeflow: FakeTrainingOperator = world["kubeflow"]
    cluster.apply_run(doc)
    kill_after_first_checkpoint(world, "risk-restart", "Worker")
    cluster.wait(lambda: kubeflow.restarts("risk-restart") >= 1, 60, "the container to restart in place")
    done = wait_phase(world, "risk-restart", "Succeeded")["status"]
    assert done["attempt"] == 1
    result = json.loads((kubeflow.pvc_dir("risk-restart") / "output" / "result.json").read_text())
    assert result["globalStep"] == 60
    assert result["resumedFrom"] and "checkpoint-" in result["resumedFrom"]


def test_a_failed_job_is_replaced_by_an_attempt_that_resumes(world: dict[str, Any],
                                                              tiny_models: dict[str, Path]) -> None:
    # backoffLimit 0: the first killed pod fails the whole job, as a spent limit or an NCCL hang would.
    # ttlSecondsAfterFinished 0: the stand-in deletes the Failed job at once, as training-operator v1.9.4 does,
    # long before retryAt; the retry must still be attempt 2 (it used to make attempt 1 again, for ever).
    doc = training_run("risk-retry", tiny_models, training={"maxSteps": 60, "saveSteps": 10, "batchSize": 2},
                       data={"maxSamples": 200}, runPolicy={"backoffLimit": 0, "maxAttempts": 2,
                                                            "retryDelaySeconds": 3, "ttlSecondsAfterFinished": 0})
    cluster: Cluster = world["cluster"]
    kubeflow: FakeTrainingOperator = world["kubeflow"]
    posts = cluster.creates("pytorchjobs")
    cluster.apply_run(doc)
    kill_after_first_checkpoint(world, "risk-retry", "Worker")
    retrying = wait_phase(world, "risk-retry", "Retrying", timeout=60)["status"]
    assert retrying["attempt"] == 1 and retrying["retryAt"]
    assert retrying["message"].startswith("attempt 1 of 2 failed: Job risk-retry has failed because it has reached the "
                                         "specified backoff limit")
    cluster.wait(lambda: cluster.get(*JOBS, NS, "risk-retry") is None, 30, "the TTL to delete the failed job")
    second = cluster.wait(lambda: cluster.get(*JOBS, NS, "risk-retry"), 60, "the second attempt's job")
    assert second["metadata"]["annotations"]["legistra.io/attempt"] == "2"
    done = wait_phase(world, "risk-retry", "Succeeded")["status"]
    assert done["attempt"] == 2 and "retryAt" not in done
    assert cluster.creates("pytorchjobs") - posts == 2  # one job per attempt, never more
    result = json.loads((kubeflow.pvc_dir("risk-retry") / "output" / "result.json").read_text())
    assert result["globalStep"] == 60 and "checkpoint-" in (result["resumedFrom"] or "")


def test_a_stalled_job_is_replaced_and_the_next_attempt_resumes(world: dict[str, Any],
                                                                 tiny_models: dict[str, Path]) -> None:
    """A hung collective: after the first checkpoint every process of every pod stops (SIGSTOP), the pods stay
    Running and the job says nothing. Progress stands still for stallTimeout: the run gets Stalled and a Warning,
    the job is deleted, and the next attempt resumes from the checkpoint. Without the detection the run would wait
    for ever (this test times out)."""
    doc = training_run("risk-stall", tiny_models, training={"maxSteps": 60, "saveSteps": 10, "batchSize": 2,
                                                           "loggingSteps": 1, "stallTimeout": "8s"},
                       data={"maxSamples": 200}, runPolicy={"maxAttempts": 3, "retryDelaySeconds": 0})
    doc["spec"]["resources"]["nodes"] = 1  # one node: a hang needs no second one to show
    cluster: Cluster = world["cluster"]
    kubeflow: FakeTrainingOperator = world["kubeflow"]
    cluster.apply_run(doc)
    ckpt = kubeflow.pvc_dir("risk-stall") / "output" / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    cluster.wait(ckpt.exists, 240, "the first checkpoint")
    kubeflow.hang("risk-stall")  # the steps logged so far are in MLflow: the clock starts when the operator sees them
    stalled = cluster.wait(lambda: (r := cluster.run(NS, "risk-stall")) and next(
        (c for c in r["status"].get("conditions", []) if c["type"] == "Stalled" and c["status"] == "True"), None),
        60, "the Stalled condition")
    assert stalled["reason"] == "NoProgress" and "stallTimeout" in stalled["message"], stalled
    cluster.wait(lambda: any(e["reason"] == "Stalled" and e["type"] == "Warning" for e in cluster.list(
        "v1", "events", NS) if e["involvedObject"]["name"] == "risk-stall"), 30, "the Stalled event")  # posted after
    done = wait_phase(world, "risk-stall", "Succeeded")["status"]
    assert done["attempt"] >= 2 and done["usage"]["attempts"][0]["attempt"] == 1
    result = json.loads((kubeflow.pvc_dir("risk-stall") / "output" / "result.json").read_text())
    assert result["globalStep"] == 60 and "checkpoint-" in (result["resumedFrom"] or "")


def test_a_queued_job_stays_suspended_until_kueue_admits_it(world: dict[str, Any],
                                                            tiny_models: dict[str, Path]) -> None:
    """Kueue suspends a queue-labelled job at creation and owns suspend from then on. The operator used to set it
    back to the run's value on every pass, starting jobs the quota had not admitted (Kueue suspended them again:
    a flap). Now the run reads Pending, Queued, the job stays suspended, and Kueue's admission starts it."""
    cluster: Cluster = world["cluster"]
    kueue: FakeKueue = world["kueue"]
    doc = training_run("risk-queued", tiny_models)
    doc["spec"]["resources"]["queueName"] = "team-a"
    cluster.apply_run(doc)
    queued = cluster.wait(lambda: (r := cluster.run(NS, "risk-queued")) and r.get("status", {}).get(
        "message", "").startswith("queued in Kueue's team-a") and r, 60, "the run to read Queued")["status"]
    assert queued["phase"] == "Pending"
    # Kueue enables its PyTorchJob integration only when configured: said, not refused.
    warned = next(c for c in queued["conditions"] if c["type"] == "QueueIntegration")
    assert warned["status"] == "Unknown" and "kubeflow.org/pytorchjob" in warned["message"]
    time.sleep(3)  # several passes of the operator, the stand-ins and Kueue
    job = cluster.get(*JOBS, NS, "risk-queued")
    assert job is not None and job["spec"]["runPolicy"]["suspend"] is True
    assert kueue.undone.get("risk-queued", 0) == 0, "the operator undid Kueue's suspension"
    assert not world["kubeflow"].jobs["risk-queued"].pods
    kueue.admit("risk-queued")
    wait_phase(world, "risk-queued", "Running", "Succeeded", timeout=60)
    assert kueue.undone.get("risk-queued", 0) == 0
    cluster.delete("legistra.io/v1alpha1", "trainingruns", NS, "risk-queued")  # its job and pods follow


def test_suspend_then_resume(world: dict[str, Any], tiny_models: dict[str, Path]) -> None:
    cluster: Cluster = world["cluster"]
    doc = training_run("risk-suspend", tiny_models, runPolicy={"suspend": True})
    cluster.apply_run(doc)
    st = wait_phase(world, "risk-suspend", "Suspended")["status"]
    assert "suspended" in st["message"]
    job = cluster.get(*JOBS, NS, "risk-suspend")
    assert job is not None and job["spec"]["runPolicy"]["suspend"] is True
    # The stand-in sees the job on its next poll; the run can be Suspended before that.
    stand_in = world["kubeflow"].jobs
    assert world["cluster"].wait(lambda: "risk-suspend" in stand_in, 10, "the stand-in to see the job")
    assert not stand_in["risk-suspend"].pods
    cluster.edit_spec(NS, "risk-suspend", {"runPolicy": {"suspend": False}})
    wait_phase(world, "risk-suspend", "Running", "Succeeded")
    st = wait_phase(world, "risk-suspend", "Succeeded")["status"]
    assert not any(c["type"] == "SpecChangeRefused" and c["status"] == "True" for c in st["conditions"])


def test_spec_change_after_start_is_refused(world: dict[str, Any], tiny_models: dict[str, Path]) -> None:
    cluster: Cluster = world["cluster"]
    cluster.apply_run(training_run("risk-edit", tiny_models, runPolicy={"suspend": True}))
    wait_phase(world, "risk-edit", "Suspended")
    cluster.edit_spec(NS, "risk-edit", {"training": {"learningRate": 0.5}})
    cond = cluster.wait(lambda: next((c for c in (cluster.run(NS, "risk-edit") or {}).get("status", {})
                                      .get("conditions", []) if c["type"] == "SpecChangeRefused"
                                      and c["status"] == "True"), None), 30, "SpecChangeRefused")
    assert "training.learningRate" in cond["message"] and cond["observedGeneration"] == 2
    cm = cluster.get("v1", "configmaps", NS, "risk-edit-config")
    assert cm is not None and json.loads(cm["data"]["run.json"])["spec"]["training"]["learningRate"] == 0.003


def test_deletion_cascades_to_children(world: dict[str, Any], tiny_models: dict[str, Path]) -> None:
    cluster: Cluster = world["cluster"]
    cluster.apply_run(training_run("risk-delete", tiny_models, runPolicy={"suspend": True}))
    wait_phase(world, "risk-delete", "Suspended")
    cluster.delete("legistra.io/v1alpha1", "trainingruns", NS, "risk-delete")
    cluster.wait(lambda: cluster.get(*JOBS, NS, "risk-delete") is None
                 and cluster.get("v1", "configmaps", NS, "risk-delete-config") is None
                 and cluster.get("v1", "persistentvolumeclaims", NS, "risk-delete-checkpoints") is None,
                 30, "the children to be collected")


def test_object_storage_checkpoints_create_no_volume(world: dict[str, Any], tiny_models: dict[str, Path]) -> None:
    """Through the operator process: a run with checkpoints.uri gets its ConfigMap and job, node-local storage in
    the pods, the URI and the grace period, and no PersistentVolumeClaim."""
    cluster: Cluster = world["cluster"]
    doc = training_run("risk-s3ckpt", tiny_models, runPolicy={"suspend": True},
                       checkpoints={"uri": "s3://checkpoints/legal", "localSize": "20Gi"})
    doc["spec"]["resources"]["terminationGracePeriodSeconds"] = 90
    cluster.apply_run(doc)
    st = wait_phase(world, "risk-s3ckpt", "Suspended")["status"]
    assert not any(c["type"] == "CheckpointStorage" for c in st["conditions"])
    job = cluster.get(*JOBS, NS, "risk-s3ckpt")
    assert job is not None and cluster.get("v1", "configmaps", NS, "risk-s3ckpt-config") is not None
    assert cluster.get("v1", "persistentvolumeclaims", NS, "risk-s3ckpt-checkpoints") is None
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert {"name": "checkpoints", "emptyDir": {"sizeLimit": "20Gi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] == 90
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LEGISTRA_CHECKPOINT_URI"] == "s3://checkpoints/legal"


def test_invalid_spec_is_failed_without_a_job(world: dict[str, Any], tiny_models: dict[str, Path]) -> None:
    """What the CRD schema would reject server-side; the emulator does not validate, the operator still must."""
    doc = training_run("risk-invalid", tiny_models, training={"learningRate": -1, "batchSize": 0})
    world["cluster"].apply_run(doc)
    st = wait_phase(world, "risk-invalid", "Failed")["status"]
    assert st["message"] == ("spec.training.learningRate: must be > 0 (got -1); "
                             "spec.training.batchSize: must be >= 1 (got 0)")
    assert next(c for c in st["conditions"] if c["type"] == "Ready")["reason"] == "InvalidSpec"
    assert world["cluster"].get(*JOBS, NS, "risk-invalid") is None
    assert world["operator"].proc.poll() is None  # the operator did not crash


def test_a_run_that_cannot_fit_its_gpu_is_failed_without_a_job(world: dict[str, Any],
                                                              tiny_models: dict[str, Path]) -> None:
    """BART-large at batch 64 over 1024 tokens on a T4 node: refused before a GPU is spent, the batch that fits named."""
    doc = training_run("bart-on-t4", tiny_models, training={"batchSize": 64},
                       data={"maxLength": 1024, "maxTargetLength": 256})
    doc["spec"]["resources"] = {"gpusPerNode": 1, "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"}}
    doc["spec"]["task"] = "summarization"
    doc["spec"]["model"]["name"] = "facebook/bart-large"
    doc["spec"]["registry"].pop("promotion")
    world["cluster"].apply_run(doc)
    st = wait_phase(world, "bart-on-t4", "Failed")["status"]
    assert st["message"].startswith("spec.training.batchSize: batch 64 does not fit on T4: about ")
    assert "the largest batch that fits is" in st["message"]
    assert next(c for c in st["conditions"] if c["type"] == "Ready")["reason"] == "InsufficientGPUMemory"
    assert world["cluster"].get(*JOBS, NS, "bart-on-t4") is None
    assert world["cluster"].get("v1", "configmaps", NS, "bart-on-t4-config") is None


def test_hostile_specs_are_failed_without_a_job_and_without_echoing_secrets(world: dict[str, Any],
                                                                            tiny_models: dict[str, Path]) -> None:
    """A password inside a URI, a maxLength a well-known model cannot take, a bool for a number: what the CRD
    schema refuses on a real API server (the emulator does not) is refused by the operator, which quotes no
    password in the status."""
    cases = {
        "risk-password": ({"tracking": {"mlflow": {"trackingUri": "http://alice:s3cret@mlflow:5000"}}},
                          "spec.tracking.mlflow.trackingUri: must not carry a user or password"),
        "risk-too-long": ({"model": {"name": "facebook/bart-large"}, "data": {"maxLength": 4096}},
                          "spec.data.maxLength: 4096 tokens is more than facebook/bart-large can take (1024"),
        "risk-bool": ({"training": {"batchSize": True}}, "spec.training.batchSize: must be a whole number"),
    }
    for name, (changes, _) in cases.items():
        doc = training_run(name, tiny_models)
        for key, value in changes.items():
            doc["spec"].setdefault(key, {}).update(value)
        world["cluster"].apply_run(doc)
    for name, (_, message) in cases.items():
        st = wait_phase(world, name, "Failed")["status"]
        assert st["message"].startswith(message), st["message"]
        assert "s3cret" not in json.dumps(st)
        assert next(c for c in st["conditions"] if c["type"] == "Ready")["reason"] == "InvalidSpec"
        assert world["cluster"].get(*JOBS, NS, name) is None
    assert world["operator"].proc.poll() is None
    # Nor in an event or a line of the operator's log.
    assert "s3cret" not in json.dumps(world["cluster"].list("v1", "events", NS))
    assert "s3cret" not in (world["root"] / "operator.log").read_text(errors="replace")


def test_operator_killed_mid_run_creates_no_second_job(world: dict[str, Any], tiny_models: dict[str, Path]) -> None:
    cluster: Cluster = world["cluster"]
    operator: OperatorProcess = world["operator"]
    before = cluster.creates("pytorchjobs")
    cluster.apply_run(training_run("risk-crash", tiny_models, training={"maxSteps": 30, "batchSize": 2}))
    wait_phase(world, "risk-crash", "Running", "Succeeded")
    operator.kill()
    operator.start()
    st = wait_phase(world, "risk-crash", "Succeeded")["status"]
    cluster.wait(lambda: (cluster.run(NS, "risk-crash") or {}).get("status", {}).get("model"), 60, "model in status")
    assert cluster.creates("pytorchjobs") - before == 1  # one create ever, even across the restart
    assert st["jobName"] == "risk-crash"


def test_cli_submit_and_status(world: dict[str, Any], tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    from tests.conftest import legistra

    doc = training_run("risk-cli", tiny_models, runPolicy={"suspend": True})
    del doc["metadata"]["namespace"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    kubeconfig = str(world["root"] / "kubeconfig")
    res = legistra("submit", str(path), "--kubeconfig", kubeconfig)
    assert res.returncode == 0 and "trainingrun.legistra.io/risk-cli created in legal-ml" in res.stdout, res.stderr
    again = legistra("submit", str(path), "--kubeconfig", kubeconfig)
    assert again.returncode == 0 and "already exists" in again.stdout
    wait_phase(world, "risk-cli", "Suspended")
    res = legistra("status", "risk-cli", "--kubeconfig", kubeconfig)
    assert res.returncode == 0
    assert res.stdout.splitlines()[0] == "legal-ml/risk-cli  risk-classification  Suspended"
    assert "Ready" in res.stdout and "JobSuspended" not in res.stdout.splitlines()[0]
    res = legistra("status", "risk-cli", "--kubeconfig", kubeconfig, "--json")
    assert json.loads(res.stdout)["phase"] == "Suspended"
    missing = legistra("status", "nope", "--kubeconfig", kubeconfig)
    assert missing.returncode == 1 and "not found in legal-ml" in missing.stderr


def test_liveness_and_prometheus_metrics(world: dict[str, Any]) -> None:
    import urllib.request

    operator: OperatorProcess = world["operator"]
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "legistra_reconcile_seconds_count" in text
    assert 'legistra_trainingruns{phase="Succeeded"}' in text


def test_forbidden_child_fails_the_run_with_the_api_message(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """A permanent API error (here RBAC's 403 on PyTorchJobs) ends in Failed with the reason, not retries."""
    import kmock

    cluster = Cluster().start()
    cluster.emulator["post", kmock.resource("kubeflow.org", "v1", "pytorchjobs")] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'pytorchjobs.kubeflow.org is forbidden: cannot create resource "pytorchjobs"'}
    operator = OperatorProcess(cluster.kubeconfig(tmp_path / "kc", NS), NS, {}, tmp_path / "operator.log").start()
    try:
        cluster.apply_run(training_run("risk-forbidden", tiny_models))
        st = cluster.wait(lambda: (r := cluster.run(NS, "risk-forbidden")) and r.get("status", {}).get("phase")
                          == "Failed" and r["status"], 60, "the run to fail")
        failed = next(c for c in st["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "ChildCreateFailed"
        assert "cannot create PyTorchJob risk-forbidden" in failed["message"] and "forbidden" in failed["message"]
        assert operator.proc is not None and operator.proc.poll() is None
    finally:
        operator.stop()
        cluster.stop()


def test_finished_runs_cost_nothing_without_mlflow_and_a_run_may_name_its_own(
        tmp_path: Path, tiny_models: dict[str, Path], mlflow_server: str) -> None:
    """An operator with no tracking server (the Helm default): a run that tracks nowhere still finishes and then
    costs no request at all; a run that names its own server gets its model and metrics from there."""
    import time

    from legistra.operator.status import MAX_REPORT_LOOKUPS

    cluster = Cluster().start()
    kubeflow = FakeTrainingOperator(cluster, NS, tmp_path / "pods").start()
    env = {"LEGISTRA_TRAINER_EXTRA_ENV": json.dumps({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}),
           "LEGISTRA_RESYNC_SECONDS": "1"}
    operator = OperatorProcess(cluster.kubeconfig(tmp_path / "kc", NS), NS, env, tmp_path / "operator.log").start()
    world = {"cluster": cluster, "kubeflow": kubeflow, "root": tmp_path}
    try:
        untracked = training_run("risk-untracked", tiny_models)
        own = training_run("risk-own-mlflow", tiny_models,
                           tracking={"mlflow": {"trackingUri": mlflow_server, "experiment": "own-server"}})
        for doc in (untracked, own):
            doc["spec"]["resources"]["nodes"] = 1
            cluster.apply_run(doc)
        wait_phase(world, "risk-untracked", "Succeeded")
        st = cluster.wait(lambda: (r := cluster.run(NS, "risk-own-mlflow")) and r.get("status", {}).get("model")
                          and r["status"], 240, "the model of the run with its own MLflow")
        assert st["phase"] == "Succeeded" and st["mlflow"]["url"].startswith(mlflow_server)
        assert st["model"]["version"] == 1 and "eval_f1_macro" in st["metrics"]
        done = cluster.run(NS, "risk-untracked")
        assert done is not None and "model" not in done["status"] and done["status"]["observedGeneration"] == 1
        names = [f"{run}{suffix}" for run in ("risk-untracked", "risk-own-mlflow")
                 for suffix in ("", "-config", "-checkpoints")]
        time.sleep(MAX_REPORT_LOOKUPS + 2)  # resync every second: the bounded late lookups are spent
        before = cluster.requests_for(*names)
        time.sleep(4)  # four more resync ticks
        assert cluster.requests_for(*names) == before, "finished runs were reconciled again"
    finally:
        operator.stop()
        kubeflow.stop()
        cluster.stop()


def test_a_retry_starts_at_its_retry_at_not_at_the_next_resync(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """With a resync period of a minute, the second attempt still starts within 2 s of status.retryAt."""
    import datetime as dt

    cluster = Cluster().start()
    kubeflow = FakeTrainingOperator(cluster, NS, tmp_path / "pods").start()
    env = {"LEGISTRA_RESYNC_SECONDS": "60",
           "LEGISTRA_TRAINER_EXTRA_ENV": json.dumps({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})}
    operator = OperatorProcess(cluster.kubeconfig(tmp_path / "kc", NS), NS, env, tmp_path / "operator.log").start()
    world = {"cluster": cluster, "kubeflow": kubeflow, "root": tmp_path}
    try:
        doc = training_run("risk-timely", tiny_models, training={"maxSteps": 400, "batchSize": 2},
                           data={"maxSamples": 200},
                           runPolicy={"backoffLimit": 0, "maxAttempts": 2, "retryDelaySeconds": 4})
        doc["spec"]["resources"]["nodes"] = 1
        cluster.apply_run(doc)
        cluster.wait(lambda: (s := kubeflow.jobs.get("risk-timely")) and s.pods, 120, "the first attempt's pod")
        kubeflow.kill_pod("risk-timely", "Master")
        retry_at = dt.datetime.fromisoformat(
            wait_phase(world, "risk-timely", "Retrying", timeout=60)["status"]["retryAt"].replace("Z", "+00:00"))
        cluster.wait(lambda: cluster.creates("pytorchjobs") == 2, 30, "the second attempt's job")
        started = dt.datetime.now(dt.timezone.utc)
        late = (started - retry_at).total_seconds()
        assert 0.0 <= late <= 2.0, (started, retry_at)
    finally:
        operator.stop()
        kubeflow.stop()
        cluster.stop()


def test_progress_reaches_the_status_while_the_job_sends_no_events(tmp_path: Path, tiny_models: dict[str, Path],
                                                                    mlflow_server: str) -> None:
    """The operator process (kopf, its resync loop) between job events: a running job sends none for hours, and
    status.progress comes from the trainer's MLflow run, read by the resync pass. No stand-in trainer here: the
    job is flipped to Running by hand and the progress tag is written as rank 0 keeps it, so each step seen in
    the status can only have come through the resync (until fcf9c2b it stopped at the echo check)."""
    import mlflow

    from benchmarks.faults import job_conditions
    from legistra.contract import TAG_PROGRESS, TAG_RUN_KEY

    cluster = Cluster().start()
    env = {"LEGISTRA_RESYNC_SECONDS": "1"}
    operator = OperatorProcess(cluster.kubeconfig(tmp_path / "kc", NS), NS, env, tmp_path / "operator.log").start()
    world = {"cluster": cluster, "kubeflow": None, "root": tmp_path}
    try:
        experiment = f"progress-{tmp_path.name}"
        doc = training_run("risk-progress", tiny_models,
                           tracking={"mlflow": {"trackingUri": mlflow_server, "experiment": experiment}})
        cluster.apply_run(doc)
        cluster.wait(lambda: cluster.get(*JOBS, NS, "risk-progress"), 60, "the job")
        cluster.patch(*JOBS, NS, "risk-progress", job_conditions("Created", "Running"), sub="status")
        uid = wait_phase(world, "risk-progress", "Running", timeout=60)["metadata"]["uid"]
        client = mlflow.MlflowClient(mlflow_server)
        trainer = client.create_run(client.create_experiment(experiment), tags={TAG_RUN_KEY: uid})

        def step_in_status() -> int | None:
            run = cluster.run(NS, "risk-progress") or {}
            return ((run.get("status") or {}).get("progress") or {}).get("step")

        for step in (3, 7):  # the operator caches a trainer's report for 10 s: each step within a few ticks after
            client.set_tag(trainer.info.run_id, TAG_PROGRESS, json.dumps({"step": step, "totalSteps": 10}))
            cluster.wait(lambda s=step: step_in_status() == s, 40, f"step {step} in the run's status")
        final = cluster.run(NS, "risk-progress")
        assert final is not None and final["status"]["phase"] == "Running"
        assert final["status"]["progress"]["percent"] == 70
    finally:
        operator.stop()
        cluster.stop()
