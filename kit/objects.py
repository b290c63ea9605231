"""TrainingRun documents and specs as tests and benchmarks write them: one place, so a field that becomes required
changes one function."""

from __future__ import annotations

import copy
from typing import Any

from legistra.api.spec import TrainingRunSpec

BASE_SPEC: dict[str, Any] = {
    "task": "risk-classification",
    "model": {"name": "nlpaueb/legal-bert-base-uncased"},
    "data": {"train": "s3://data/risk/train.jsonl"},
    "registry": {"modelName": "contract-risk"},
}


def run_doc(name: str = "contract-risk", namespace: str | None = "legal-ml", *, uid: str | None = None,
            generation: int | None = None, **spec: Any) -> dict[str, Any]:
    """A TrainingRun manifest; each keyword replaces a top-level spec section. `uid` and `generation` only for
    documents that never reach an API server (it sets both)."""
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if uid is not None:
        meta["uid"] = uid
    if generation is not None:
        meta["generation"] = generation
    return {"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun", "metadata": meta,
            "spec": {**copy.deepcopy(BASE_SPEC), **spec}}


def run_spec(task: str = "risk-classification", model: str = "bert-base-uncased", **sections: Any) -> TrainingRunSpec:
    """A parsed spec; each of `sections` is merged into its top-level spec section (camelCase keys, as in a
    manifest): `run_spec(data={"maxLength": 64})` keeps the base's training file."""
    doc: dict[str, Any] = {**copy.deepcopy(BASE_SPEC), "task": task, "model": {"name": model}}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainingRunSpec.model_validate(doc)
