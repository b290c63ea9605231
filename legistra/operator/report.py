"""What the trainer published, read back from MLflow's REST API (no RBAC on pods, no mlflow import here).

The trainer (rank 0) tags its MLflow run with `legistra.run_key` = the TrainingRun's uid, keeps
`legistra.progress` current, and tags the registered model at the end; this module turns that into the
`report` the status decision consumes.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from legistra.contract import (
    ENV_TRACKING_PASSWORD,
    ENV_TRACKING_TOKEN,
    ENV_TRACKING_USERNAME,
    FINAL_PREFIX,
    TAG_MODEL,
    TAG_MODEL_ALIAS,
    TAG_MODEL_URI,
    TAG_MODEL_VERSION,
    TAG_PROGRESS,
    TAG_TRAINER_STARTED,
    run_key_filter,
)


def auth_header(auth: Mapping[str, str]) -> dict[str, str]:
    """The Authorization header MLflow's client sends for its MLFLOW_TRACKING_* credentials (a token wins)."""
    if auth.get(ENV_TRACKING_TOKEN):
        return {"Authorization": f"Bearer {auth[ENV_TRACKING_TOKEN]}"}
    if auth.get(ENV_TRACKING_USERNAME):
        pair = f"{auth[ENV_TRACKING_USERNAME]}:{auth.get(ENV_TRACKING_PASSWORD, '')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    return {}


def _call(base: str, path: str, payload: dict[str, Any] | None = None, timeout: float = 5.0,
          headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    url = f"{base.rstrip('/')}/api/2.0/mlflow/{path}"
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out: dict[str, Any] = json.loads(resp.read() or b"{}")
        return out


def report_from_run(run: dict[str, Any], base: str) -> dict[str, Any]:
    """MLflow run JSON -> {progress, metrics, mlflow, model} (pure)."""
    info, data = run.get("info", {}), run.get("data", {})
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    metrics = {m["key"]: float(m["value"]) for m in data.get("metrics", [])}
    out: dict[str, Any] = {
        "mlflow": {"runId": info.get("run_id"), "experimentId": info.get("experiment_id"),
                   "url": f"{base.rstrip('/')}/#/experiments/{info.get('experiment_id')}/runs/{info.get('run_id')}"},
    }
    if TAG_PROGRESS in tags:
        try:
            out["progress"] = json.loads(tags[TAG_PROGRESS])
        except json.JSONDecodeError:
            pass
    if tags.get(TAG_TRAINER_STARTED):
        out["trainerStarted"] = tags[TAG_TRAINER_STARTED]
    finals = {k.removeprefix(FINAL_PREFIX): v for k, v in metrics.items() if k.startswith(FINAL_PREFIX)}
    evals = finals or {k: v for k, v in metrics.items() if k.startswith("eval_") and "/" not in k}
    if evals:
        out["metrics"] = evals
    if TAG_MODEL_VERSION in tags:
        model: dict[str, Any] = {"name": tags.get(TAG_MODEL), "version": int(tags[TAG_MODEL_VERSION]),
                                 "uri": tags.get(TAG_MODEL_URI)}
        if tags.get(TAG_MODEL_ALIAS):
            model["alias"] = tags[TAG_MODEL_ALIAS]
        out["model"] = model
    return out


class MlflowReporter:
    """Finds the run of a TrainingRun (by uid) and reads its report; caches per run for `ttl_s`."""

    def __init__(self, base: str, ttl_s: float = 10.0, auth: Mapping[str, str] | None = None) -> None:
        self.base = base
        self.ttl_s = ttl_s
        self._headers = auth_header(auth or {})
        self._experiments: dict[str, str] = {}
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def _experiment_id(self, name: str) -> str | None:
        if name not in self._experiments:
            try:
                q = urllib.parse.urlencode({"experiment_name": name})
                exp = _call(self.base, f"experiments/get-by-name?{q}", headers=self._headers)
            except Exception:
                return None
            self._experiments[name] = exp["experiment"]["experiment_id"]
        return self._experiments[name]

    def read(self, experiment: str, run_key: str, *, fresh: bool = False) -> dict[str, Any] | None:
        now = time.monotonic()
        hit = self._cache.get(run_key)
        if hit and not fresh and now - hit[0] < self.ttl_s:
            return hit[1]
        report = None
        exp_id = self._experiment_id(experiment)
        if exp_id is not None:
            try:
                found = _call(self.base, "runs/search", {
                    "experiment_ids": [exp_id], "filter": run_key_filter(run_key), "max_results": 1},
                    headers=self._headers)
                runs = found.get("runs", [])
                report = report_from_run(runs[0], self.base) if runs else None
            except Exception:
                report = hit[1] if hit else None  # keep the last good report through an MLflow outage
        self._cache[run_key] = (now, report)
        return report
