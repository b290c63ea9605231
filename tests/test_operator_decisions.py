"""Operator decisions (pure): spec -> children, job status -> run status, refused spec changes, CRDs."""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kit.objects import run_doc as kit_run_doc
from legistra.api.crd import CRD_DIRS, all_crds, render
from legistra.api.validation import parse_training_run
from legistra.contract import MUTABLE_RUN_POLICY
from legistra.operator.backends import BACKENDS
from legistra.operator.build import (
    SPEC_HASH_ANNOTATION,
    build_children,
    build_pytorchjob,
    label_value,
    refused_changes,
    spec_hash,
)
from legistra.operator.config import JobDefaults
from legistra.operator.status import (
    MAX_REPORT_LOOKUPS,
    deterministic_failure,
    job_may_have_failed_pods,
    job_state,
    key_metric,
    needs_resync,
    set_condition,
)
from tests.conftest import EXAMPLES, ROOT
from tests.status_schema import desired_status, invalid_status

# The real Kubeflow CRDs (training-operator v1.9, Trainer v2.3.0), from the project's shared/ (beside the checkout).
REFERENCE_DIR = next((p for p in (ROOT.parent / "shared", ROOT / "shared")
                      if (p / "reference" / "kubeflow.org_pytorchjobs.yaml").exists()),
                     ROOT.parent / "shared") / "reference"
REFERENCE = REFERENCE_DIR / "kubeflow.org_pytorchjobs.yaml"
NOW = "2026-11-25T10:00:00+00:00"


@cache
def crd_schema(file: str, version: str) -> dict[str, Any]:
    path = REFERENCE_DIR / file
    assert path.exists(), f"the reference CRD is missing: {path} (shared/ beside the checkout)"
    crd = yaml.safe_load(path.read_text())
    found = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema: dict[str, Any] = found["schema"]["openAPIV3Schema"]
    return schema


def pytorchjob_schema() -> dict[str, Any]:
    return crd_schema("kubeflow.org_pytorchjobs.yaml", "v1")


def validate_closed(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    """Against a real CRD schema, with unknown fields made errors (the API server would drop them silently)."""
    schema = copy.deepcopy(schema)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and not node.get(
                    "x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema["properties"]["spec"])
    jsonschema.validate(obj, schema)


def validate_job(job: dict[str, Any]) -> None:
    """Against the real Kubeflow training-operator v1.9 CRD schema; unknown fields are errors here."""
    validate_closed(job, pytorchjob_schema())


def validate_trainjob(job: dict[str, Any]) -> None:
    """Against the real Kubeflow Trainer v2.3.0 TrainJob CRD schema; unknown fields are errors here."""
    validate_closed(job, crd_schema("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"))


def run_doc(**spec: Any) -> dict[str, Any]:
    return kit_run_doc(uid="1234-abcd", generation=1, **spec)


SETTINGS = JobDefaults(trainer_image="registry.example/legistra-trainer:1.0", mlflow_tracking_uri="http://mlflow:5000",
                            registry_uri="s3://models/registry", s3_endpoint="http://minio:9000", s3_secret="s3-creds",
                            checkpoint_storage_class="fast-rwx")


def children(**spec: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    cm, pvc, job = build_children(parse_training_run(run_doc(**spec)), SETTINGS)
    return cm, pvc, job


def test_single_node_job_shape() -> None:
    cm, pvc, job = children()
    validate_job(job)
    spec = job["spec"]
    assert list(spec["pytorchReplicaSpecs"]) == ["Master"]
    assert spec["nprocPerNode"] == "1"
    master = spec["pytorchReplicaSpecs"]["Master"]
    assert master["restartPolicy"] == "OnFailure" and master["replicas"] == 1
    pod = master["template"]["spec"]
    c = pod["containers"][0]
    assert c["name"] == "pytorch" and c["command"] == ["torchrun"]
    assert c["args"][:4] == ["-m", "legistra.trainer", "--config", "/etc/legistra/run.json"]
    assert c["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"] and pvc["spec"]["storageClassName"] == "fast-rwx"
    config = json.loads(cm["data"]["run.json"])
    assert config["spec"]["training"]["learningRate"] == 2e-5  # defaults resolved into the config
    assert config["metadata"] == {"name": "contract-risk", "namespace": "legal-ml", "uid": "1234-abcd"}
    for obj in (cm, pvc, job):
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref == {"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun", "name": "contract-risk",
                       "uid": "1234-abcd", "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["namespace"] == "legal-ml"
        assert obj["metadata"]["labels"]["legistra.io/run"] == "contract-risk"


def test_multi_node_job_with_scheduling() -> None:
    _, pvc, job = children(
        resources={"nodes": 4, "gpusPerNode": 8, "cpu": "32", "memory": "256Gi", "queueName": "team-legal",
                   "priorityClassName": "training-high", "nodeSelector": {"gpu": "h100"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                   "serviceAccountName": "trainer", "image": "my/trainer:2"},
        runPolicy={"backoffLimit": 5, "activeDeadlineSeconds": 86400, "ttlSecondsAfterFinished": 3600,
                   "cleanPodPolicy": "Running"},
    )
    validate_job(job)
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert spec["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] == "OnFailure"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-legal"
    assert spec["runPolicy"] == {"backoffLimit": 5, "cleanPodPolicy": "Running", "suspend": False,
                                 "activeDeadlineSeconds": 86400, "ttlSecondsAfterFinished": 3600,
                                 "schedulingPolicy": {"priorityClass": "training-high"}}
    pod = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "training-high"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "trainer"
    c = pod["containers"][0]
    assert c["image"] == "my/trainer:2"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi"}
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_credentials_only_as_secret_refs() -> None:
    _, _, job = children(tracking={"wandb": {"project": "legal", "apiKeySecret": {"name": "wandb", "key": "token"}}})
    env = {e["name"]: e for e in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WANDB_API_KEY"] == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "token"}}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert env["LEGISTRA_REGISTRY_URI"]["value"] == "s3://models/registry"
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio:9000"
    assert "value" not in env["WANDB_API_KEY"] and "value" not in env["AWS_ACCESS_KEY_ID"]
    _, _, offline = children(tracking={"wandb": {"project": "legal"}})
    env2 = {e["name"]: e for e in offline["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert env2["WANDB_MODE"]["value"] == "offline" and "WANDB_API_KEY" not in env2


def test_spec_overrides_operator_defaults_for_tracking_and_registry() -> None:
    _, _, job = children(tracking={"mlflow": {"trackingUri": "http://team-mlflow"}},
                         registry={"modelName": "x", "uri": "s3://team/models"})
    env = {e["name"]: e.get("value") for e in
           job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://team-mlflow" and env["LEGISTRA_REGISTRY_URI"] == "s3://team/models"


def test_cpu_only_run_has_one_process_and_no_gpu_limit() -> None:
    _, _, job = children(resources={"gpusPerNode": 0, "cpu": "4"})
    validate_job(job)
    assert job["spec"]["nprocPerNode"] == "1"
    c = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_fields_added_by_an_operator_upgrade_are_not_a_spec_change() -> None:
    """run.json written before `training.compile` existed: the current schema's default is not an edit."""
    desired = parse_training_run(run_doc()).spec.wire()
    older = copy.deepcopy(desired)
    del older["training"]["compile"]
    del older["data"]["format"]
    assert refused_changes(older, desired) == []
    older["training"]["learningRate"] = 0.5  # a real edit is still refused
    assert refused_changes(older, desired) == ["training.learningRate"]


def test_only_the_mutable_run_policy_fields_may_change_after_start() -> None:
    a = parse_training_run(run_doc()).spec.wire()
    b = copy.deepcopy(a)
    b["runPolicy"].update(suspend=True, maxAttempts=5, retryDelaySeconds=600)
    assert refused_changes(a, b) == [] and spec_hash(a) == spec_hash(b)
    c = copy.deepcopy(a)
    c["training"]["learningRate"] = 1e-4
    c["lora"]["r"] = 8
    assert refused_changes(a, c) == ["lora.r", "training.learningRate"]
    assert spec_hash(a) != spec_hash(c)
    job = build_pytorchjob(parse_training_run(run_doc()), SETTINGS)
    assert job["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == spec_hash(a)


def test_the_spec_hash_is_the_one_jobs_already_carry() -> None:
    """Jobs built by an earlier operator carry its hash: the bytes hashed must stay those of the first version
    (a deep copy through JSON, the mutable fields popped, sorted keys); a new hash would refuse every started run."""
    def first_version(wire: dict[str, Any]) -> str:
        shaped = json.loads(json.dumps(wire))
        for mutable in MUTABLE_RUN_POLICY:
            shaped.get("runPolicy", {}).pop(mutable, None)
        return hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()[:16]

    full = parse_training_run(run_doc()).spec.wire()
    no_policy = {k: v for k, v in full.items() if k != "runPolicy"}
    for wire in (full, no_policy, {"task": "summarization", "runPolicy": {"suspend": True}}):
        before = copy.deepcopy(wire)
        assert spec_hash(wire) == first_version(wire)
        assert wire == before  # the caller's spec is left as it was


def test_label_values_are_valid() -> None:
    assert label_value("nlpaueb/legal-bert-base-uncased") == "nlpaueb-legal-bert-base-uncased"
    assert label_value("s3://bucket/models/x/") == "s3-bucket-models-x"
    assert len(label_value("a" * 100)) == 63
    assert label_value("///") == "unknown"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_renders_a_valid_pytorchjob(path: Path) -> None:
    run = parse_training_run({**yaml.safe_load(path.read_text()), "metadata": {"name": "x", "uid": "u"}})
    validate_job(build_children(run, JobDefaults())[2])


def test_invalid_job_is_caught_by_the_reference_schema() -> None:
    _, _, job = children()
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate_job(job)
    _, _, job = children()
    job["spec"]["runPolicy"]["backofLimit"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_job(job)


# -- job status -> run status --------------------------------------------------------------------------


def job_with(*conds: tuple[str, str], replica_statuses: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "contract-risk"},
            "status": {"conditions": [{"type": t, "status": s, "reason": f"PyTorchJob{t}", "message": f"job {t.lower()}"}
                                      for t, s in conds], "replicaStatuses": replica_statuses or {}, **status}}


@pytest.mark.parametrize(
    ("conds", "suspend", "phase", "reason"),
    [
        ([], False, "Pending", "JobPending"),
        ([("Created", "True")], False, "Pending", "JobCreated"),
        ([("Created", "True"), ("Running", "True")], False, "Running", "JobRunning"),
        ([("Created", "True"), ("Running", "False"), ("Restarting", "True")], False, "Running", "JobRestarting"),
        ([("Created", "True"), ("Running", "False"), ("Succeeded", "True")], False, "Succeeded", "JobSucceeded"),
        ([("Created", "True"), ("Running", "False"), ("Failed", "True")], False, "Failed", "PyTorchJobFailed"),
        ([("Created", "True"), ("Suspended", "True")], False, "Suspended", "JobSuspended"),
        ([("Created", "True"), ("Running", "True")], True, "Suspended", "JobSuspended"),
        ([("Succeeded", "True"), ("Failed", "True")], False, "Succeeded", "JobSucceeded"),
        ([("Running", "Unknown")], False, "Pending", "JobPending"),
    ],
)
def test_job_state_table(conds: list[tuple[str, str]], suspend: bool, phase: str, reason: str) -> None:
    state = job_state(job_with(*conds), suspend)
    assert (state.phase, state.reason) == (phase, reason)


def test_no_job_is_pending() -> None:
    assert job_state(None, False).phase == "Pending"


def test_failure_message_names_the_failing_replica() -> None:
    job = job_with(("Failed", "True"), replica_statuses={"Master": {"failed": 1}, "Worker": {"active": 1, "failed": 2}})
    st = desired_status({}, job, generation=3, now=NOW, suspended_in_spec=False)
    assert st["phase"] == "Failed"
    assert st["message"] == "job failed Master replica failed (1 pod); Worker replica failed (2 pods)"
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PyTorchJobFailed" and failed["observedGeneration"] == 3
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Failed"


def test_succeeded_status_carries_report_and_ready() -> None:
    job = job_with(("Succeeded", "True"), startTime="2026-11-25T09:00:00Z", completionTime="2026-11-25T09:30:00Z")
    report = {"progress": {"step": 290, "totalSteps": 300, "epoch": 3.0},
              "metrics": {"eval_f1_macro": 0.8123, "eval_loss": 0.4},
              "mlflow": {"runId": "abc", "experimentId": "1", "url": "http://mlflow/#/x"},
              "model": {"name": "contract-risk", "version": 4, "uri": "s3://m/contract-risk/v4", "alias": "champion"}}
    st = desired_status({}, job, generation=2, now=NOW, suspended_in_spec=False, report=report, metric="f1_macro")
    assert st["phase"] == "Succeeded" and st["jobName"] == "contract-risk"
    assert st["startTime"] == "2026-11-25T09:00:00Z" and st["completionTime"] == "2026-11-25T09:30:00Z"
    assert st["progress"]["percent"] == 100
    assert st["keyMetric"] == "f1_macro=0.8123"
    assert st["model"]["version"] == 4 and st["mlflow"]["runId"] == "abc"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "Succeeded", 2)
    assert st["observedGeneration"] == 2


def test_progress_percent_while_running() -> None:
    st = desired_status({}, job_with(("Running", "True")), generation=1, now=NOW, suspended_in_spec=False,
                        report={"progress": {"step": 30, "totalSteps": 120}})
    assert st["progress"]["percent"] == 25


def test_transition_time_kept_while_status_unchanged() -> None:
    first = set_condition([], "Ready", "False", "Progressing", "x", "t1", 1)
    same = set_condition(first, "Ready", "False", "Progressing", "y", "t2", 1)
    flipped = set_condition(same, "Ready", "True", "Succeeded", "z", "t3", 1)
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["message"] == "y"
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_refused_spec_change_condition_and_its_clearing() -> None:
    st = desired_status({}, job_with(("Running", "True")), generation=2, now=NOW, suspended_in_spec=False,
                        refused=["training.learningRate"])
    cond = next(c for c in st["conditions"] if c["type"] == "SpecChangeRefused")
    assert cond["status"] == "True" and "training.learningRate" in cond["message"]
    assert st["phase"] == "Running"  # the running job is left alone
    cleared = desired_status(st, job_with(("Running", "True")), generation=3, now=NOW, suspended_in_spec=False)
    cond = next(c for c in cleared["conditions"] if c["type"] == "SpecChangeRefused")
    assert cond["status"] == "False"


def test_invalid_spec_status() -> None:
    st = invalid_status({}, ["spec.training.precision: fp16 is not allowed for t5 models"], NOW, 1)
    assert st["phase"] == "Failed" and st["message"].startswith("spec.training.precision")
    assert {c["type"]: c["reason"] for c in st["conditions"]} == {"Failed": "InvalidSpec", "Ready": "InvalidSpec"}


def test_key_metric() -> None:
    assert key_metric({"eval_rougeL": 0.31234}, "rougeL") == "rougeL=0.3123"
    assert key_metric({"eval_rougeL": 0.3}, "eval_rougeL") == "rougeL=0.3"
    assert key_metric({}, "x") is None and key_metric({"a": 1.0}, None) is None


# -- CRDs ------------------------------------------------------------------------------------------------


def test_committed_crds_match_the_schema() -> None:
    for folder in CRD_DIRS:
        for name, obj in all_crds().items():
            path = ROOT / folder / name
            assert path.read_text() == render(obj), f"{path} is stale: run `make crds`"


def test_crd_schema_accepts_examples_and_rejects_bad_specs() -> None:
    crd = all_crds()["legistra.io_trainingruns.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # OpenAPI v3.0 (what the API server speaks) has Draft 4's boolean exclusive bounds.
    validator = jsonschema.Draft4Validator(schema)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text()))
    for bad in (run_doc(training={"learningRate": 0}), run_doc(task="translation"),
                run_doc(deepspeed={"zeroStage": 4}), run_doc(registry={})):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)
    spec = schema["properties"]["spec"]
    assert spec["properties"]["training"]["properties"]["learningRate"]["default"] == 2e-5
    assert spec["properties"]["training"]["properties"]["learningRate"]["exclusiveMinimum"] is True
    assert all("description" in p for p in spec["properties"].values())
    assert {r["fieldPath"] for r in spec["x-kubernetes-validations"]} == {
        ".training.precision", ".training.evalSteps", ".training.earlyStopping", ".deepspeed",
        ".resources.tolerations"}


def test_crd_cel_t5_rule_matches_python_rule() -> None:
    """The CEL regex is the Python one; check it on names both ways (RE2 and re agree on this subset)."""
    import re

    from legistra.api.crd import T5_RULE
    from legistra.api.spec import T5_NAME, is_t5_family

    pattern = re.search(r"matches\('([^']+)'\)", T5_RULE)
    assert pattern is not None and pattern.group(1) == T5_NAME.pattern
    for name in ["t5-base", "google/flan-t5-xl", "facebook/bart-large", "google/pegasus-x", "Salesforce/codet5-small"]:
        assert bool(re.search(pattern.group(1), name.lower())) == is_t5_family(name)


RUN_FILES = [p for p in sorted(EXAMPLES.glob("*.yaml")) + sorted((ROOT / "manifests/samples").glob("*.yaml"))
             if yaml.safe_load(p.read_text()).get("kind") == "TrainingRun"]


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cli_render_output_validates(path: Path) -> None:
    from tests.conftest import legistra

    res = legistra("render", str(path), "-n", "legal-ml")
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(res.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PersistentVolumeClaim", "PyTorchJob"]
    validate_job(docs[2])
    assert json.loads(docs[0]["data"]["run.json"])["metadata"]["namespace"] == "legal-ml"


def test_the_condition_types_written_are_exactly_the_documented_ones() -> None:
    import datetime as dt

    from legistra.operator.decide import Observed, decide
    from legistra.operator.status import JobState
    from tests.status_schema import status_schema

    now = "2026-11-25T10:00:00Z"
    job = {"metadata": {"name": "r"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    statuses = [
        desired_status({}, None, generation=1, now=now, suspended_in_spec=False),
        desired_status({}, job, generation=1, now=now, suspended_in_spec=False, refused=["lora.r"]),
        desired_status({}, None, generation=1, now=now, suspended_in_spec=False,
                       storage=("NoReadWriteMany", "spec.checkpoints.uri: ...")),
        invalid_status({}, ["spec.x: bad"], now, 1),
        desired_status({}, job, generation=1, now=now, suspended_in_spec=False,
                       ended=JobState("Failed", "Stalled", "no progress for 30m")),
    ]
    # A new job's status says which kind it is and, queued as a PyTorchJob, that Kueue may not admit it.
    doc = run_doc(resources={"queueName": "team-a"})
    created = decide(Observed(doc, dt.datetime(2026, 11, 25, 10, tzinfo=dt.timezone.utc),
                              run=parse_training_run(doc), backend=BACKENDS["pytorchjob"],
                              backend_reason=("OnlyServed", "PyTorchJob: the only job kind this cluster serves")),
                     SETTINGS).status
    assert created is not None
    statuses.append(created)
    written = {c["type"] for s in statuses for c in s["conditions"]}
    documented = set(status_schema()["properties"]["conditions"]["items"]["properties"]["type"]["enum"])
    assert written == documented


@pytest.mark.parametrize(("status", "generation", "lookups", "expected"), [
    ({}, 1, 0, True),                                                             # never reconciled
    ({"phase": "Pending", "observedGeneration": 1}, 1, 0, True),
    ({"phase": "Running", "observedGeneration": 1}, 1, 0, True),                  # progress comes from MLflow
    ({"phase": "Retrying", "observedGeneration": 1}, 1, 0, True),
    ({"phase": "Suspended", "observedGeneration": 1}, 1, 0, True),
    ({"phase": "Failed", "observedGeneration": 1}, 1, 0, False),                  # finished
    ({"phase": "Failed", "observedGeneration": 1}, 2, 0, True),                   # maxAttempts raised: an edit
    ({"phase": "Succeeded", "observedGeneration": 1, "model": {"version": 1}}, 1, 0, False),
    ({"phase": "Succeeded", "observedGeneration": 1}, 1, 0, True),                # no model yet: look again
    ({"phase": "Succeeded", "observedGeneration": 1}, 1, MAX_REPORT_LOOKUPS - 1, True),
    ({"phase": "Succeeded", "observedGeneration": 1}, 1, MAX_REPORT_LOOKUPS, False),  # no MLflow: stop asking
    ({"phase": "Succeeded", "observedGeneration": 1}, 2, MAX_REPORT_LOOKUPS, True),
])
def test_which_runs_the_resync_loop_visits(status: dict[str, Any], generation: int, lookups: int,
                                           expected: bool) -> None:
    assert needs_resync(status, generation, lookups) is expected


def pod(job: str, *, state: dict[str, Any] | None = None, last: dict[str, Any] | None = None,
        container: str = "pytorch") -> dict[str, Any]:
    cs: dict[str, Any] = {"name": container, "state": state or {"running": {}}}
    if last is not None:
        cs["lastState"] = last
    return {"metadata": {"name": f"{job}-master-0", "labels": {BACKENDS["pytorchjob"].pod_label: job}},
            "status": {"containerStatuses": [cs]}}


BAD_ROW = {"terminated": {"exitCode": 1, "message": "InvalidData: train.jsonl, row 7, field 'label': missing label"}}


@pytest.mark.parametrize(("pods", "expected"), [
    ([], None),
    ([pod("r")], None),                                                              # still running
    ([pod("r", state=BAD_ROW)], ("InvalidData", "train.jsonl, row 7, field 'label': missing label")),
    ([pod("r", last=BAD_ROW)], ("InvalidData", "train.jsonl, row 7, field 'label': missing label")),  # restarted
    ([pod("r", state={"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": ""}})], None),
    ([pod("r", state={"terminated": {"exitCode": 1, "message": "Traceback ...\nRuntimeError: NCCL"}})], None),
    ([pod("other", state=BAD_ROW)], None),                                          # another job's pod
    ([pod("r", state=BAD_ROW, container="sidecar")], None),
    ([pod("r"), pod("r", state={"terminated": {"exitCode": 1, "message": "InvalidModel: spec.model.name: gone"}})],
     ("InvalidModel", "spec.model.name: gone")),
])
def test_deterministic_failures_from_pods(pods: list[dict[str, Any]], expected: tuple[str, str] | None) -> None:
    got = deterministic_failure(pods, "r")
    assert (None if got is None else (got.reason, got.message)) == expected


def test_a_deterministic_failure_fails_the_run_without_a_retry() -> None:
    job = {"metadata": {"name": "r"}, "status": {"conditions": [{"type": "Restarting", "status": "True"}]}}
    failure = deterministic_failure([pod("r", state=BAD_ROW)], "r")
    st = desired_status({}, job, generation=1, now="2026-11-25T10:00:00Z", suspended_in_spec=False,
                        max_attempts=3, failure=failure)
    assert st["phase"] == "Failed" and "retryAt" not in st
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidData" and "row 7" in failed["message"] and "not retried" in failed["message"]
    assert job_may_have_failed_pods(job) and not job_may_have_failed_pods(
        {"status": {"conditions": [{"type": "Running", "status": "True"}]}})


@pytest.mark.parametrize(("conditions", "current", "suspended", "on_event", "expected"), [
    ([("Running", "True")], {}, False, False, True),                         # startup: a crash loop has no condition
    ([("Running", "True")], {}, False, True, False),                         # ...but not on the job's start itself
    ([("Created", "True")], {}, False, True, False),
    ([("Created", "True")], {}, False, False, False),                        # pending: no trainer has started
    ([("Running", "True")], {"progress": {"step": 3}}, False, False, False),  # training: nothing to look for
    ([("Restarting", "True")], {"progress": {"step": 3}}, False, False, True),
    ([("Restarting", "True")], {}, False, True, True),                       # a failed pod: read at once
    ([("Failed", "True")], {"progress": {"step": 3}}, False, False, True),
    ([("Failed", "True")], {}, False, True, True),
    ([("Created", "True")], {}, True, False, False),                         # suspended: no pods
    ([("Succeeded", "True")], {}, False, False, False),
])
def test_when_pods_are_read_for_a_deterministic_failure(conditions: list[tuple[str, str]], current: dict[str, Any],
                                                        suspended: bool, on_event: bool, expected: bool) -> None:
    from legistra.operator.status import pods_worth_reading

    job = {"kind": "PyTorchJob", "status": {"conditions": [{"type": t, "status": s} for t, s in conditions]}}
    assert pods_worth_reading(job, current, suspended, on_event) is expected


STARTED = {"trainerStarted": "2026-12-06T10:00:00.000001Z"}


@pytest.mark.parametrize(("current", "report", "expected"), [
    ({"progress": {"step": 3}}, None, False),                                          # no report: no sign
    ({"progress": {"step": 3}}, {"progress": {"step": 4}}, False),                      # an older trainer
    ({"progress": {"step": 3}, "trainerStartedAt": STARTED["trainerStarted"]}, STARTED, False),  # seen already
    ({"progress": {"step": 3}, "trainerStartedAt": "2026-12-06T09:00:00Z"}, STARTED, True),     # started again
    ({"progress": {"step": 3}}, STARTED, True),                                          # not seen yet: look once
])
def test_a_trainer_that_started_again_is_noticed_from_its_report(current: dict[str, Any],
                                                                 report: dict[str, Any] | None,
                                                                 expected: bool) -> None:
    from legistra.operator.status import pods_worth_reading, trainer_restarted

    assert trainer_restarted(current, report) is expected
    running = {"kind": "PyTorchJob", "status": {"conditions": [{"type": "Running", "status": "True"}]}}
    # After progress the pods are read only on that sign (no Restarting under OnFailure), on the job's own event too.
    assert pods_worth_reading(running, current, False, False, report) is expected
    assert pods_worth_reading(running, current, False, True, report) is expected
    suspended = {"kind": "PyTorchJob", "status": {"conditions": [{"type": "Suspended", "status": "True"}]}}
    assert pods_worth_reading(suspended, current, True, False, report) is False


def restarted(job: str, count: int, container: str = "pytorch") -> dict[str, Any]:
    p = pod(job, container=container)
    p["status"]["containerStatuses"][0]["restartCount"] = count
    return p


@pytest.mark.parametrize(("pods", "expected"), [
    ([], 0),
    ([restarted("r", 0)], 0),
    ([restarted("r", 2), restarted("r", 1)], 3),                                     # summed, as PastBackoffLimit
    ([restarted("r", 2), restarted("other", 5)], 2),                                 # another job's pod
    ([restarted("r", 2), restarted("r", 4, container="sidecar")], 2),                # not the trainer
])
def test_in_place_restarts_are_summed_over_the_jobs_trainer_containers(pods: list[dict[str, Any]],
                                                                       expected: int) -> None:
    from legistra.operator.status import container_restarts

    assert container_restarts(pods, "r") == expected


@pytest.mark.parametrize(("restarts", "limit", "reached"), [
    (0, 0, False), (1, 0, True), (0, 3, False), (2, 3, False), (3, 3, True), (7, 3, True), (5, 6, False)])
def test_the_backoff_limit_a_trainjob_is_held_to(restarts: int, limit: int, reached: bool) -> None:
    from legistra.operator.status import restart_limit_reached

    got = restart_limit_reached(restarts, limit)
    assert (got is not None) is reached
    if got is not None:
        assert got.phase == "Failed" and got.reason == "BackoffLimitExceeded"
        assert f"reaching runPolicy.backoffLimit ({limit})" in got.message


@pytest.mark.parametrize(("kind", "conditions", "policy", "expected"), [
    ("PyTorchJob", [("Failed", "True")], "None", True),       # v1.9.4 keeps them, and they crash-loop for ever
    ("PyTorchJob", [("Failed", "True")], None, True),         # None is the training-operator's default too
    ("PyTorchJob", [("Failed", "True")], "Running", False),   # the training-operator deletes them
    ("PyTorchJob", [("Failed", "True")], "All", False),
    ("PyTorchJob", [("Running", "True")], "None", False),     # not failed: nothing to release
    ("PyTorchJob", [("Succeeded", "True")], "None", False),   # succeeded pods hold nothing
    ("TrainJob", [("Failed", "True")], None, False),          # a failed Job's controller deletes its pods
])
def test_which_failed_jobs_keep_their_pods(kind: str, conditions: list[tuple[str, str]], policy: str | None,
                                           expected: bool) -> None:
    from legistra.operator.status import keeps_pods_after_failure

    run_policy = {"cleanPodPolicy": policy} if policy else {}
    job = {"kind": kind, "spec": {"runPolicy": run_policy},
           "status": {"conditions": [{"type": t, "status": s} for t, s in conditions]}}
    assert keeps_pods_after_failure(job) is expected


def test_restarts_and_the_trainers_start_reach_the_status() -> None:
    from legistra.operator.status import JobState

    running = {"kind": "TrainJob", "metadata": {"name": "r"},
               "status": {"jobsStatus": [{"name": "node", "active": 1, "ready": 1}]}}
    st = desired_status({}, running, generation=1, now="2026-12-06T10:00:00Z", suspended_in_spec=False,
                        report=STARTED, restarts=2)
    assert st["restarts"] == 2 and st["trainerStartedAt"] == STARTED["trainerStarted"] and st["phase"] == "Running"
    kept = desired_status(st, running, generation=1, now="2026-12-06T10:00:05Z", suspended_in_spec=False)
    assert kept["restarts"] == 2  # pods not read this pass: the last count stays
    ended = JobState("Failed", "BackoffLimitExceeded", "the trainer restarted 3 times in place")
    retrying = desired_status(st, running, generation=1, now="2026-12-06T10:00:10Z", suspended_in_spec=False,
                              ended=ended, attempt=1, max_attempts=2, retry_at="2026-12-06T10:01:10Z", restarts=3)
    assert retrying["phase"] == "Retrying" and retrying["retryAt"] == "2026-12-06T10:01:10Z"
    assert retrying["message"].startswith("attempt 1 of 2 failed: the trainer restarted 3 times in place")
    final = desired_status(st, running, generation=1, now="2026-12-06T10:00:10Z", suspended_in_spec=False,
                           ended=ended, attempt=2, max_attempts=2)
    assert final["phase"] == "Failed"
    assert next(c for c in final["conditions"] if c["type"] == "Failed")["reason"] == "BackoffLimitExceeded"
    replaced = desired_status(st, running, generation=1, now="2026-12-06T10:00:10Z", suspended_in_spec=False,
                              replacing=True, attempt=2, max_attempts=2)
    assert "restarts" not in replaced  # counted per attempt


# -- checkpoints in object storage, and storage that cannot be had ------------------------------------------

@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_object_storage_checkpoints_claim_no_volume(backend: str) -> None:
    from legistra.operator.build import build_children

    run = parse_training_run(run_doc(resources={"nodes": 3, "terminationGracePeriodSeconds": 120},
                                     checkpoints={"uri": "s3://ckpt/legal", "localSize": "200Gi"}))
    defaults = JobDefaults(s3_secret="legistra-s3")
    children = build_children(run, defaults, 1, backend)  # type: ignore[arg-type]
    assert [c["kind"] for c in children] == ["ConfigMap", BACKENDS[backend].kind]  # no PVC, no RWX needed
    job = children[-1]
    (validate_job if backend == "pytorchjob" else validate_trainjob)(job)
    pod = (job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"] if backend == "pytorchjob" else
           job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
           ["template"]["spec"]["template"]["spec"])
    assert {"name": "checkpoints", "emptyDir": {"sizeLimit": "200Gi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] == 120
    env = {e["name"]: e for e in (job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
                                  if backend == "pytorchjob" else job["spec"]["trainer"])["env"]}
    assert env["LEGISTRA_CHECKPOINT_URI"]["value"] == "s3://ckpt/legal"
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]["value"] == "105"  # the grace period, less torchrun's margin
    # Credentials only from the existing S3 Secret: references, never values.
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
        "secretKeyRef": {"name": "legistra-s3", "key": "AWS_SECRET_ACCESS_KEY"}}}
    assert not any("value" in e and "AWS_SECRET" in e["name"] for e in env.values())

    # The operator's default URI counts as the spec's; without either, the PVC is back.
    plain = parse_training_run(run_doc(resources={"nodes": 3}))
    assert [c["kind"] for c in build_children(plain, JobDefaults(checkpoint_uri="s3://ckpt/x"), 1, backend)][:2] == [  # type: ignore[arg-type]
        "ConfigMap", BACKENDS[backend].kind]
    kinds = [c["kind"] for c in build_children(plain, JobDefaults(), 1, backend)]  # type: ignore[arg-type]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", BACKENDS[backend].kind]


def test_checkpoint_uri_must_be_object_storage() -> None:
    from legistra.api.validation import SpecError

    with pytest.raises(SpecError, match=r"spec\.checkpoints\.uri"):
        parse_training_run(run_doc(checkpoints={"uri": "/mnt/nfs/checkpoints"}))


def test_multi_node_without_object_storage_on_a_cluster_without_rwx_is_warned() -> None:
    from legistra.operator.build import storage_warning

    multi = parse_training_run(run_doc(resources={"nodes": 2}))
    no_rwx = JobDefaults(checkpoint_rwx=False)
    assert "set spec.checkpoints.uri" in (storage_warning(multi, no_rwx) or "")
    assert storage_warning(multi, JobDefaults()) is None  # the cluster has RWX (the default)
    assert storage_warning(parse_training_run(run_doc()), no_rwx) is None  # one node: RWO is enough
    with_uri = parse_training_run(run_doc(resources={"nodes": 2}, checkpoints={"uri": "s3://c/p"}))
    assert storage_warning(with_uri, no_rwx) is None
    assert JobDefaults.from_env({"LEGISTRA_CHECKPOINT_RWX": "false"}).checkpoint_rwx is False
    with pytest.raises(ValueError, match="LEGISTRA_CHECKPOINT_RWX='no': expected true or false"):
        JobDefaults.from_env({"LEGISTRA_CHECKPOINT_RWX": "no"})


def test_a_pending_checkpoint_volume_says_why_and_what_to_do() -> None:
    import datetime as dt

    from legistra.operator.status import volume_problem, volume_worth_checking

    now = dt.datetime(2026, 11, 25, 10, 5, tzinfo=dt.timezone.utc)
    pvc = {"metadata": {"name": "contract-risk-checkpoints", "creationTimestamp": "2026-11-25T10:00:00Z"},
           "spec": {"accessModes": ["ReadWriteMany"]}, "status": {"phase": "Pending"}}
    problem = volume_problem(pvc, now)
    assert problem == ("checkpoint volume contract-risk-checkpoints is still Pending: no ReadWriteMany volume from "
                       "the cluster's default storage class (if it has one); set spec.checkpoints.uri to an s3:// "
                       "prefix (no volume needed), or the operator's checkpoints.storageClassName to a class that "
                       "provides ReadWriteMany")
    assert volume_problem({**pvc, "status": {"phase": "Bound"}}, now) is None
    assert volume_problem(pvc, dt.datetime(2026, 11, 25, 10, 0, 30, tzinfo=dt.timezone.utc)) is None  # young
    assert volume_problem(None, now) is None

    job = {"kind": "PyTorchJob", "metadata": {"creationTimestamp": "2026-11-25T10:00:00Z"},
           "status": {"conditions": [{"type": "Created", "status": "True"}]}}
    assert volume_worth_checking(job, False, now)
    assert not volume_worth_checking(job, True, now)  # suspended: pods are not meant to run
    assert not volume_worth_checking(job, False, dt.datetime(2026, 11, 25, 10, 0, 10, tzinfo=dt.timezone.utc))
    running = {**job, "status": {"conditions": [{"type": "Running", "status": "True"}]}}
    assert not volume_worth_checking(running, False, now)

    st = desired_status({}, job, generation=1, now=NOW, suspended_in_spec=False,
                        storage=("VolumePending", problem))
    assert st["phase"] == "Pending" and st["message"] == problem
    cond = next(c for c in st["conditions"] if c["type"] == "CheckpointStorage")
    assert (cond["status"], cond["reason"]) == ("False", "VolumePending")
    bound = desired_status(st, job, generation=1, now=NOW, suspended_in_spec=False)
    cond = next(c for c in bound["conditions"] if c["type"] == "CheckpointStorage")
    assert (cond["status"], cond["reason"]) == ("True", "Available")


def _run_copy(version: str | None, generation: int = 1, uid: str = "u1", phase: str = "Pending") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "r", "namespace": "n", "uid": uid, "generation": generation}
    if version is not None:
        meta["resourceVersion"] = version
    return {"metadata": meta, "spec": {}, "status": {"phase": phase}}


@pytest.mark.parametrize(("a", "b", "newer"), [
    ("12", "9", True), ("9", "12", False), ("12", "12", False), (None, "3", False), ("3", None, False),
    ("x1", "x0", False), (None, None, False),
])
def test_newer_version_compares_etcd_revisions_and_never_guesses(a: str | None, b: str | None, newer: bool) -> None:
    from legistra.operator.kube import newer_version

    assert newer_version(a, b) is newer


def test_freshest_copy_of_a_run() -> None:
    from legistra.operator.runstate import Written, freshest

    ours = Written("u1", {"phase": "Running"}, "20", 1)
    lagging = _run_copy("15")
    got = freshest(lagging, ours)  # the watch body is older than our write: our status at our version
    assert got["status"] == {"phase": "Running"} and got["metadata"]["resourceVersion"] == "20"
    assert got["spec"] is lagging["spec"] and lagging["status"] == {"phase": "Pending"}  # the body is not changed
    assert freshest(_run_copy("20"), ours)["status"] == {"phase": "Pending"}  # same version: the body is the truth
    assert freshest(_run_copy("25"), ours)["metadata"]["resourceVersion"] == "25"  # someone wrote since
    assert freshest(_run_copy("15", generation=2), ours)["status"]["phase"] == "Pending"  # another spec: re-read
    assert freshest(_run_copy("15", uid="u2"), ours)["status"]["phase"] == "Pending"  # recreated under the name
    assert freshest(_run_copy("15"), None)["status"]["phase"] == "Pending"
    # An API emulator without versions: our own last write is the newest we know (no precondition is sent).
    assert freshest(_run_copy(None), Written("u1", {"phase": "Running"}, None, 1))["status"]["phase"] == "Running"


@pytest.mark.parametrize(("job_version", "mirrored", "late"), [
    ("40", "50", True),  # the event waited while a fresh read mirrored a later state
    ("50", "50", False),  # the state that was mirrored: reconcile it again (cheap, idempotent)
    ("60", "50", False),  # a newer state: mirror it
    ("40", None, False),  # nothing mirrored yet (a new operator process)
    (None, "50", False),  # an emulator without versions: never guess
])
def test_late_job_event(job_version: str | None, mirrored: str | None, late: bool) -> None:
    from legistra.operator.runstate import Written, late_job

    job = {"metadata": {"name": "r", "resourceVersion": job_version}, "status": {}}
    written = Written("u1", {"phase": "Succeeded"}, "70", 1, mirrored)
    assert late_job(job, written) is late
    assert late_job(None, written) is False  # no event body: reconcile reads the job anyway
    assert late_job(job, None) is False


def test_the_index_keeps_runs_without_the_api_servers_bookkeeping() -> None:
    from legistra.operator.runstate import lean

    body = {"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun", "spec": {"task": "x"}, "status": {"a": 1},
            "metadata": {"name": "r", "uid": "u", "generation": 2, "resourceVersion": "9",
                         "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "ml"}}}
    got = lean(body)
    assert got["metadata"] == {"name": "r", "uid": "u", "generation": 2, "resourceVersion": "9",
                               "annotations": {"team": "ml"}}
    assert got["spec"] == body["spec"] and got["status"] == body["status"]
    assert "managedFields" in body["metadata"]  # the watch body itself is left as it was


def test_runs_by_phase_follows_each_run_once() -> None:
    from legistra.operator import prometheus

    def gauge(phase: str) -> float:
        return prometheus.RUNS_BY_PHASE.labels(phase=phase)._value.get()

    before = {p: gauge(p) for p in ("Pending", "Running", "Succeeded")}
    prometheus.observe_phase(("t", "a"), "Pending")
    prometheus.observe_phase(("t", "b"), "Pending")
    prometheus.observe_phase(("t", "a"), "Running")
    prometheus.observe_phase(("t", "a"), "Running")  # the same phase again counts once
    assert gauge("Pending") - before["Pending"] == 1 and gauge("Running") - before["Running"] == 1
    prometheus.forget(("t", "a"))
    prometheus.forget(("t", "a"))  # a second DELETED event changes nothing
    prometheus.forget(("t", "b"))
    assert {p: gauge(p) for p in before} == before


def test_the_operator_keeps_each_run_as_compact_json_of_its_lean_copy() -> None:
    import json as _json

    from legistra.operator.runstate import compact, lean

    body = {"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun", "spec": {"task": "x", "n": [1, 2]},
            "metadata": {"name": "r", "namespace": "ns", "uid": "u", "managedFields": [{"manager": "kubectl"}]}}
    stored = compact(body)
    assert isinstance(stored, bytes) and b" " not in stored
    assert _json.loads(stored) == lean(body)


@pytest.mark.parametrize(("owners", "uid", "ours"), [
    ([{"uid": "u1"}], "u1", True),
    ([{"uid": "u0"}, {"uid": "u1"}], "u1", True),
    ([{"uid": "u0"}], "u1", False),  # another object's (an earlier run of this name being collected)
    ([], "u1", True),  # made by hand for this run: adopted, as before
    ([{"uid": "u0"}], None, True),  # a run without uid (a rendered one, never applied) cannot tell
])
def test_owned_by(owners: list[dict[str, str]], uid: str | None, ours: bool) -> None:
    from legistra.operator.reconcile import owned_by

    assert owned_by({"metadata": {"ownerReferences": owners}}, uid) is ours


def test_the_resync_pacer_spaces_starts_evenly_and_never_catches_up() -> None:
    from legistra.operator.resync import Pacer

    pacer = Pacer(rate=50)  # one start every 20 ms
    assert pacer.delay(100.0) == 0  # the first start of a pass waits for nothing
    assert pacer.delay(100.0) == pytest.approx(0.02)  # a second one asked at once waits its slot
    assert pacer.delay(100.0) == pytest.approx(0.04)  # each booked slot counts, asked or not yet waited
    assert pacer.delay(100.05) == pytest.approx(0.01)  # asked later, waits only for what is left of the slot
    assert pacer.delay(101.0) == 0  # late (a slow reconcile): at once,
    assert pacer.delay(101.0) == pytest.approx(0.02)  # and the spacing counts from then, no burst to catch up
    # 10,000 runs at the default rate: a pass of 200 s, not a burst of requests at the period's start.
    many = Pacer(rate=50)
    assert [many.delay(0.0) for _ in range(10_000)][-1] == pytest.approx(9_999 / 50)
