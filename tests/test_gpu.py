"""GPU checks for a session that has the device machine: each task with fp16 + ZeRO-2 on CUDA.

Skipped without CUDA (CI, the dev machines). On the device machine:
    .venv/bin/pytest tests/test_gpu.py -q && .venv/bin/python -m benchmarks
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(("task", "model", "precision", "compile"), [
    ("risk-classification", "bert", "fp16", False),
    ("clause-extraction", "bert", "fp16", False),
    ("summarization", "bart", "fp16", False),
    ("risk-classification", "bert", "bf16", False),
    ("summarization", "bart", "bf16", True),
])
def test_task_on_gpu_with_zero2(tmp_path: Path, tiny_models: dict[str, Path], task: str, model: str,
                                precision: str, compile: bool) -> None:
    from tests.conftest import base_run
    from tests.test_trainer_e2e import train

    doc = base_run(task, tiny_models[model], f"gpu-{task}-{precision}", deepspeed={"zeroStage": 2},
                   training={"precision": precision, "compile": compile})
    result: dict[str, Any] = train(tmp_path, doc, nproc=1)
    assert result["globalStep"] == 6
    from legistra.registry.registry import Registry

    manifest = Registry.open(str(tmp_path / "state" / "registry")).version(doc["metadata"]["name"], 1).manifest
    assert manifest["precision"] == precision and manifest["zeroStage"] == 2
    assert manifest["adapterCheck"]["lora_b_abs_sum"] > 0
