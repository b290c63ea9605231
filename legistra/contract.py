"""The trainer <-> operator contract: what one writes and the other reads, in one place.

The trainer runs in pods the operator built and reports back only through MLflow (no RBAC for pods); the
operator reads that report over MLflow's REST API (`operator/report.py`). Both sides, the CLI and the notebook
API import every name, rule and document shape they share from here, the way MLflow keeps its tag names in
`mlflow_tags.py`. Nothing here imports torch, MLflow or kopf.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, TypedDict, get_args
from urllib.parse import unquote, urlsplit

from legistra.api.formats import credentials_in
from legistra.api.spec import Task, TrainingRun, TrainingRunSpec
from legistra.api.status import Phase
from legistra.api.tasks import DEFAULT_METRIC

# -- MLflow run tags (rank 0 writes them; the operator and `legistra` read them) ---------------------------
TAG_RUN_KEY = "legistra.run_key"  # the TrainingRun uid on a cluster (name + spec hash locally): finds the run again
TAG_PROGRESS = "legistra.progress"  # JSON {step, totalSteps, epoch}, kept current while training
TAG_TASK = "legistra.task"
TAG_BASE_MODEL = "legistra.base_model"
TAG_TRAINING_RUN = "legistra.training_run"  # namespace/name
TAG_CODE_VERSION = "legistra.code_version"
TAG_SOURCE = "legistra.source"  # set by the notebook API
TAG_MODEL = "legistra.model"  # the registered model: name, version, uri, alias (when promoted)
TAG_MODEL_VERSION = "legistra.model_version"
TAG_MODEL_URI = "legistra.model_uri"
TAG_MODEL_ALIAS = "legistra.model_alias"
TAG_PROMOTION = "legistra.promotion"  # promoted | rejected
TAG_FAILURE = "legistra.failure"  # "<Reason>: <message>" of a run that ended in a deterministic failure
# When rank 0's process started (RFC 3339), set at each start: a new value tells the operator that the trainer
# restarted (the kubelet restarts a crashed container in place under OnFailure, and no job condition says so).
TAG_TRAINER_STARTED = "legistra.trainer_started"
# Tag on MLflow model versions: which registry version an MLflow model version mirrors.
TAG_REGISTRY_VERSION = "legistra.version"

RUN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")  # what a uid or <namespace>-<name>-<hash> holds


def run_key_filter(run_key: str) -> str:
    """The MLflow search filter that finds a run by its key. The key comes from the run's uid or its name and
    namespace, which a hostile manifest controls: only the characters those can hold are allowed, so no value
    can close the quoted string and add a clause of its own (rather than trusting an escaping rule)."""
    if not RUN_KEY.fullmatch(run_key):
        raise ValueError(f"run key {run_key!r}: only letters, digits, '-', '.' and '_' may be used in an MLflow "
                         "filter")
    return f"tags.`{TAG_RUN_KEY}` = '{run_key}'"


# Final evaluation metrics are logged again under this prefix once training ends; `status.metrics` is read
# from them (from the latest eval_* metrics while there are none yet).
FINAL_PREFIX = "final/"

# -- Phases of a TrainingRun (the schema's Literal is the one definition) -----------------------------------
PHASES: tuple[str, ...] = get_args(Phase)

# -- Defaults both sides must agree on ------------------------------------------------------------------------
# The default metric per task is defined with the task's metrics (`legistra/api/tasks.py`).
assert set(DEFAULT_METRIC) == set(get_args(Task)), "every task needs a default metric"

# runPolicy fields that may change after the job started: they steer the operator, not the job, so they are
# left out of the spec hash and never refused as drift.
MUTABLE_RUN_POLICY: tuple[str, ...] = ("suspend", "maxAttempts", "retryDelaySeconds")


def experiment_name(spec: TrainingRunSpec) -> str:
    """The MLflow experiment of a run: the spec's, else the registered model's name."""
    return spec.tracking.mlflow.experiment or spec.registry.model_name


def primary_metric(spec: TrainingRunSpec) -> str:
    """The metric a run is judged by: the promotion gate's, else metricForBestModel, else the task's default."""
    if spec.registry.promotion is not None:
        return spec.registry.promotion.metric
    return spec.training.metric_for_best_model or DEFAULT_METRIC[spec.task]


def run_document(run: TrainingRun) -> dict[str, Any]:
    """run.json, the trainer's only input: the TrainingRun with every default filled in (no status, no secrets).

    The operator puts it in the job's ConfigMap; `legistra train` writes it beside the local run.
    """
    meta = {k: v for k, v in (("name", run.metadata.name), ("namespace", run.metadata.namespace),
                              ("uid", run.metadata.uid)) if v}
    return {"apiVersion": run.api_version, "kind": run.kind, "metadata": meta, "spec": run.spec.wire()}


# -- Where tracking and models go: spec -> operator / environment -> local default ---------------------------
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
# MLflow's own credential variables (its client reads them), and the key of each in a credentials Secret
# (spec.tracking.mlflow.credentialsSecret, the operator's mlflow.credentialsSecret).
ENV_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
ENV_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"
MLFLOW_CREDENTIALS: dict[str, str] = {ENV_TRACKING_USERNAME: "username", ENV_TRACKING_PASSWORD: "password",
                                      ENV_TRACKING_TOKEN: "token"}
ENV_REGISTRY_URI = "LEGISTRA_REGISTRY_URI"
ENV_CHECKPOINT_URI = "LEGISTRA_CHECKPOINT_URI"

# Where a trainer keeps its run (a volume that survives pod restarts) and its caches, and how it reports progress
# on its console ("bar" for a terminal, "log" for pod logs).
ENV_OUTPUT_DIR = "LEGISTRA_OUTPUT_DIR"
ENV_CACHE_DIR = "LEGISTRA_CACHE_DIR"
ENV_PROGRESS = "LEGISTRA_PROGRESS"
# Seconds a collective may wait for a peer before it fails (the run's effective stall timeout; unset: torch's).
ENV_COLLECTIVE_TIMEOUT = "LEGISTRA_COLLECTIVE_TIMEOUT"
# What a finished run leaves in its output folder: the outcome (metrics, model, MLflow run). Its presence means done.
RESULT_FILE = "result.json"


def trainer_argv(config: str, output_dir: str, state_dir: str) -> list[str]:
    """The trainer's command line after the interpreter: the pods' and `legistra train`'s, spelled once."""
    return ["-m", "legistra.trainer", "--config", config, "--output-dir", output_dir, "--state-dir", state_dir]


class Progress(TypedDict, total=False):
    """Progress as the trainer reports it (MLflow tag, `status.progress`): what the operator and the CLI read."""

    step: int
    totalSteps: int
    epoch: float
    percent: int
    eval: dict[str, float]


def checkpoint_uri(spec: TrainingRunSpec, configured: str | None) -> str | None:
    """Object storage for a run's checkpoints: its spec's, else the operator's (None: a volume holds them)."""
    return spec.checkpoints.uri or configured


def tracking_uri(spec: TrainingRunSpec | None, configured: str | None,
                 state_dir: Path | None = None) -> str | None:
    """The MLflow tracking URI a run uses: its spec's, else the configured one (operator setting or
    $MLFLOW_TRACKING_URI), else a sqlite store under `state_dir` (local runs), else None (no tracking)."""
    chosen = (spec.tracking.mlflow.tracking_uri if spec is not None else None) or configured
    if chosen:
        return chosen
    return f"sqlite:///{(state_dir / 'mlflow.db').resolve()}" if state_dir is not None else None


def registry_uri(spec: TrainingRunSpec | None, configured: str | None, state_dir: Path | None = None) -> str | None:
    """The registry root a run publishes to: its spec's, else the configured one (operator setting, a CLI flag
    or $LEGISTRA_REGISTRY_URI), else the folder under `state_dir` (local runs), else None."""
    chosen = (spec.registry.uri if spec is not None else None) or configured
    if chosen:
        return chosen
    return str((state_dir / "registry").resolve()) if state_dir is not None else None


def move_credentials(uri: str, env: MutableMapping[str, str]) -> str:
    """`uri` without its user and password, which go into MLflow's own variables in `env` instead
    (ENV_TRACKING_USERNAME / _PASSWORD, unless set already). A tracking URI is printed, written to run.json,
    result.json, the registry manifest and MLflow itself: a password inside it would travel everywhere."""
    if not credentials_in(uri):
        return uri
    parts = urlsplit(uri)
    if parts.username:
        env.setdefault(ENV_TRACKING_USERNAME, unquote(parts.username))
    if parts.password:
        env.setdefault(ENV_TRACKING_PASSWORD, unquote(parts.password))
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def configured_uris(env: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(tracking, registry) as the environment configures them for the trainer and the CLI."""
    source = os.environ if env is None else env
    return source.get(ENV_TRACKING_URI) or None, source.get(ENV_REGISTRY_URI) or None


# -- How a trainer that cannot succeed says so (read by the operator from the failed pod) -------------------
# The trainer exits with EXIT_DETERMINISTIC and writes "<Reason>: <one line>" to the container's termination
# message file: torchrun turns a rank's exit code into its own, but the file survives. Retrying such a run
# only fails the same way again, so the operator ends it at once with that reason and message.
EXIT_DETERMINISTIC = 2
# Diverged: the loss or the saved weights are NaN/inf; such a model is never registered.
FAILURE_REASONS: tuple[str, ...] = ("InvalidData", "InvalidModel", "TrainerError", "Diverged")
# A stop on SIGTERM after a saved checkpoint (eviction, preemption, drain): the next attempt resumes there, and
# the operator does not count the attempt. 143 = 128 + SIGTERM, what a retry-on-signal policy expects.
EXIT_PREEMPTED = 143
PREEMPTED = "Preempted"
ENV_TERMINATION_LOG = "LEGISTRA_TERMINATION_LOG"
TERMINATION_LOG_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message


def termination_message(reason: str, message: str) -> str:
    assert reason in (*FAILURE_REASONS, PREEMPTED), reason
    return f"{reason}: {' '.join(message.split())}"[:TERMINATION_MESSAGE_LIMIT]


def parse_termination_message(text: str | None,
                              reasons: tuple[str, ...] = FAILURE_REASONS) -> tuple[str, str] | None:
    """(reason, message) when `text` is a message the trainer wrote with one of `reasons` (by default the
    deterministic failures); None otherwise (log lines from FallbackToLogsOnError, a crash, an OOM kill)."""
    reason, sep, message = (text or "").strip().partition(": ")
    if sep and reason in reasons and message.strip():
        return reason, message.strip()
    return None
