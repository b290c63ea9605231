"""Checks a TrainingRun status document against the generated CRD's status schema, as the API server would:
types, enums and bounds (jsonschema), and no field that the server would prune silently."""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema

from legistra.api.crd import training_run_crd


@cache
def status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = training_run_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["status"])


def pruned(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Paths the API server would drop: keys that a structural schema without preserve-unknown does not list."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out: list[str] = []
        for key, item in value.items():
            if props is not None and key in props:
                out += pruned(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += pruned(item, extra, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
        return out
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in pruned(item, schema.get("items", {}), f"{path}[{i}]")]
    return []


def stored(value: Any) -> Any:
    """What a merge patch leaves on the object: nulls delete, so they are never stored."""
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [stored(v) for v in value]
    return value


def valid_status(status: dict[str, Any]) -> dict[str, Any]:
    """`status`, after asserting the API server would store it as it is."""
    doc = stored(status)
    schema = status_schema()
    jsonschema.Draft4Validator(schema).validate(doc)
    assert pruned(doc, schema) == [], f"the API server would prune {pruned(doc, schema)}"
    return status


def desired_status(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`legistra.operator.status.desired_status`, every result checked against the status schema."""
    from legistra.operator import status

    return valid_status(status.desired_status(*args, **kwargs))


def invalid_status(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`legistra.operator.status.invalid_status`, every result checked against the status schema."""
    from legistra.operator import status

    return valid_status(status.invalid_status(*args, **kwargs))
