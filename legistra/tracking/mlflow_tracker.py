"""A thin, failure-tolerant wrapper over MLflow's client.

One TrainingRun is one MLflow run, found again by the `legistra.run_key` tag after a restart so a resumed
pod keeps logging into the same run. Every call is retried with backoff; when the server stays
unreachable tracking switches itself off with one clear error and training goes on: a tracking outage
must never cost the trained model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from legistra.contract import TAG_RUN_KEY, run_key_filter

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PARAM_LEN = 6000


class MlflowTracker:
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_key: str,
        run_name: str,
        *,
        artifact_root: str | None = None,
        retries: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_key = run_key
        self.run_name = run_name
        self.artifact_root = artifact_root
        self.retries = retries
        self.backoff_s = backoff_s
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.enabled = True
        self.error: str | None = None
        self._client: Any = None

    # -- plumbing -----------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T | None:
        if not self.enabled:
            return None
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            try:
                return fn()
            except Exception as exc:  # MLflow raises many types (REST, SQL, connection); all are handled alike
                if attempt == self.retries:
                    self.enabled = False
                    self.error = f"MLflow {what} failed after {attempt} attempts at {self.tracking_uri}: {exc}"
                    log.error("%s; tracking is off for the rest of this run, training continues", self.error)
                    return None
                log.warning("MLflow %s failed (attempt %d/%d): %s", what, attempt, self.retries, exc)
                time.sleep(delay)
                delay *= 2
        return None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def url(self) -> str | None:
        if not self.run_id or not self.tracking_uri.startswith("http"):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self, tags: Mapping[str, str] | None = None) -> str | None:
        """Create the run, or find the one an earlier attempt of the same TrainingRun created."""

        def go() -> str:
            client = self.client
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                self.experiment_id = client.create_experiment(self.experiment, artifact_location=self.artifact_root)
            else:
                self.experiment_id = exp.experiment_id
            wanted = os.environ.get("MLFLOW_RUN_ID")
            if wanted:
                run = client.get_run(wanted)
                return str(run.info.run_id)
            found = client.search_runs(
                [self.experiment_id], filter_string=run_key_filter(self.run_key), max_results=1
            )
            if found:
                run_id = str(found[0].info.run_id)
                client.update_run(run_id, status="RUNNING")
                return run_id
            run = client.create_run(
                self.experiment_id, run_name=self.run_name, tags={TAG_RUN_KEY: self.run_key, **(tags or {})}
            )
            return str(run.info.run_id)

        self.run_id = self._call("start", go)
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._call("end", lambda: self.client.set_terminated(self.run_id, status=status))

    # -- logging ------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Param

        existing: dict[str, str] = {}
        run = self._call("get_run", lambda: self.client.get_run(self.run_id))
        if run is not None:
            existing = dict(run.data.params)
        # Params are immutable in MLflow; a resumed attempt only adds the ones not logged yet.
        items = [
            Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items() if k not in existing and v is not None
        ]
        for i in range(0, len(items), 100):
            batch = items[i : i + 100]
            self._call("log_params", lambda b=batch: self.client.log_batch(self.run_id, params=b))  # type: ignore[misc]

    def log_metrics(self, metrics: Mapping[str, float], step: int, tags: Mapping[str, str] | None = None) -> None:
        """Metrics at `step`, and any `tags` with them, in one request (this runs between training steps)."""
        if not self.run_id or not (metrics or tags):
            return
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        batch = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
        tag_batch = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        self._call("log_metrics", lambda: self.client.log_batch(self.run_id, metrics=batch, tags=tag_batch))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("set_tags", lambda: self.client.log_batch(self.run_id, tags=batch))

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.run_id:
            self._call("log_dict", lambda: self.client.log_dict(self.run_id, obj, artifact_file))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run_id:
            self._call("log_artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))


def _metric_key(key: str) -> str:
    # MLflow keys allow [A-Za-z0-9_-./ ]; HF sometimes emits others.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested spec -> {"training.learningRate": 2e-05, ...}, lists kept as their JSON-ish text."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = obj
    return out


SECRET_HINTS = ("secret", "password", "token", "apikey", "api_key", "credential", "accesskey")


def public_params(spec_wire: Mapping[str, Any]) -> dict[str, Any]:
    """Spec params safe to log: anything that names or holds a secret is dropped."""
    flat = flatten(spec_wire)
    return {k: v for k, v in flat.items() if not any(h in k.lower().replace("-", "") for h in SECRET_HINTS)}
