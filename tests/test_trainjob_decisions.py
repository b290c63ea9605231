"""Trainer v2 as pure decisions: the TrainJob built for a run (validated against the real v2.3.0 CRD), its status
mapped to the run's, the backend chosen, and the operator's own TTL."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from jsonschema import ValidationError

from legistra.api.validation import parse_training_run
from legistra.operator.backends import BACKENDS, backend_of, choose_backend
from legistra.operator.build import RUNTIME_PATCH_MANAGER, build_children, build_pytorchjob, build_trainjob
from legistra.operator.config import JobDefaults
from legistra.operator.status import finished_at, job_state, needs_resync, trainer_status_report
from tests.conftest import EXAMPLES
from tests.status_schema import desired_status, valid_status
from tests.test_operator_decisions import RUN_FILES, run_doc, validate_trainjob

DEFAULTS = JobDefaults(trainer_image="registry.example/legistra-trainer:1.0", mlflow_tracking_uri="http://mlflow:5000",
                       s3_secret="s3-creds", extra_env={"NCCL_DEBUG": "WARN"})


def full_run() -> dict:  # type: ignore[type-arg]
    return run_doc(resources={"nodes": 3, "gpusPerNode": 8, "cpu": "32", "memory": "256Gi", "shmSize": "32Gi",
                              "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                              "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                              "serviceAccountName": "trainer", "queueName": "legal-ml",
                              "trainingRuntime": "torch-distributed-h100"},
                   runPolicy={"activeDeadlineSeconds": 86400, "suspend": True},
                   tracking={"wandb": {"project": "p", "apiKeySecret": {"name": "wandb", "key": "api-key"}}})


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: p.name)
def test_every_example_builds_a_valid_trainjob(path: object) -> None:
    doc = yaml.safe_load(path.read_text())  # type: ignore[attr-defined]
    doc["metadata"].update(namespace="legal-ml", uid="uid-1")
    validate_trainjob(build_trainjob(parse_training_run(doc), DEFAULTS))


def test_the_trainjob_carries_everything_the_pytorchjob_does() -> None:
    run = parse_training_run(full_run())
    job = build_trainjob(run, DEFAULTS, attempt=2)
    validate_trainjob(job)
    pj = build_pytorchjob(run, DEFAULTS, attempt=2)
    pod = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    container = pod["containers"][0]
    spec = job["spec"]
    assert job["metadata"] == pj["metadata"]  # labels (Kueue's too), owner reference, spec hash, attempt
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "legal-ml"
    assert spec["runtimeRef"] == {"name": "torch-distributed-h100"}
    assert spec["suspend"] is True and spec["activeDeadlineSeconds"] == 86400
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 8
    assert (trainer["image"], trainer["command"], trainer["args"], trainer["env"]) == (
        container["image"], container["command"], container["args"], container["env"])
    assert trainer["command"] == ["torchrun"]  # no shell: spec values never reach one
    assert trainer["resourcesPerNode"] == container["resources"]
    assert {e["name"] for e in trainer["env"] if "valueFrom" in e} == {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"}
    assert all("value" not in e for e in trainer["env"] if "KEY" in e["name"])  # secrets only by reference
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == RUNTIME_PATCH_MANAGER
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    patched = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and patched["containers"][0]["name"] == "node"
    assert patched["volumes"] == pod["volumes"] and patched["containers"][0]["volumeMounts"] == container["volumeMounts"]
    assert patched["securityContext"] == pod["securityContext"]
    assert patched["containers"][0]["securityContext"] == container["securityContext"]
    for key in ("nodeSelector", "tolerations", "serviceAccountName"):
        assert patched[key] == pod[key]


def test_the_reference_schema_refuses_what_trainer_v2_does_not_know() -> None:
    job = build_trainjob(parse_training_run(full_run()), DEFAULTS)
    job["spec"]["trainer"]["restartPolicy"] = "ExitCode"  # a PyTorchJob idea with no place in a TrainJob
    with pytest.raises(ValidationError):
        validate_trainjob(job)
    job = build_trainjob(parse_training_run(full_run()), DEFAULTS)
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod["template"]["spec"]["template"]["spec"]["priorityClassName"] = "high"  # not patchable in v2.3
    with pytest.raises(ValidationError):
        validate_trainjob(job)


def test_children_per_backend() -> None:
    run = parse_training_run(run_doc())
    assert [c["kind"] for c in build_children(run, DEFAULTS, backend="trainjob")] == [
        "ConfigMap", "PersistentVolumeClaim", "TrainJob"]
    assert build_children(run, DEFAULTS)[2]["kind"] == "PyTorchJob"
    assert build_trainjob(run, DEFAULTS)["spec"]["runtimeRef"] == {"name": "torch-distributed"}


def trainjob(*conditions: str, jobs: dict | None = None, **status: object) -> dict:  # type: ignore[type-arg]
    conds = [{"type": c, "status": "True", "message": f"jobset {c}", "lastTransitionTime": "2026-11-25T10:00:00Z"}
             for c in conditions]
    st = {"conditions": conds, **status}
    if jobs is not None:
        st["jobsStatus"] = [{"name": "node", **jobs}]
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "r"},
            "status": st}


@pytest.mark.parametrize(("job", "suspended", "phase", "reason"), [
    (trainjob(), False, "Pending", "JobCreated"),
    (trainjob(jobs={"active": 0, "ready": 0}), False, "Pending", "JobCreated"),
    (trainjob(jobs={"active": 1, "ready": 1}), False, "Running", "JobRunning"),
    # JobSet counts the Job active while its pods are pending (waiting for GPUs): not Running yet.
    (trainjob(jobs={"active": 1, "ready": 0}), False, "Pending", "NodesStarting"),
    (trainjob("Suspended", jobs={"suspended": 1}), False, "Suspended", "JobSuspended"),
    (trainjob(), True, "Suspended", "JobSuspended"),
    (trainjob("Complete", jobs={"succeeded": 1}), False, "Succeeded", "JobSucceeded"),
    (trainjob("Failed", jobs={"failed": 1}), False, "Failed", "TrainJobFailed"),
    (trainjob("Complete", "Failed"), False, "Succeeded", "JobSucceeded"),  # terminal success wins
])
def test_trainjob_status_table(job: dict, suspended: bool, phase: str, reason: str) -> None:  # type: ignore[type-arg]
    state = job_state(job, suspended)
    assert (state.phase, state.reason) == (phase, reason)
    st = desired_status({}, job, generation=1, now="2026-11-25T10:00:00Z", suspended_in_spec=suspended)
    assert st["backend"] == "trainjob" and st["phase"] == phase
    assert next(c for c in st["conditions"] if c["type"] == "JobCreated")["message"] == "TrainJob r"


def test_a_failed_trainjob_says_which_job_failed() -> None:
    st = job_state(trainjob("Failed", jobs={"failed": 2}), False)
    assert st.message == "jobset Failed (node job: 2 failed)"


def test_trainer_status_progress_and_metrics() -> None:
    job = trainjob(jobs={"active": 1}, trainerStatus={"progressPercentage": 42, "estimatedRemainingSeconds": 60,
                                                      "metrics": [{"name": "eval_f1", "value": "0.71"},
                                                                  {"name": "note", "value": "n/a"}]})
    report = trainer_status_report(job)
    assert report == {"progress": {"percent": 42}, "metrics": {"eval_f1": 0.71}}
    st = desired_status({}, job, generation=1, now="2026-11-25T10:00:00Z", suspended_in_spec=False, report=report,
                        metric="f1")
    assert st["progress"]["percent"] == 42 and st["keyMetric"] == "f1=0.71"
    assert trainer_status_report(trainjob()) is None


def test_the_operators_ttl_for_trainjobs() -> None:
    done = trainjob("Complete")
    assert finished_at(done) == "2026-11-25T10:00:00Z" and finished_at(trainjob()) is None
    st = desired_status({}, done, generation=1, now="2026-11-25T10:00:00Z", suspended_in_spec=False,
                        job_delete_at="2026-11-25T10:01:00Z")
    assert st["jobDeleteAt"] == "2026-11-25T10:01:00Z"
    assert needs_resync({**st, "model": {"version": 1}}, 1, 0)  # finished, but its job is still to be deleted
    assert not needs_resync({**{k: v for k, v in st.items() if k != "jobDeleteAt"}, "model": {"version": 1}}, 1, 0)


CHOICES = ("auto", "pytorchjob", "trainjob")
SERVED = (frozenset(), frozenset({"pytorchjob"}), frozenset({"trainjob"}), frozenset({"pytorchjob", "trainjob"}))


def expected_backend(in_spec: str, configured: str, served: frozenset[str], started_on: str | None,
                     runtime: bool) -> tuple[str | None, str]:
    """The rule, written out as the issue and docs/operator.md state it."""
    if started_on is not None:
        return started_on, "Recorded"  # a started run keeps its kind, whatever is served now
    wanted = in_spec if in_spec != "auto" else configured
    if wanted != "auto":
        return (wanted if wanted in served else None,
                ("Requested" if in_spec != "auto" else "Configured") if wanted in served else "BackendUnavailable")
    if served == {"pytorchjob", "trainjob"}:
        return ("trainjob", "TrainerV2Preferred") if runtime else ("pytorchjob", "NoTrainingRuntime")
    if served:
        return next(iter(served)), "OnlyServed"
    return None, "BackendUnavailable"


@pytest.mark.parametrize("in_spec", CHOICES)
@pytest.mark.parametrize("configured", CHOICES)
@pytest.mark.parametrize("served", SERVED, ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("started_on", (None, "pytorchjob", "trainjob"))
@pytest.mark.parametrize("runtime", (False, True), ids=("no-runtime", "runtime"))
def test_backend_choice_table(in_spec: str, configured: str, served: frozenset[str], started_on: str | None,
                              runtime: bool) -> None:
    """Every combination (3 x 3 x 4 x 3 x 2 = 216): what the run asks, what the operator is set to, what the
    cluster serves, what the run started on, whether Trainer v2's runtime exists."""
    choice = choose_backend(in_spec, configured, served, started_on, runtime)  # type: ignore[arg-type]
    name, reason = expected_backend(in_spec, configured, served, started_on, runtime)
    assert ((choice.backend.name if choice.backend else None), choice.reason) == (name, reason)
    assert choice.message  # always says why, or what to install


def test_backend_choice_messages() -> None:
    trainjob = choose_backend("trainjob", "auto", {"pytorchjob"}, None)
    assert trainjob.message == ("spec.resources.backend asks for TrainJob, but this cluster serves no "
                                "trainer.kubeflow.org/v1alpha1 trainjobs: install Kubeflow Trainer v2 (TrainJob), or "
                                "choose another backend")
    both = choose_backend("auto", "auto", {"pytorchjob", "trainjob"}, None, True, "torch-distributed")
    assert "ClusterTrainingRuntime torch-distributed exists" in both.message and "deprecated" in both.message
    missing = choose_backend("auto", "auto", {"pytorchjob", "trainjob"}, None, False, "torch-distributed")
    assert "ClusterTrainingRuntime torch-distributed does not exist" in missing.message


def test_backends_know_their_jobs() -> None:
    tj, pj = BACKENDS["trainjob"], BACKENDS["pytorchjob"]
    assert backend_of({"kind": "TrainJob"}) is tj and backend_of({"kind": "PyTorchJob"}) is pj
    assert tj.suspend_patch(True) == {"metadata": {"annotations": {"legistra.io/suspend": "true"}},
                                      "spec": {"suspend": True}}
    assert pj.suspend_patch(False) == {"metadata": {"annotations": {"legistra.io/suspend": "false"}},
                                       "spec": {"runPolicy": {"suspend": False}}}
    assert tj.suspended({"spec": {"suspend": True}}) and not pj.suspended({"spec": {"suspend": True}})


def test_unavailable_backend_is_a_valid_pending_status() -> None:
    from legistra.operator.status import waiting_status

    st = valid_status(waiting_status({}, "BackendUnavailable", "install Kubeflow Trainer v2", "2026-11-25T10:00:00Z", 1))
    assert st["phase"] == "Pending" and st["conditions"][0]["reason"] == "BackendUnavailable"


def test_render_prints_the_trainjob(tmp_path: object) -> None:
    from tests.conftest import legistra

    out = legistra("render", "--backend", "trainjob", str(EXAMPLES / "clause-extraction.yaml"))
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PersistentVolumeClaim", "TrainJob"]
    docs[2]["metadata"]["ownerReferences"][0]["uid"] = "u"
    validate_trainjob(docs[2])


def queued_job(kind: str, suspended: bool, written: str | None, queue: str | None = "team-a") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "r", "labels": {"kueue.x-k8s.io/queue-name": queue} if queue else {}}
    if written is not None:
        meta["annotations"] = {"legistra.io/suspend": written}
    spec = {"runPolicy": {"suspend": suspended}} if kind == "PyTorchJob" else {"suspend": suspended}
    return {"kind": kind, "metadata": meta, "spec": spec}


@pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])
@pytest.mark.parametrize(("suspended", "written", "wanted", "queue", "write"), [
    # No queue: the operator owns suspend and keeps it equal to the run's.
    (True, None, False, None, False), (False, None, True, None, True), (False, None, False, None, None),
    # A queue: Kueue suspended it at creation, the run never asked: leave it (before: written back to false).
    (True, "false", False, "team-a", None),
    # Kueue admitted it: leave it running.
    (False, "false", False, "team-a", None),
    # Kueue preempted it: leave it suspended.
    (True, "false", False, "team-a", None),
    # The user suspends the run, then resumes it: the operator's own transitions go through.
    (False, "false", True, "team-a", True), (True, "true", False, "team-a", False),
    # A job built before the annotation: a suspend goes through, a resume is left to Kueue.
    (False, None, True, "team-a", True), (True, None, False, "team-a", None),
])
def test_suspend_is_shared_with_kueue(kind: str, suspended: bool, written: str | None, wanted: bool,
                                      queue: str | None, write: bool | None) -> None:
    job = queued_job(kind, suspended, written, queue)
    assert backend_of(job).suspend_to_write(job, wanted) is write


@pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])
def test_a_job_kueue_holds_reads_queued_not_suspended(kind: str) -> None:
    held = queued_job(kind, True, "false")
    held["status"] = {"conditions": [{"type": "Suspended", "status": "True"}]}
    state = job_state(held, suspended_in_spec=False)
    assert (state.phase, state.reason) == ("Pending", "Queued")
    assert state.message == "queued in Kueue's team-a: the job starts when Kueue admits it"
    # suspended by its own run: Suspended, as before
    assert job_state(held, suspended_in_spec=True).phase == "Suspended"
    # admitted (unsuspended): whatever the job says
    admitted = queued_job(kind, False, "false")
    assert job_state(admitted, suspended_in_spec=False).reason != "Queued"


def test_a_trainjob_whose_pods_wait_is_checked_for_its_volume_and_its_pods_are_not_listed() -> None:
    """A TrainJob waiting for its nodes (JobSet: active, not ready) reads Pending, so its unbound checkpoint PVC is
    looked at after a minute (VolumePending) and its pods, which cannot have failed yet, are not listed on every
    resync. Before, `active` alone read Running: the PVC was never reported and the pods listed every pass."""
    import datetime as dt

    from legistra.operator.status import pods_worth_reading, volume_worth_checking

    waiting = trainjob(jobs={"active": 1, "ready": 0})
    waiting["metadata"]["creationTimestamp"] = "2026-11-25T10:00:00Z"
    later = dt.datetime(2026, 11, 25, 10, 2, tzinfo=dt.timezone.utc)
    assert volume_worth_checking(waiting, False, later)
    assert not pods_worth_reading(waiting, {"phase": "Pending"}, False)
    running = trainjob(jobs={"active": 1, "ready": 1})
    running["metadata"]["creationTimestamp"] = "2026-11-25T10:00:00Z"
    assert not volume_worth_checking(running, False, later)
    assert pods_worth_reading(running, {"phase": "Running"}, False)
