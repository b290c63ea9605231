"""The trainer <-> operator contract (legistra/contract.py): both sides agree on names, rules and documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from legistra import contract
from legistra.api.crd import training_run_crd
from legistra.api.spec import TrainingRun
from legistra.api.validation import load_training_run, parse_training_run
from legistra.operator.build import build_configmap
from legistra.operator.report import report_from_run
from tests.conftest import EXAMPLES


def load_example(task: str) -> TrainingRun:
    return load_training_run(str(EXAMPLES / f"{task}.yaml"))


def test_what_the_trainer_tags_is_what_the_operator_reads() -> None:
    tags = {contract.TAG_PROGRESS: json.dumps({"step": 3, "totalSteps": 6, "epoch": 0.5}),
            contract.TAG_MODEL: "clause-risk", contract.TAG_MODEL_VERSION: "4",
            contract.TAG_MODEL_URI: "s3://models/clause-risk/v4", contract.TAG_MODEL_ALIAS: "champion",
            contract.TAG_TRAINER_STARTED: "2026-12-06T10:00:00.000001Z"}
    run = {"info": {"run_id": "r1", "experiment_id": "7"},
           "data": {"tags": [{"key": k, "value": v} for k, v in tags.items()],
                    "metrics": [{"key": f"{contract.FINAL_PREFIX}eval_f1", "value": 0.8},
                                {"key": "eval_f1", "value": 0.5}]}}
    report = report_from_run(run, "http://mlflow:5000")
    assert report["progress"] == {"step": 3, "totalSteps": 6, "epoch": 0.5}
    assert report["model"] == {"name": "clause-risk", "version": 4, "uri": "s3://models/clause-risk/v4",
                               "alias": "champion"}
    assert report["metrics"] == {"eval_f1": 0.8}  # the final metrics win over the running ones
    assert report["trainerStarted"] == "2026-12-06T10:00:00.000001Z"  # a new value: the trainer restarted


def test_phases_are_the_crd_status_enum() -> None:
    schema = training_run_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert tuple(schema["properties"]["status"]["properties"]["phase"]["enum"]) == contract.PHASES


def test_every_task_handler_uses_the_contract_default_metric() -> None:
    from legistra.trainer.tasks import handler_for

    for task in ("risk-classification", "clause-extraction", "summarization"):
        spec = load_example(task).spec
        assert handler_for(spec).default_metric == contract.DEFAULT_METRIC[task]


def test_primary_metric_order() -> None:
    run = load_example("risk-classification")
    spec = run.spec.model_copy(deep=True)
    spec.registry.promotion = None
    spec.training.metric_for_best_model = None
    assert contract.primary_metric(spec) == "f1_macro"
    spec.training.metric_for_best_model = "accuracy"
    assert contract.primary_metric(spec) == "accuracy"


def test_uri_resolution_spec_then_configured_then_local(tmp_path: Path) -> None:
    spec = load_example("risk-classification").spec.model_copy(deep=True)
    spec.tracking.mlflow.tracking_uri = None
    spec.registry.uri = None
    assert contract.tracking_uri(spec, None) is None  # the operator without a server: no tracking
    assert contract.tracking_uri(spec, "http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    assert contract.tracking_uri(spec, None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert contract.registry_uri(spec, None, tmp_path) == str(tmp_path.resolve() / "registry")
    spec.tracking.mlflow.tracking_uri = "http://team-mlflow:5000"
    spec.registry.uri = "s3://team/registry"
    assert contract.tracking_uri(spec, "http://mlflow:5000", tmp_path) == "http://team-mlflow:5000"
    assert contract.registry_uri(spec, "s3://platform/registry") == "s3://team/registry"
    assert contract.configured_uris({"MLFLOW_TRACKING_URI": "", "LEGISTRA_REGISTRY_URI": "s3://b/r"}) == \
        (None, "s3://b/r")


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_run_json_is_one_document_for_the_operator_and_the_cli(example: str) -> None:
    import yaml

    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / example).read_text())
    doc["metadata"].update({"namespace": "legal-ml", "uid": "u-1"})
    run = parse_training_run(doc)
    in_configmap = json.loads(build_configmap(run)["data"]["run.json"])
    assert in_configmap == contract.run_document(run)
    assert parse_training_run(in_configmap).spec == run.spec  # the trainer reads back what was meant


@pytest.mark.parametrize(("text", "expected"), [
    ("InvalidData: /data/train.jsonl, row 7, field 'label': missing label",
     ("InvalidData", "/data/train.jsonl, row 7, field 'label': missing label")),
    ("InvalidModel: spec.model.name: cannot load 'x'", ("InvalidModel", "spec.model.name: cannot load 'x'")),
    ("TrainerError: spec.training.precision: fp16 is not allowed", ("TrainerError",
                                                                    "spec.training.precision: fp16 is not allowed")),
    ("Traceback (most recent call last):\n  File ...", None),   # FallbackToLogsOnError: the log's tail
    ("InvalidData:", None),
    ("OOMKilled: out of memory", None),                          # not a reason the trainer writes
    ("", None),
    (None, None),
])
def test_termination_messages(text: str | None, expected: tuple[str, str] | None) -> None:
    assert contract.parse_termination_message(text) == expected


def test_termination_message_round_trip_is_one_line_and_bounded() -> None:
    text = contract.termination_message("InvalidData", "row 3\n  field 'text': empty" + "x" * 10_000)
    assert "\n" not in text and len(text) == contract.TERMINATION_MESSAGE_LIMIT
    assert contract.parse_termination_message(text) == ("InvalidData", text.removeprefix("InvalidData: "))
