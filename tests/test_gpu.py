"""GPU checks for a session that has the device machine: each task with fp16 + ZeRO-2 on CUDA.

Skipped without CUDA (CI, the dev machines), except in the GPU kit's rehearsal (LEGISTRA_GPU_REHEARSAL=1),
which runs the first case on CPU in an environment of the GPU image's packages and the kit. On the device
machine `benchmarks/gpu.sh` runs this file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
REHEARSAL = os.environ.get("LEGISTRA_GPU_REHEARSAL") == "1"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (torch.cuda.is_available() or REHEARSAL),
                                                  reason="needs a CUDA device")]


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
    # A CPU (the rehearsal) has no half precision: the trainer falls back to fp32 and says so in the manifest.
    assert manifest["precision"] == (precision if torch.cuda.is_available() else "fp32")
    assert manifest["zeroStage"] == 2
    assert manifest["adapterCheck"]["lora_b_abs_sum"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_batch_size_finds_a_batch_that_runs(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    from tests.conftest import base_run, legistra, write_run

    doc = base_run("summarization", tiny_models["bart"], "gpu-auto-batch", deepspeed={"zeroStage": 2},
                   training={"precision": "bf16", "batchSize": "auto"})
    res = legistra("--state-dir", str(tmp_path / "state"), "train", str(write_run(tmp_path / "run.yaml", doc)),
                   "--nproc", "1")
    assert res.returncode == 0, res.stderr[-4000:]
    line = next(x for x in (res.stdout + res.stderr).splitlines() if "training.batchSize auto:" in x)
    assert int(line.split("auto:")[1].split()[0]) > 8  # a tiny model on a GPU takes far more than the default
