"""Trainer callbacks: tracking, readable pod logs, progress reports. All act on rank 0 only."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from legistra.contract import TAG_PROGRESS, Progress
from legistra.tracking.mlflow_tracker import MlflowTracker
from legistra.tracking.wandb_tracker import WandbTracker

log = logging.getLogger("legistra.trainer")


def _numeric(logs: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _memory() -> dict[str, float]:
    import torch

    out: dict[str, float] = {}
    if torch.cuda.is_available():
        out["system/gpu_mem_allocated_gb"] = torch.cuda.memory_allocated() / 2**30
        out["system/gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource

        out["system/cpu_rss_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        pass
    return out


class MetricsCallback(TrainerCallback):
    """Per-step loss / learning rate, eval metrics, throughput and memory to MLflow and W&B.

    Keeps the history for the training-curve plot and the final progress report.
    """

    def __init__(
        self,
        mlflow: MlflowTracker | None,
        wandb: WandbTracker | None,
    ) -> None:
        self.mlflow, self.wandb = mlflow, wandb
        self.history: list[dict[str, float]] = []
        self._t0 = time.monotonic()
        self._last_tokens = 0
        self._last_time = time.monotonic()
        self.tokens_per_second: float | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self._last_time = time.monotonic()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        metrics = _numeric(logs)
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        now = time.monotonic()
        if tokens > self._last_tokens and now > self._last_time and "loss" in metrics:
            # Tokens are non-padding and summed over all ranks by the Trainer.
            self.tokens_per_second = (tokens - self._last_tokens) / (now - self._last_time)
            metrics["system/tokens_per_second"] = self.tokens_per_second
            self._last_tokens, self._last_time = tokens, now
        metrics.update(_memory())
        step = state.global_step
        self.history.append({"step": float(step), **metrics})
        progress = progress_of(state, metrics)
        if self.mlflow is not None:
            # The operator mirrors the progress tag into the TrainingRun's .status.progress.
            self.mlflow.log_metrics(metrics, step, tags={TAG_PROGRESS: json.dumps(
                {k: progress[k] for k in ("step", "totalSteps", "epoch") if k in progress})})
        if self.wandb is not None:
            self.wandb.log(metrics, step)


def progress_of(state: TrainerState, metrics: dict[str, float]) -> Progress:
    out: Progress = {"step": int(state.global_step), "totalSteps": int(state.max_steps or 0)}
    if state.epoch is not None:
        out["epoch"] = round(float(state.epoch), 3)
    evals = {k: v for k, v in metrics.items() if k.startswith("eval_")}
    if evals:
        out["eval"] = evals
    return out


class LogLineCallback(TrainerCallback):
    """One readable line per logging interval, for pods and CI logs where a progress bar is noise."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        total = max(1, state.max_steps)
        elapsed = time.monotonic() - self._start
        eta = elapsed / max(1, state.global_step) * (total - state.global_step)
        parts = [f"step {state.global_step}/{total} ({100 * state.global_step / total:.0f}%)"]
        if state.epoch is not None:
            parts.append(f"epoch {state.epoch:.2f}")
        for key, value in _numeric(logs).items():
            if key in ("loss", "learning_rate", "grad_norm") or (key.startswith("eval_") and "/" not in key
                                                                  and not key.endswith(("_runtime", "_per_second"))):
                parts.append(f"{key} {value:.4g}")
        parts.append(f"eta {eta:.0f}s")
        log.info(" | ".join(parts))
