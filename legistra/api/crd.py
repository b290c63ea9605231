"""CustomResourceDefinitions generated from the pydantic schema (never edited by hand).

`python -m legistra.api.crd` rewrites manifests/crds/ and the Helm chart's crds/; a test fails when the
committed files differ from what this module generates.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from legistra.api.schedule import TrainingScheduleSpec, TrainingScheduleStatus
from legistra.api.spec import API_GROUP, API_VERSION, T5_NAME, TrainingRunSpec
from legistra.api.status import TrainingRunStatus

# CEL mirrors of TrainingRunSpec._cross_field, so the API server refuses what `legistra validate` refuses.
T5_RULE = (
    f"!(self.model.name.lowerAscii().matches('{T5_NAME.pattern}')"
    " && (has(self.training) && has(self.training.precision) ? self.training.precision : 'fp16') == 'fp16')"
)
SPEC_RULES = [
    {"rule": T5_RULE, "fieldPath": ".training.precision",
     "message": "fp16 is not allowed for T5-family models (they overflow to NaN); use bf16 or fp32"},
    {"rule": "!has(self.training) || !has(self.training.evaluation) || self.training.evaluation != 'steps'"
             " || has(self.training.evalSteps)",
     "fieldPath": ".training.evalSteps", "message": "required when evaluation is 'steps'"},
    {"rule": "!has(self.training) || !has(self.training.earlyStopping) || !has(self.training.evaluation)"
             " || self.training.evaluation != 'no'",
     "fieldPath": ".training.earlyStopping", "message": "needs evaluation ('epoch' or 'steps')"},
    {"rule": "!has(self.deepspeed) || !(has(self.deepspeed.zeroStage) && has(self.deepspeed.config))",
     "fieldPath": ".deepspeed", "message": "give zeroStage or config, not both"},
    # A toleration's own rules (the API server checks them only when the pod is created, i.e. too late).
    *({"rule": "!has(self.resources) || !has(self.resources.tolerations) || self.resources.tolerations.all(t, "
               f"{condition})", "fieldPath": ".resources.tolerations", "message": message}
      for condition, message in (
          ("!(has(t.operator) && t.operator == 'Exists' && has(t.value) && t.value != '')",
           "value must be empty when operator is Exists"),
          ("(has(t.key) && t.key != '') || (has(t.operator) && t.operator == 'Exists')",
           "operator must be Exists when key is empty"),
          ("!has(t.tolerationSeconds) || (has(t.effect) && t.effect == 'NoExecute')",
           "tolerationSeconds is only allowed with effect NoExecute"))),
]

KEEP = ("type", "description", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength", "format",
        "minItems", "maxItems")


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic (JSON Schema 2020-12) schema -> a Kubernetes structural OpenAPI v3 schema."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        if len(options) == 1:
            default = {"default": schema["default"]} if schema.get("default") is not None else {}
            return structural({**options[0], **rest, **default}, defs)
        if sorted(o.get("type", "string") for o in options) == ["integer", "string"]:
            # A number or a keyword (batchSize: 8 | auto), the one union a structural schema allows. Its
            # alternatives may not carry types, so the bounds and the keywords go side by side: minimum and
            # maximum constrain numbers only, a pattern strings only.
            number = next(o for o in options if o.get("type") == "integer")
            keyword = next(o for o in options if o.get("type") != "integer")
            words = keyword.get("enum") or ([keyword["const"]] if "const" in keyword else [])
            either = {k: v for k, v in rest.items() if k in KEEP}
            either.update({k: number[k] for k in ("minimum", "maximum") if k in number})
            if words:
                either["pattern"] = "^(" + "|".join(re.escape(w) for w in words) + ")$"
            if schema.get("default") is not None:
                either["default"] = schema["default"]
            return {"x-kubernetes-int-or-string": True, **either}
        return {"x-kubernetes-preserve-unknown-fields": True, **{k: v for k, v in rest.items() if k in KEEP}}
    out: dict[str, Any] = {k: v for k, v in schema.items() if k in KEEP}
    if "const" in schema:
        out["enum"] = [schema["const"]]
        out.setdefault("type", "string")
    if "exclusiveMinimum" in schema:  # OpenAPI v3.0 spells exclusive bounds as booleans
        out["minimum"], out["exclusiveMinimum"] = schema["exclusiveMinimum"], True
    if "exclusiveMaximum" in schema:
        out["maximum"], out["exclusiveMaximum"] = schema["exclusiveMaximum"], True
    if "default" in schema and not isinstance(schema["default"], (dict, list)) and schema["default"] is not None:
        out["default"] = schema["default"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        out["type"] = "object"
        if "properties" in schema:
            out["properties"] = {k: structural(v, defs) for k, v in schema["properties"].items()}
            if schema.get("required"):
                out["required"] = list(schema["required"])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        elif "properties" not in schema:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = structural(schema.get("items", {}), defs)
    elif not kind and "enum" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def crd(
    kind: str, plural: str, spec_model: type[BaseModel], status_model: type[BaseModel], *, short_names: list[str],
    printer_columns: list[dict[str, Any]], spec_rules: list[dict[str, str]] | None = None,
    description: str,
) -> dict[str, Any]:
    spec_schema = openapi_of(spec_model)
    if spec_rules:
        spec_schema["x-kubernetes-validations"] = copy.deepcopy(spec_rules)
    status_schema = openapi_of(status_model)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "legistra-train"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["legistra", "ml"],
            },
            "versions": [{
                "name": API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": printer_columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": description,
                    "required": ["spec"],
                    "x-kubernetes-validations": [{
                        "rule": "self.metadata.name.size() <= 52",
                        "message": "metadata.name must be at most 52 characters (pod names get suffixes)",
                    }],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
            }],
        },
    }


def training_run_crd() -> dict[str, Any]:
    return crd(
        "TrainingRun", "trainingruns", TrainingRunSpec, TrainingRunStatus,
        short_names=["tr", "trun"],
        description="A fine-tuning run of a legal-NLP model (LoRA + DeepSpeed) that becomes a Kubeflow PyTorchJob.",
        spec_rules=SPEC_RULES,
        printer_columns=[
            {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent",
             "description": "percent of optimizer steps done"},
            {"name": "Metric", "type": "string", "jsonPath": ".status.keyMetric"},
            {"name": "Version", "type": "integer", "jsonPath": ".status.model.version", "priority": 1},
            {"name": "Backend", "type": "string", "jsonPath": ".status.backend", "priority": 1,
             "description": "pytorchjob or trainjob"},
            {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
            {"name": "GPU-Seconds", "type": "number", "jsonPath": ".status.usage.gpuSeconds", "priority": 1,
             "description": "GPU-seconds of finished Running stretches (legistra get -o wide adds the running one)"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def training_schedule_crd() -> dict[str, Any]:
    return crd(
        "TrainingSchedule", "trainingschedules", TrainingScheduleSpec, TrainingScheduleStatus,
        short_names=["tsched"],
        description="Creates TrainingRuns from a template on a cron schedule, optionally only when data changed.",
        printer_columns=[
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
            {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
            {"name": "Last", "type": "date", "jsonPath": ".status.lastScheduleTime"},
            {"name": "Run", "type": "string", "jsonPath": ".status.lastRunName"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for manifests/crds/ and the Helm chart."""
    return {
        "legistra.io_trainingruns.yaml": training_run_crd(),
        "legistra.io_trainingschedules.yaml": training_schedule_crd(),
    }


HEADER = "# Generated by `python -m legistra.api.crd` from legistra/api/*.py. Do not edit.\n"


def render(obj: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(obj, sort_keys=False, width=120)


CRD_DIRS = (Path("manifests/crds"), Path("helm/legistra-operator/crds"))


def write_all(root: Path) -> list[Path]:
    written = []
    for folder in CRD_DIRS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, obj in all_crds().items():
            path = root / folder / name
            path.write_text(render(obj), encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()):
        print(p)
