"""The operator's one configuration: parsing, and the Helm chart, kustomize Deployment and docs checked against it."""

from __future__ import annotations

import json
import re
from functools import reduce
from typing import Any

import pytest
import yaml

from legistra.operator.config import JobDefaults, OperatorConfig, env_settings, settings_table
from tests.conftest import ROOT
from tests.test_shipping import objects, render


def test_from_env_parses_types_and_treats_empty_as_unset() -> None:
    config = OperatorConfig.from_env(("legal-ml",), {
        "LEGISTRA_WORKER_LIMIT": "32", "LEGISTRA_RESYNC_SECONDS": "2.5", "LEGISTRA_PEERING_PRIORITY": "7",
        "LEGISTRA_REGISTRY_URI": "", "LEGISTRA_TRAINER_EXTRA_ENV": '{"NCCL_DEBUG": "WARN"}',
        "LEGISTRA_TRAINER_IMAGE": "", "POD_ID": "op-0", "KUBECONFIG": "/k", "UNRELATED": "x"})
    assert config.worker_limit == 32 and config.resync_seconds == 2.5 and config.peering_priority == 7
    assert config.jobs.registry_uri is None  # Helm renders an unset value as ""
    assert config.jobs.trainer_image == JobDefaults().trainer_image  # "" never replaces a required default
    assert config.jobs.extra_env == {"NCCL_DEBUG": "WARN"}
    assert config.namespaces == ("legal-ml",) and config.watched == ["legal-ml"]
    assert config.pod_id == "op-0" and "op-0" in config.agent
    assert config.kube_env == {"KUBECONFIG": "/k"}
    assert OperatorConfig.from_env((), {}).watched == [None]
    assert OperatorConfig.from_env((), {}).pod_id  # a generated name when the pod has none


@pytest.mark.parametrize(("env", "value"), [("LEGISTRA_WORKER_LIMIT", "many"),
                                             ("LEGISTRA_TRAINER_EXTRA_ENV", "[1, 2]"),
                                             ("LEGISTRA_METRICS_PORT", "9090.5"),
                                             ("LEGISTRA_STALL_TIMEOUT", "30 minutes"),
                                             ("LEGISTRA_STALL_TIMEOUT", "-5m"),
                                             ("LEGISTRA_GPU_PRICES", '{"H100-80GB": "cheap"}'),
                                             ("LEGISTRA_GPU_PRICES", '{"H100-80GB": -1}'),
                                             ("LEGISTRA_GPU_PRICES", '{"H100-80GB": NaN}'),
                                             ("LEGISTRA_GPU_PRICES", '{"T4": 1, "T4": 2}')])
def test_a_malformed_setting_names_its_variable(env: str, value: str) -> None:
    with pytest.raises(ValueError, match=env):
        OperatorConfig.from_env((), {env: value})


def test_stall_timeout_and_gpu_prices_parse() -> None:
    jobs = OperatorConfig.from_env((), {"LEGISTRA_STALL_TIMEOUT": "0", "LEGISTRA_GPU_PRICES": '{"T4": 0.35, "H100-80GB": 4}'}).jobs
    assert jobs.stall_timeout == "0" and jobs.gpu_prices == {"T4": 0.35, "H100-80GB": 4.0}
    assert OperatorConfig.from_env((), {}).jobs.stall_timeout == "30m"


@pytest.mark.parametrize(("env", "value"), [("LEGISTRA_WORKER_IDLE_SECONDS", "0"), ("LEGISTRA_WORKER_LIMIT", "0"),
                                             ("LEGISTRA_RESYNC_SECONDS", "-1"), ("LEGISTRA_SCHEDULE_TICK", "0")])
def test_a_period_or_limit_that_would_spin_is_refused(env: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{env}=.*must be above 0"):
        OperatorConfig.from_env((), {env: value})
    assert OperatorConfig.from_env((), {env: "0.5" if "LIMIT" not in env else "1"})  # above 0 is fine


def deployment_env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def ours(name: str) -> bool:
    return name.startswith("LEGISTRA_") or name == "POD_ID"


# Distinct values of the shape values.schema.json accepts, one per setting.
SHAPED: dict[str, Any] = {
    "LEGISTRA_TRAINER_EXTRA_ENV": lambda i: {"K": f"v{i}"},
    "LEGISTRA_CHECKPOINT_SIZE": lambda i: f"{i}Gi",
    "LEGISTRA_REGISTRY_URI": lambda i: f"s3://bucket-{i}/registry",
    "LEGISTRA_S3_ENDPOINT": lambda i: f"http://minio-{i}:9000",
    "LEGISTRA_MLFLOW_TRACKING_URI": lambda i: f"http://mlflow-{i}:5000",
    "LEGISTRA_BACKEND": lambda i: "trainjob",
    "LEGISTRA_CHECKPOINT_URI": lambda i: f"s3://checkpoints-{i}/runs",
    "LEGISTRA_CHECKPOINT_RWX": lambda i: False,
    "LEGISTRA_GPU_PRODUCT": lambda i: f"NVIDIA-H100-80GB-HBM{i}",
    "LEGISTRA_STALL_TIMEOUT": lambda i: f"{i}m",
    "LEGISTRA_GPU_PRICES": lambda i: {"H100-80GB": i + 0.25},
    **{n: (lambda i: 4000 + i) for n in ("LEGISTRA_METRICS_PORT", "LEGISTRA_WORKER_LIMIT",
                                         "LEGISTRA_WATCH_SERVER_TIMEOUT", "LEGISTRA_RESYNC_SECONDS",
                                         "LEGISTRA_RESYNC_RATE")},
}


def test_helm_sets_each_setting_from_its_documented_value() -> None:
    known = env_settings()
    env = deployment_env(render())
    assert {n for n in env if ours(n)} <= set(known), "the chart sets an environment variable the operator ignores"
    values: dict[str, Any] = {}
    expected: dict[str, str] = {}
    for i, (name, f) in enumerate(sorted(known.items())):
        path = f.metadata["helm"]
        if path is None:
            continue
        value: Any = SHAPED.get(name, (lambda i: f"value-{i}"))(i)
        *parents, leaf = path.split(".")
        reduce(lambda d, k: d.setdefault(k, {}), parents, values)[leaf] = value
        expected[name] = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, bool)) else str(value)
    got = deployment_env(render(values))
    for name, want in expected.items():
        assert got[name]["value"] == want, f"{name} is not set from .Values.{known[name].metadata['helm']}"


def test_kustomize_deployment_sets_only_known_settings() -> None:
    env = deployment_env(objects((ROOT / "manifests/base/deployment.yaml").read_text()))
    assert {n for n in env if ours(n)} <= set(env_settings())
    config = OperatorConfig.from_env(("x",), {k: v["value"] for k, v in env.items() if "value" in v})
    assert config.peering == "legistra-operator" and config.jobs.s3_secret == "legistra-s3"


def test_docs_settings_table_is_generated_from_the_config() -> None:
    text = (ROOT / "docs" / "operator.md").read_text()
    block = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", text, flags=re.S)
    assert block, "docs/operator.md lost its settings table markers"
    assert block.group(1) == settings_table(), "regenerate with `python -m legistra.operator.config`"


def test_only_the_config_module_reads_the_environment() -> None:
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "legistra" / "operator").glob("*.py"))
                 if p.name != "config.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if "os.environ" in line or "getenv" in line]
    assert offenders == []


def test_values_yaml_documents_every_helm_setting() -> None:
    values = yaml.safe_load((ROOT / "helm/legistra-operator/values.yaml").read_text())
    for name, f in env_settings().items():
        if f.metadata["helm"]:
            node: Any = values
            for key in f.metadata["helm"].split("."):
                assert isinstance(node, dict) and key in node, f"{name}: values.yaml has no {f.metadata['helm']}"
                node = node[key]


@pytest.mark.parametrize(("value", "bad"), [("workerLimit", 0), ("resyncSeconds", 0), ("resyncRate", 0),
                                            ("resyncRate", -5)])
def test_the_charts_schema_refuses_what_the_operator_would(value: str, bad: int) -> None:
    """Caught at `helm install`, before a pod starts only to exit with the config's own error."""
    import helm_python as helm

    with pytest.raises(helm.errors.HelmValuesError, match=f"/operator/{value}"):
        render({"operator": {value: bad}})
    assert render({"operator": {value: 1}})  # above 0 renders


def test_helm_gives_the_operator_its_mlflow_credentials_from_the_secret_only() -> None:
    env = deployment_env(render({"mlflow": {"trackingUri": "http://mlflow:5000", "credentialsSecret": "mlflow-op"}}))
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password"),
                      ("MLFLOW_TRACKING_TOKEN", "token")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "mlflow-op", "key": key,
                                                                          "optional": True}}}
    assert "MLFLOW_TRACKING_PASSWORD" not in deployment_env(render())


def test_helm_refuses_a_tracking_uri_with_a_password() -> None:
    import helm_python as helm

    with pytest.raises(helm.errors.HelmValuesError, match="/mlflow/trackingUri"):
        render({"mlflow": {"trackingUri": "http://alice:s3cret@mlflow:5000"}})
