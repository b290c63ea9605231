"""The operator's configuration: every setting, its environment variable, default, Helm value and meaning.

Loaded once in `legistra operator` (`OperatorConfig.from_env`), kept in kopf's memo and passed explicitly to
what needs it; nothing else in the operator reads the environment. The Helm chart's Deployment, the kustomize
Deployment and the settings table in docs/operator.md are checked against this module by
tests/test_operator_config.py (the table is printed by `python -m legistra.operator.config`).

Named `OperatorConfig` so that it never meets kopf's own `kopf.OperatorSettings`, which it fills in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import socket
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from legistra.api.formats import DESCRIBED, DURATION, credentials_in, redact
from legistra.api.loader import no_duplicate_keys
from legistra.contract import MLFLOW_CREDENTIALS
from legistra.operator.credentials import CREDENTIAL_ENV


def setting(env: str, default: Any, doc: str, helm: str | None = None, positive: bool = False) -> Any:
    """A field read from `env`; `helm` names the chart value that sets it (None: not exposed in values.yaml);
    `positive`: 0 and below are refused (a period or limit that would spin, not stop)."""
    return field(default=default, metadata={"env": env, "doc": doc, "helm": helm, "positive": positive})


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type under an Optional, whether None is allowed)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, types.UnionType) and len(args) == 1:
        return args[0], True
    return hint, False


def _parse(kind: Any, raw: str, env: str) -> Any:
    try:
        if get_origin(kind) is dict:
            return _price_object(raw) if get_args(kind)[1] is float else _env_object(raw)
        if kind in (int, float):
            return kind(raw)
        if kind is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return raw.lower() == "true"
    except ValueError as exc:
        shown = env if get_origin(kind) is dict else f"{env}={raw!r}"  # an object may hold values not to echo
        raise ValueError(f"{shown}: {exc}") from None
    return raw


# A container env var name as the API server accepts it (v1.20's IsEnvVarName).
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def _json_object(raw: str) -> dict[str, Any]:
    """A JSON object from a setting (empty: {}), refusing duplicate keys."""
    try:
        value = json.loads(raw or "{}", object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _price_object(raw: str) -> dict[str, float]:
    """A JSON object of GPU products to prices per GPU-hour: finite, not negative."""
    return price_table(_json_object(raw))


def price_table(prices: dict[str, Any]) -> dict[str, float]:
    """GPU products to prices per GPU-hour (LEGISTRA_GPU_PRICES, `legistra plan --price`): finite, from 0 up."""
    out = {}
    for key, price in prices.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price < 1e6:
            raise ValueError(f"{key!r}: a price per GPU-hour is a number from 0 up")
        out[str(key)] = float(price)
    return out


def _env_object(raw: str) -> dict[str, str]:
    """A JSON object of env var names to string values: no duplicate, no null, no name the API server refuses
    (each of those would be accepted here and then fail every pod, or silently keep the last duplicate)."""
    value = _json_object(raw)
    for key, item in value.items():
        if not ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not an environment variable name (letters, digits, '-', '.', '_', not "
                             "starting with a digit)")
        if not isinstance(item, str):
            raise ValueError(f"{key}: the value must be a string (got {json.dumps(item)})")
    return value


def _from_env(cls: Any, env: Mapping[str, str]) -> Any:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f.metadata.get("env")
        if name is None or name not in env:
            continue
        kind, optional = _base_type(hints[f.name])
        raw = env[name]
        if raw == "" and optional:
            values[f.name] = None  # Helm renders unset values as ""
        elif raw != "" or get_origin(kind) is dict:
            values[f.name] = _parse(kind, raw, name)
    return cls(**values)


@dataclass(frozen=True)
class JobDefaults:
    """Cluster-wide defaults for the jobs the operator builds (a run's spec wins where it sets the same thing)."""

    trainer_image: str = setting("LEGISTRA_TRAINER_IMAGE", "ghcr.io/legistra/legistra-trainer:0.1.0",
                                 "image of the training pods when a run sets no spec.resources.image",
                                 "trainer.image")
    mlflow_tracking_uri: str | None = setting("LEGISTRA_MLFLOW_TRACKING_URI", None,
                                              "MLflow server for runs that set none; also where progress is read",
                                              "mlflow.trackingUri")
    registry_uri: str | None = setting("LEGISTRA_REGISTRY_URI", None,
                                       "model registry root (s3://bucket/prefix) for runs that set none",
                                       "registry.uri")
    s3_endpoint: str | None = setting("LEGISTRA_S3_ENDPOINT", None,
                                      "S3-compatible endpoint handed to training pods (empty: AWS)", "s3.endpoint")
    mlflow_credentials_secret: str | None = setting(
        "LEGISTRA_MLFLOW_CREDENTIALS_SECRET", None,
        "Secret with the MLflow server's username and password (or token) for runs that name none in "
        "spec.tracking.mlflow.credentialsSecret; it must exist in each run's namespace, as s3.secretName must",
        "mlflow.credentialsSecret")
    s3_secret: str | None = setting("LEGISTRA_S3_SECRET", None,
                                    "Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for training pods",
                                    "s3.secretName")
    checkpoint_storage_class: str | None = setting("LEGISTRA_CHECKPOINT_STORAGE_CLASS", None,
                                                   "storage class of checkpoint volumes (RWX for multi-node runs)",
                                                   "checkpoints.storageClassName")
    checkpoint_size: str = setting("LEGISTRA_CHECKPOINT_SIZE", "50Gi", "size of each checkpoint volume",
                                   "checkpoints.size")
    checkpoint_uri: str | None = setting("LEGISTRA_CHECKPOINT_URI", None,
                                         "object storage (s3://bucket/prefix) for the checkpoints of runs that set "
                                         "none; then no volume is claimed", "checkpoints.uri")
    checkpoint_rwx: bool = setting("LEGISTRA_CHECKPOINT_RWX", True,
                                   "whether the cluster provides ReadWriteMany volumes; false: multi-node runs "
                                   "without checkpoints.uri get a warning", "checkpoints.readWriteMany")
    gpu_product: str | None = setting("LEGISTRA_GPU_PRODUCT", None,
                                      "GPU type of the training nodes (e.g. NVIDIA-H100-80GB-HBM3) for runs without "
                                      "an nvidia.com/gpu.product node selector; runs that cannot fit it are refused",
                                      "trainer.gpuProduct")
    backend: Literal["auto", "pytorchjob", "trainjob"] = setting("LEGISTRA_BACKEND", "auto",
                           "job kind for runs that choose none: auto (TrainJob when the cluster serves it and its "
                           "ClusterTrainingRuntime exists, else what it serves), pytorchjob or trainjob",
                           "operator.backend")
    stall_timeout: str = setting("LEGISTRA_STALL_TIMEOUT", "30m",
                                 "spec.training.stallTimeout of runs that set none: a running attempt whose progress "
                                 "has not moved this long is replaced (90s, 30m, 2h; 0: never)",
                                 "operator.stallTimeout")
    gpu_prices: dict[str, float] = field(default_factory=dict, metadata={
        "env": "LEGISTRA_GPU_PRICES", "doc": "price per GPU-hour by GPU product (e.g. {\"H100-80GB\": 4.1}), as a JSON "
        "object: runs on a priced GPU get status.usage.estimatedCost", "helm": "operator.gpuPrices"})
    training_runtime: str = setting("LEGISTRA_TRAINING_RUNTIME", "torch-distributed",
                                    "ClusterTrainingRuntime of TrainJobs when a run names none", "trainer.runtime")
    service_account: str | None = setting("LEGISTRA_TRAINER_SERVICE_ACCOUNT", None,
                                          "ServiceAccount of training pods when a run sets none",
                                          "trainer.serviceAccountName")
    extra_env: dict[str, str] = field(default_factory=dict, metadata={
        "env": "LEGISTRA_TRAINER_EXTRA_ENV", "doc": "plain env for every training pod, as a JSON object",
        "helm": "trainer.extraEnv"})

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "pytorchjob", "trainjob"):
            raise ValueError(f"LEGISTRA_BACKEND={self.backend!r}: must be auto, pytorchjob or trainjob")
        if not re.match(DURATION, self.stall_timeout):
            raise ValueError(f"LEGISTRA_STALL_TIMEOUT={self.stall_timeout!r}: must be {DESCRIBED[DURATION]}")
        # These URIs are copied into every job's env and the runs' status: a password in one would travel too.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_uri", "_endpoint")) and isinstance(value, str) and credentials_in(value):
                raise ValueError(f"{f.metadata['env']}={redact(value)!r}: must not carry a user or password; give "
                                 "them through a Secret (mlflow.credentialsSecret, s3.secretName)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobDefaults:
        defaults: JobDefaults = _from_env(cls, os.environ if env is None else env)
        return defaults


@dataclass(frozen=True)
class OperatorConfig:
    """Everything `legistra operator` is told, from its command line and its environment."""

    jobs: JobDefaults = field(default_factory=JobDefaults)
    # From the command line: the namespaces watched (empty: the whole cluster).
    namespaces: tuple[str, ...] = ()
    kubeconfig: str | None = setting("LEGISTRA_KUBECONFIG", None,
                                     "kubeconfig to use instead of the in-cluster service account (development)")
    pod_id: str = setting("POD_ID", "", "this replica's name in peering records and the User-Agent "
                          "(the pod name; a host-pid name when unset)")
    peering: str | None = setting("LEGISTRA_PEERING", None,
                                  "kopf peering name: replicas sharing it run as hot standby (unset: standalone)")
    peering_priority: int | None = setting("LEGISTRA_PEERING_PRIORITY", None,
                                           "fixed peering priority (default: from the start time, oldest leads)")
    peering_lifetime: int = setting("LEGISTRA_PEERING_LIFETIME", 60,
                                    "seconds a silent replica keeps its leadership before a standby takes over")
    worker_limit: int = setting("LEGISTRA_WORKER_LIMIT", 256, "kopf workers (objects reconciled at once)",
                                "operator.workerLimit", positive=True)
    # A lingering worker keeps its slot: at 1 s, a burst's runs (each lingering after its event, then after its
    # status write's echo) held the slots, not the CPU (docs/operator.md, "Measurements behind the design").
    worker_idle_seconds: float = setting("LEGISTRA_WORKER_IDLE_SECONDS", 0.2,
                                         "seconds a kopf worker lingers after its object's last event",
                                         positive=True)
    watch_server_timeout: int = setting("LEGISTRA_WATCH_SERVER_TIMEOUT", 300,
                                        "seconds before the API server ends a watch (it is then re-opened)",
                                        "operator.watchServerTimeout")
    resync_seconds: float = setting("LEGISTRA_RESYNC_SECONDS", 30.0,
                                    "period of the resync loop over unfinished runs (progress from MLflow)",
                                    "operator.resyncSeconds", positive=True)
    # Each run a pass reconciles costs a GET of its job, a pod LIST while it runs without progress and an MLflow
    # read: unpaced, 10,000 unfinished runs asked the API server for up to 20,000 requests in a burst every period.
    resync_rate: float = setting("LEGISTRA_RESYNC_RATE", 50.0,
                                 "runs per second the resync pass reconciles at most, evenly spaced (a pass over "
                                 "more than rate x period runs takes longer than the period)", "operator.resyncRate",
                                 positive=True)
    schedule_tick_seconds: float = setting("LEGISTRA_SCHEDULE_TICK", 20.0, "period of the TrainingSchedule loop",
                                           positive=True)
    metrics_port: int = setting("LEGISTRA_METRICS_PORT", 9090, "Prometheus /metrics port (0: off)",
                                "metrics.port")
    metrics_addr: str = setting("LEGISTRA_METRICS_ADDR", "0.0.0.0", "address the /metrics server binds")
    # What Kubernetes and kubectl conventions put in the environment for the credential loader.
    kube_env: dict[str, str] = field(default_factory=dict)
    # The operator's own MLflow credentials (MLflow's variable names; Helm's mlflow.credentialsSecret sets them):
    # used only for the operator's configured tracking server, never shown.
    mlflow_auth: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Zero would spin, not stop: kopf waits for a worker's next event with asyncio.wait_for, which at a timeout
        # of 0 cancels the wait before the queued event is taken (a 3,000-run burst burned 195 s of CPU), and the
        # loops would sleep(0) in a circle.
        for f in dataclasses.fields(self):
            if f.metadata.get("positive") and not getattr(self, f.name) > 0:
                raise ValueError(f"{f.metadata['env']}={getattr(self, f.name)!r}: must be above 0")

    @classmethod
    def from_env(cls, namespaces: tuple[str, ...] = (), env: Mapping[str, str] | None = None) -> OperatorConfig:
        source = os.environ if env is None else env
        loaded: OperatorConfig = _from_env(cls, source)
        pod_id = loaded.pod_id or f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**4):04x}"
        return dataclasses.replace(loaded, jobs=JobDefaults.from_env(source), namespaces=tuple(namespaces),
                                   pod_id=pod_id, kube_env={k: source[k] for k in CREDENTIAL_ENV if k in source},
                                   mlflow_auth={k: source[k] for k in MLFLOW_CREDENTIALS if source.get(k)})

    @property
    def watched(self) -> list[str | None]:
        """Namespaces for the operator's own loops; [None] is the whole cluster."""
        return list(self.namespaces) or [None]

    @property
    def agent(self) -> str:
        from legistra import __version__

        return f"legistra-operator/{__version__} ({self.pod_id or 'standalone'})"


def settings_table() -> str:
    """The Markdown table of every environment setting (docs/operator.md embeds it; a test keeps it current)."""
    rows = ["| environment | default | Helm value | what |", "| --- | --- | --- | --- |"]
    for cls in (OperatorConfig, JobDefaults):
        for f in dataclasses.fields(cls):
            if "env" not in f.metadata:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = "" if default in (None, "", {}) else json.dumps(default) if isinstance(default, dict) else default
            helm = f"`{f.metadata['helm']}`" if f.metadata["helm"] else ""
            above = "; above 0" if f.metadata.get("positive") else ""
            rows.append(f"| `{f.metadata['env']}` | {f'`{shown}`' if shown != '' else ''} | {helm} "
                        f"| {f.metadata['doc']}{above} |")
    return "\n".join(rows)


def env_settings() -> dict[str, dataclasses.Field[Any]]:
    """Environment variable -> its field, over both classes."""
    return {f.metadata["env"]: f for cls in (OperatorConfig, JobDefaults) for f in dataclasses.fields(cls)
            if "env" in f.metadata}


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
