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
    assert problems(doc) == ["metadata.name: must match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ (got 'Has_Capitals')"]


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
