"""The TrainingRun schema: defaults, and bad specs with their exact messages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from legistra.api.spec import TrainingRunSpec, is_t5_family
from legistra.api.validation import SpecError, load_training_run, parse_training_run
from tests.conftest import EXAMPLES, legistra

GOOD: dict[str, Any] = {
    "apiVersion": "legistra.io/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "ok-run"},
    "spec": {
        "task": "risk-classification",
        "model": {"name": "nlpaueb/legal-bert-base-uncased"},
        "data": {"train": "s3://bucket/train.jsonl"},
        "registry": {"modelName": "clause-risk"},
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        node = doc["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return doc


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_training_run(doc)
    return info.value.problems


def test_defaults_follow_the_seed_guide() -> None:
    spec = parse_training_run(GOOD).spec
    assert spec.training.learning_rate == 2e-5
    assert spec.training.batch_size == 8
    assert spec.training.epochs == 3
    assert spec.training.evaluation == "epoch"
    assert spec.training.precision == "fp16"
    assert spec.lora.enabled is True
    assert spec.deepspeed.enabled is False
    wire = spec.wire()
    assert wire["training"]["learningRate"] == 2e-5
    assert "targetModules" not in wire["lora"]  # None means per-architecture defaults


def test_wire_round_trip_is_stable() -> None:
    spec = parse_training_run(GOOD).spec
    again = TrainingRunSpec.model_validate(spec.wire())
    assert again == spec


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"training__learningRate": 0}, "spec.training.learningRate: must be > 0 (got 0)"),
        ({"training__learningRate": -1e-4}, "spec.training.learningRate: must be > 0 (got -0.0001)"),
        ({"training__batchSize": 0}, "spec.training.batchSize: must be >= 1 (got 0)"),
        ({"training__precision": "fp8"}, "spec.training.precision: must be one of 'fp16', 'bf16' or 'fp32' (got 'fp8')"),
        ({"task": "translation"},
         "spec.task: must be one of 'summarization', 'clause-extraction' or 'risk-classification' (got 'translation')"),
        ({"deepspeed__zeroStage": 4}, "spec.deepspeed.zeroStage: must be <= 3 (got 4)"),
        ({"training__learningRateX": 1}, "spec.training.learningRateX: unknown field"),
        ({"lora__rank": 8}, "spec.lora.rank: unknown field"),
        ({"registry__modelName": "Bad/Name"}, "spec.registry.modelName: must match ^[a-z0-9][a-z0-9._-]{0,127}$ "
                                              "(got 'Bad/Name')"),
        ({"data__validationSplit": 1.5}, "spec.data.validationSplit: must be < 1 (got 1.5)"),
        ({"training__stallTimeout": "30 min"},
         "spec.training.stallTimeout: must be a duration such as 90s, 30m or 2h (0 turns it off) (got '30 min')"),
        ({"resources__tolerations": [{"effect": "Sometimes"}]},
         "spec.resources.tolerations[0].effect: must be one of 'NoSchedule', 'PreferNoSchedule' or 'NoExecute' "
         "(got 'Sometimes')"),
    ],
)
def test_bad_field_is_named_with_its_problem(changes: dict[str, Any], expected: str) -> None:
    assert problems(with_spec(**changes)) == [expected]


def test_missing_required_fields_are_listed_together() -> None:
    doc = copy.deepcopy(GOOD)
    del doc["spec"]["data"]
    del doc["spec"]["registry"]
    assert problems(doc) == ["spec.data: required field is missing", "spec.registry: required field is missing"]


def test_every_problem_is_reported_at_once() -> None:
    doc = with_spec(training__learningRate=0, training__batchSize=0, lora__dropout=2)
    assert problems(doc) == [
        "spec.training.learningRate: must be > 0 (got 0)",
        "spec.training.batchSize: must be >= 1 (got 0)",
        "spec.lora.dropout: must be < 1 (got 2)",
    ]


@pytest.mark.parametrize("model", ["t5-base", "google/flan-t5-large", "google/mt5-small", "Salesforce/codet5-base"])
def test_fp16_with_t5_is_refused(model: str) -> None:
    doc = with_spec(task="summarization", model={"name": model})
    assert problems(doc) == [
        "spec.training.precision: fp16 is not allowed for T5-family models (they overflow to NaN); use bf16 or fp32"
    ]
    ok = with_spec(task="summarization", model={"name": model}, training={"precision": "bf16"})
    assert parse_training_run(ok).spec.training.precision == "bf16"


def test_t5_detection_does_not_catch_other_names() -> None:
    assert not is_t5_family("facebook/bart-large")
    assert not is_t5_family("google/pegasus-billsum")
    assert is_t5_family("t5-small")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"training": {"evaluation": "steps"}}, "spec.training.evalSteps: required when evaluation is 'steps'"),
        ({"training": {"evaluation": "no", "earlyStopping": {"patience": 2}}},
         "spec.training.earlyStopping: needs evaluation ('epoch' or 'steps')"),
        ({"deepspeed": {"zeroStage": 2, "config": {"zero_optimization": {"stage": 3}}}},
         "spec.deepspeed: give zeroStage or config, not both"),
    ],
)
def test_cross_field_rules(changes: dict[str, Any], expected: str) -> None:
    assert problems(with_spec(**changes)) == [expected]


def test_wrong_kind_and_api_version() -> None:
    doc = copy.deepcopy(GOOD)
    doc["apiVersion"] = "legistra.io/v1"
    doc["kind"] = "TrainingJob"
    assert problems(doc) == [
        "apiVersion: must be one of 'legistra.io/v1alpha1' (got 'legistra.io/v1')",
        "kind: must be one of 'TrainingRun' (got 'TrainingJob')",
    ]


def test_bad_metadata_name() -> None:
    doc = copy.deepcopy(GOOD)
    doc["metadata"]["name"] = "Has_Capitals"
    assert problems(doc) == ["metadata.name: must be a DNS-1123 label: lower-case letters, digits and '-', starting and "
                             "ending with a letter or digit (got 'Has_Capitals')"]


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError) as info:
        parse_training_run(["a", "list"])
    assert info.value.problems == ["document: must be a mapping with apiVersion, kind, metadata and spec"]


def test_examples_validate() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        run = load_training_run(path)
        assert run.metadata.name


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_spec(training__learningRate=0, lora__rank=3)))
    ok = legistra("validate", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "ok (risk-classification" in ok.stdout
    res = legistra("validate", str(bad))
    assert res.returncode == 1
    assert "spec.training.learningRate: must be > 0 (got 0)" in res.stderr
    assert "spec.lora.rank: unknown field" in res.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed")
    res = legistra("validate", str(broken))
    assert res.returncode == 1 and "YAML:" in res.stderr


# -- what a cluster would refuse later, caught here (issue: bad input before a GPU is spent) ---------------------

BAD_FIELDS = [
    ("resources__cpu", "eight",
     "spec.resources.cpu: must be a Kubernetes quantity such as 8, 500m, 1.5 or 64Gi (got 'eight')"),
    ("resources__memory", "64 GB",
     "spec.resources.memory: must be a Kubernetes quantity such as 8, 500m, 1.5 or 64Gi (got '64 GB')"),
    ("resources__shmSize", "-1Gi",
     "spec.resources.shmSize: must be a Kubernetes quantity such as 8, 500m, 1.5 or 64Gi (got '-1Gi')"),
    ("resources__image", "Trainer:Latest!",
     "spec.resources.image: must be an image reference such as registry.example.com/team/trainer:1.2 "
     "(lower-case repository) (got 'Trainer:Latest!')"),
    ("resources__nodeSelector", {"pool": "gpu nodes"},
     "spec.resources.nodeSelector.pool: must be a label value: at most 63 letters, digits, '-', '_' or '.', "
     "starting and ending with a letter or digit (got 'gpu nodes')"),
    ("resources__nodeSelector", {"gpu type": "h100"},
     "spec.resources.nodeSelector.gpu type (key): 'gpu type' is not a label key: an optional DNS-1123 prefix and "
     "'/', then at most 63 letters, digits, '-', '_' or '.'"),
    ("resources__queueName", "team queue",
     "spec.resources.queueName: must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and "
     "ending with a letter or digit (got 'team queue')"),
    ("resources__priorityClassName", "High_Priority",
     "spec.resources.priorityClassName: must be a DNS-1123 name: lower-case letters, digits, '-' and '.', starting "
     "and ending with a letter or digit (got 'High_Priority')"),
    ("resources__serviceAccountName", "trainer-",
     "spec.resources.serviceAccountName: must be a DNS-1123 name: lower-case letters, digits, '-' and '.', starting "
     "and ending with a letter or digit (got 'trainer-')"),
    ("tracking__wandb", {"project": "p", "apiKeySecret": {"name": "My_Secret", "key": "k"}},
     "spec.tracking.wandb.apiKeySecret.name: must be a DNS-1123 name: lower-case letters, digits, '-' and '.', "
     "starting and ending with a letter or digit (got 'My_Secret')"),
    ("classification__labels", ["low", "high", "low"], "spec.classification.labels: duplicate entries: low"),
    ("classification__labels", ["low", " "], "spec.classification.labels: entries must not be empty"),
    ("extraction__clauseTypes", [], "spec.extraction.clauseTypes: must not be empty"),
    ("lora__targetModules", [], "spec.lora.targetModules: must not be empty"),
    ("lora__targetModules", ["q_proj", "q_proj"], "spec.lora.targetModules: duplicate entries: q_proj"),
    ("data__train", "s3:///train.jsonl", "spec.data.train: s3:///train.jsonl: no bucket after s3://"),
    ("model__name", "s3://", "spec.model.name: s3://: no bucket after s3://"),
    ("registry__uri", "s3:///models", "spec.registry.uri: s3:///models: no bucket after s3://"),
    ("training__metricForBestModel", "bleu",
     "spec.training.metricForBestModel: risk-classification does not report 'bleu'; it reports accuracy, f1_macro, "
     "f1_micro, loss (with or without the eval_ prefix)"),
    ("registry__promotion", {"metric": "eval_rougeL"},
     "spec.registry.promotion.metric: risk-classification does not report 'eval_rougeL'; it reports accuracy, "
     "f1_macro, f1_micro, loss (with or without the eval_ prefix)"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS, ids=[f"{b[0]}={b[1]!r}" for b in BAD_FIELDS])
def test_what_a_cluster_would_refuse_later_is_refused_now(field: str, value: Any, message: str) -> None:
    assert problems(with_spec(**{field: value})) == [message]


@pytest.mark.parametrize(("field", "value"), [
    ("resources__cpu", "500m"), ("resources__cpu", "1.5"), ("resources__memory", "64Gi"),
    ("resources__memory", "1e9"), ("resources__shmSize", "512Mi"),
    ("resources__image", "nvcr.io/nvidia/pytorch:25.01-py3"),
    ("resources__image", "localhost:5000/team/trainer@sha256:" + "a" * 64),
    ("resources__image", "registry.example.com/legal_ml/legistra-trainer"),
    ("resources__nodeSelector", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "a100"}),
    ("resources__queueName", "legal-ml.gpu_queue"), ("resources__priorityClassName", "high.priority"),
    ("data__train", "s3://Legacy_Bucket/train.jsonl"), ("data__train", "lexglue:ledgar"),
    ("training__metricForBestModel", "eval_f1_macro"),
    ("registry__promotion", {"metric": "accuracy", "direction": "maximize"}),
])
def test_valid_kubernetes_values_are_accepted(field: str, value: Any) -> None:
    parse_training_run(with_spec(**{field: value}))


def test_extraction_accepts_per_clause_type_metrics() -> None:
    doc = with_spec(task="clause-extraction", training__metricForBestModel="eval_f1/governing_law")
    assert parse_training_run(doc).spec.training.metric_for_best_model == "eval_f1/governing_law"
    assert problems(with_spec(task="clause-extraction", training__metricForBestModel="f1/"))[0].startswith(
        "spec.training.metricForBestModel: clause-extraction does not report 'f1/'")


def test_task_metrics_are_what_the_trainer_computes() -> None:
    from legistra.api.tasks import TASK_METRICS
    from legistra.trainer.metrics import Span, classification_metrics, multilabel_metrics, rouge_scores, span_metrics

    def names(metrics: dict[str, float]) -> set[str]:
        return {k for k in metrics if "/" not in k}

    assert names(classification_metrics([0, 1], [0, 1], 2)) | {"loss"} == set(TASK_METRICS["risk-classification"])
    import numpy as np

    assert names(multilabel_metrics(np.array([[1, 0]]), np.array([[1, 0]]))) <= set(TASK_METRICS["risk-classification"])
    spans = span_metrics([[Span(0, 3, "a", 0.9)]], [[Span(0, 3, "a")]])
    assert names(spans) | {"loss"} == set(TASK_METRICS["clause-extraction"])
    assert names(rouge_scores(["a b"], ["a b"])) | {"gen_len", "loss"} == set(TASK_METRICS["summarization"])


def test_every_string_a_cel_rule_reads_is_bounded() -> None:
    """The API server estimates each CEL rule's cost from maxLength; an unbounded string can make the whole
    CRD fail to install on clusters with CEL (v1.20 here has none, so this is checked in the generator)."""
    import re

    from legistra.api.crd import SPEC_RULES, training_run_crd

    spec = training_run_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    read = {m for r in SPEC_RULES for m in re.findall(r"self\.([A-Za-z]+(?:\.[A-Za-z]+)*)(?![A-Za-z(])", r["rule"])}
    read = {p.removesuffix(".lowerAscii") for p in read}
    assert "model.name" in read
    for path in read:
        node = spec
        for part in path.split("."):
            node = node["properties"][part]
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, f"spec.{path} is read by CEL but has no maxLength"


# -- values that validated and then failed (or silently misbehaved) once training started ----------------------
@pytest.mark.parametrize(("changes", "expected"), [
    ({"training__seed": 4294967296}, "spec.training.seed: must be <= 4294967295 (got 4294967296)"),
    ({"training__epochs": float("inf")}, "spec.training.epochs: Input should be a finite number"),
    ({"training__weightDecay": float("inf")}, "spec.training.weightDecay: Input should be a finite number"),
    ({"training__learningRate": float("nan")}, "spec.training.learningRate: Input should be a finite number"),
    ({"lora__alpha": 10**30}, "spec.lora.alpha: must be <= 65536 (got 1000000000000000000000000000000)"),
    ({"training__batchSize": True}, "spec.training.batchSize: must be a whole number or one of 'auto' (got True)"),
    ({"training__gradientCheckpointing": 1}, "spec.training.gradientCheckpointing: Input should be a valid boolean"),
    ({"training__maxSteps": 2**31}, "spec.training.maxSteps: must be <= 2147483647 (got 2147483648)"),
    ({"runPolicy__ttlSecondsAfterFinished": 2**31},
     "spec.runPolicy.ttlSecondsAfterFinished: must be <= 2147483647 (got 2147483648)"),
    ({"data__maxLength": "512"}, "spec.data.maxLength: Input should be a valid integer"),
    ({"resources__tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]},
     "spec.resources.tolerations[0]: value: must be empty when operator is Exists"),
    ({"resources__tolerations": [{"operator": "Equal", "value": "x"}]},
     "spec.resources.tolerations[0]: operator: must be Exists when key is empty"),
    ({"resources__tolerations": [{"key": "gpu", "operator": "Exists", "tolerationSeconds": 5}]},
     "spec.resources.tolerations[0]: tolerationSeconds: only allowed with effect NoExecute"),
    ({"resources__tolerations": [{"key": "bad key!", "operator": "Exists"}]},
     "spec.resources.tolerations[0].key: 'bad key!' is not a label key"),
    ({"deepspeed__config": {"a": float("nan")}}, "spec.deepspeed.config: nan is not a finite number"),
    ({"deepspeed__config": {"x": "y" * 70_000}}, "spec.deepspeed.config: is 70,009 bytes as JSON; at most 65,536"),
    ({"deepspeed__config": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": {
        "o": {"p": {"q": {"r": 1}}}}}}}}}}}}}}}}}}}, "spec.deepspeed.config: nested more than 16 levels deep"),
])
def test_values_that_would_fail_in_training_are_refused_up_front(changes: dict[str, Any], expected: str) -> None:
    found = problems(with_spec(**changes))
    assert len(found) == 1 and found[0].startswith(expected), found


@pytest.mark.parametrize("field", ["model__name", "data__train", "data__validation", "registry__uri",
                                   "tracking__mlflow__trackingUri", "checkpoints__uri"])
@pytest.mark.parametrize("uri", ["https://alice:s3cret@mlflow.example.com", "s3://AKIA:s3cret@bucket/prefix",
                                 "http://token@host:5000"])
def test_credentials_in_a_uri_are_refused_with_the_supported_way(field: str, uri: str) -> None:
    if field == "checkpoints__uri" and not uri.startswith("s3://"):
        uri = "s3://" + uri.partition("://")[2]
    found = problems(with_spec(**{field: uri}))
    path = "spec." + field.replace("__", ".")
    assert len(found) == 1 and found[0].startswith(f"{path}: must not carry a user or password"), found
    assert "credentialsSecret" in found[0] and "s3cret" not in found[0]


@pytest.mark.parametrize(("meta", "expected"), [
    ({"namespace": "team' OR tags.x = 'y"}, "metadata.namespace: must be a DNS-1123 label"),
    ({"namespace": "a" * 64}, "metadata.namespace: must be at most 63 characters"),
    ({"uid": "x' or '1'='1"}, "metadata.uid: must match"),
    ({"labels": {"ok": "bad value!"}}, "metadata.labels.ok: must be a label value"),
    ({"annotations": {"a": "x" * (256 << 10)}}, "metadata.annotations: annotations total 262,145"),
])
def test_metadata_is_checked_as_the_api_server_checks_it(meta: dict[str, Any], expected: str) -> None:
    doc = copy.deepcopy(GOOD)
    doc["metadata"].update(meta)
    found = problems(doc)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_refused_uri_is_quoted_without_its_password() -> None:
    found = problems(with_spec(checkpoints__uri="https://alice:s3cret@host/x"))
    assert found == ["spec.checkpoints.uri: must match ^s3://[^/]+ (got 'https://***@host/x')"]


def cel_refusals(spec: dict[str, Any]) -> set[str]:
    """The fieldPaths of the CRD's CEL rules that refuse `spec`, evaluated by a CEL interpreter (the test API
    server, v1.20, has none). lowerAscii is a Kubernetes extension of CEL, supplied here."""
    import celpy
    from celpy import celtypes

    from legistra.api.crd import SPEC_RULES

    env = celpy.Environment()
    functions = {"lowerAscii": lambda s: celtypes.StringType(str(s).lower())}
    out = set()
    for rule in SPEC_RULES:
        program = env.program(env.compile(rule["rule"]), functions=functions)
        if not program.evaluate({"self": celpy.json_to_cel(spec)}):
            out.add("spec" + rule["fieldPath"])
    return out


CROSS_FIELD_CASES: list[dict[str, Any]] = [
    {},
    {"task": "summarization", "model": {"name": "google/flan-t5-base"}},
    {"task": "summarization", "model": {"name": "google/flan-t5-base"}, "training": {"precision": "bf16"}},
    {"training": {"evaluation": "steps"}},
    {"training": {"evaluation": "steps", "evalSteps": 5}},
    {"training": {"evaluation": "no", "earlyStopping": {"patience": 2}}},
    {"deepspeed": {"zeroStage": 2, "config": {"a": 1}}},
    {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}},
    {"resources": {"tolerations": [{"operator": "Equal", "value": "x"}]}},
    {"resources": {"tolerations": [{"operator": "Exists"}]}},
    {"resources": {"tolerations": [{"key": "gpu", "tolerationSeconds": 5}]}},
    {"resources": {"tolerations": [{"key": "gpu", "effect": "NoExecute", "tolerationSeconds": 5}]}},
]


@pytest.mark.parametrize("changes", CROSS_FIELD_CASES)
def test_the_crds_cel_rules_refuse_what_the_schema_refuses(changes: dict[str, Any]) -> None:
    doc = copy.deepcopy(GOOD)
    doc["spec"].update(changes)
    try:
        parse_training_run(doc)
        refused: set[str] = set()
    except SpecError as exc:
        refused = {p.split(":")[0].split("[")[0] for p in exc.problems}
    assert cel_refusals(doc["spec"]) == refused
