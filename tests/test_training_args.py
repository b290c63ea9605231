"""spec.training -> Hugging Face TrainingArguments (the mapping the trainer and the benchmark share)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kit.objects import run_spec
from legistra.api.spec import TrainingRunSpec
from legistra.trainer.runtime import DistInfo
from legistra.trainer.tasks import handler_for
from legistra.trainer.train import ResolvedTraining, RunPaths, build_training_args, effective_precision


def spec(task: str = "risk-classification", **training: Any) -> TrainingRunSpec:
    return run_spec(task, "m", training=training)


def args_for(s: TrainingRunSpec, tmp_path: Path) -> Any:
    handler = handler_for(s)
    precision = effective_precision(s, cuda=False, bf16_ok=False)
    return build_training_args(s, handler, RunPaths(tmp_path, tmp_path / "cache"), DistInfo(0, 1, 0),
                               ResolvedTraining.of(s, precision, cuda=False))


def test_spec_values_reach_the_trainer(tmp_path: Path) -> None:
    a = args_for(spec(batchSize=4, gradientAccumulation=2, learningRate=3e-4, maxSteps=50, saveSteps=7, seed=3,
                      dataloaderWorkers=0, groupByLength=False), tmp_path)
    assert (a.per_device_train_batch_size, a.gradient_accumulation_steps, a.learning_rate) == (4, 2, 3e-4)
    assert (a.max_steps, a.save_steps, a.seed, a.data_seed) == (50, 7, 3, 3)
    assert a.train_sampling_strategy == "random" and a.dataloader_num_workers == 0
    assert a.output_dir == str(tmp_path / "checkpoints")


def test_cpu_defaults_fall_back_safely(tmp_path: Path) -> None:
    a = args_for(spec(compile=True), tmp_path)
    assert a.torch_compile is False  # compile is a GPU setting
    assert not a.fp16 and not a.bf16  # the seed guide's fp16 default becomes fp32 without a GPU
    assert a.optim.value == "adamw_torch" and a.use_cpu
    assert a.train_sampling_strategy == "group_by_length"
    assert a.average_tokens_across_devices is False  # see the comment in build_training_args


def test_summarization_gets_seq2seq_arguments_with_generation(tmp_path: Path) -> None:
    a = args_for(spec("summarization"), tmp_path)
    assert type(a).__name__ == "Seq2SeqTrainingArguments" and a.predict_with_generate


def test_the_collective_timeout_follows_the_operator_then_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process group's timeout: the operator's LEGISTRA_COLLECTIVE_TIMEOUT (the run's effective stall timeout),
    else the spec's stallTimeout, else torch's default."""
    import datetime as dt

    from legistra.contract import ENV_COLLECTIVE_TIMEOUT
    from legistra.trainer.train import collective_timeout

    monkeypatch.delenv(ENV_COLLECTIVE_TIMEOUT, raising=False)
    assert collective_timeout(spec()) is None
    assert collective_timeout(spec(stallTimeout="2h")) == dt.timedelta(hours=2)
    assert collective_timeout(spec(stallTimeout="0")) is None
    monkeypatch.setenv(ENV_COLLECTIVE_TIMEOUT, "1800")
    assert collective_timeout(spec(stallTimeout="2h")) == dt.timedelta(minutes=30)
