"""Weights & Biases, rank 0 only: online with an API key, offline otherwise; never fatal."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from legistra.api.spec import WandbSpec

log = logging.getLogger(__name__)


def wandb_mode(env: Mapping[str, str]) -> str:
    """Online only with a key: wandb.init without one (and no terminal) crashes instead of asking."""
    explicit = env.get("WANDB_MODE")
    if explicit:
        return explicit
    return "online" if env.get("WANDB_API_KEY") else "offline"


class WandbTracker:
    def __init__(self, spec: WandbSpec, run_id: str, run_name: str, out_dir: Path) -> None:
        self.spec, self.run_id, self.run_name, self.out_dir = spec, run_id, run_name, out_dir
        self.run: Any = None
        self.mode = wandb_mode(os.environ)

    def start(self, config: Mapping[str, Any]) -> None:
        try:
            import wandb

            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=self.spec.project,
                entity=self.spec.entity,
                id=self.run_id,  # stable across restarts: a resumed pod continues the same W&B run
                name=self.run_name,
                resume="allow",
                mode=self.mode,  # type: ignore[arg-type]
                dir=str(self.out_dir),
                config=dict(config),
            )
        except Exception as exc:  # W&B must never take the job down (other ranks would hang at a barrier)
            log.error("W&B init failed, continuing without it: %s", exc)
            self.run = None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run is not None:
            try:
                self.run.log(dict(metrics), step=step)
            except Exception as exc:
                log.warning("W&B log failed: %s", exc)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=exit_code)
            except Exception as exc:
                log.warning("W&B finish failed: %s", exc)
            self.run = None
