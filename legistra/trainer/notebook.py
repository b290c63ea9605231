"""The notebook API: fine-tune an in-memory model on a `datasets.DatasetDict` with LoRA and tracking.

    from legistra.trainer.notebook import train_with_tracking
    result = train_with_tracking(model, tokenizer, dataset, "out/", learning_rate=2e-4, num_train_epochs=3)

The arguments become a TrainingRun spec, and training runs the same task path as `legistra train`: the same
defaults, collators, evaluation metrics for all three tasks, checkpoints and resume, MLflow run and W&B run
(both found again by the run's stable key, so running the same call again resumes them). What it does not do
is register the model: call `legistra registry push OUT/model --model NAME` when it is worth keeping.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legistra.api.spec import LoraSpec, Task, TrainingRun
from legistra.api.validation import parse_training_run


@dataclass
class TrainResult:
    metrics: dict[str, float]
    output_dir: Path
    model: Any
    mlflow_run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


# TrainingArguments names this API accepts -> the spec's field (under spec.training).
TRAINING_ARGS: dict[str, str] = {
    "learning_rate": "learningRate",
    "num_train_epochs": "epochs",
    "max_steps": "maxSteps",
    "per_device_train_batch_size": "batchSize",
    "gradient_accumulation_steps": "gradientAccumulation",
    "logging_steps": "loggingSteps",
    "save_steps": "saveSteps",
    "save_total_limit": "saveTotalLimit",
    "eval_strategy": "evaluation",
    "eval_steps": "evalSteps",
    "warmup_ratio": "warmupRatio",
    "weight_decay": "weightDecay",
    "seed": "seed",
    "gradient_checkpointing": "gradientCheckpointing",
    "dataloader_num_workers": "dataloaderWorkers",
}


def task_of(model: Any) -> Task:
    name = type(model).__name__
    if "ForSequenceClassification" in name:
        return "risk-classification"
    if "ForTokenClassification" in name:
        return "clause-extraction"
    if "ForConditionalGeneration" in name or "Seq2Seq" in name:
        return "summarization"
    raise ValueError(f"model: {name} is not a sequence-classification, token-classification or seq2seq model")


def _eval_split(dataset: Any) -> str | None:
    return next((name for name in ("validation", "eval", "test") if name in dataset), None)


def notebook_run(task: Task, model_name: str, output_dir: Path, *, labels: list[str] | None, use_lora: bool,
                 lora: LoraSpec | None, use_wandb: bool, experiment: str, max_length: int,
                 training_args: dict[str, Any]) -> TrainingRun:
    """The TrainingRun the arguments describe (validated like any other; unknown arguments are refused)."""
    unknown = sorted(set(training_args) - set(TRAINING_ARGS))
    if unknown:
        raise TypeError(f"train_with_tracking: unsupported training arguments {unknown}; "
                        f"supported: {sorted(TRAINING_ARGS)}")
    training = {TRAINING_ARGS[k]: v for k, v in training_args.items()}
    training.setdefault("precision", "bf16" if _bf16_ok() else "fp16")
    name = re.sub(r"[^a-z0-9-]+", "-", output_dir.resolve().name.lower()).strip("-")[:40] or "notebook"
    spec: dict[str, Any] = {
        "task": task,
        "model": {"name": model_name},
        # The rows come from memory; these name them in the run's records.
        "data": {"train": f"notebook:{output_dir.resolve()}#train", "maxLength": max_length},
        "training": training,
        "lora": {**(lora.wire() if lora else {}), "enabled": use_lora},
        "tracking": {"mlflow": {"experiment": experiment},
                     **({"wandb": {"project": os.environ.get("WANDB_PROJECT", "legistra")}} if use_wandb else {})},
        "registry": {"modelName": name},
    }
    if labels is not None:
        spec["classification"] = {"labels": labels}
    return parse_training_run({"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun",
                               "metadata": {"name": name}, "spec": spec})


def _bf16_ok() -> bool:
    import torch

    return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()


def _in_memory_data(run: TrainingRun, dataset: Any, eval_split: str | None, cache_dir: Path) -> Any:
    """The DatasetDict's rows, checked exactly as file rows are (every bad row listed), as Arrow in the cache."""
    from legistra.trainer.data import canon_of, holdout, loaded, prepare_dataset

    spec = run.spec
    label, canon = spec.data.train, canon_of(spec)
    train = prepare_dataset(dataset["train"], f"{label}:train", canon, cache_dir)
    if eval_split:
        validation = prepare_dataset(dataset[eval_split], f"{label}:{eval_split}", canon, cache_dir)
    else:
        train, validation = holdout(train, spec.data.validation_split, spec.training.seed, canon, cache_dir)
    return loaded(train, validation, None)


def train_with_tracking(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    output_dir: str | Path,
    use_lora: bool = True,
    use_wandb: bool = True,
    use_mlflow: bool = True,
    *,
    lora: LoraSpec | None = None,
    experiment: str = "legistra-notebook",
    max_length: int | None = None,
    **training_args: Any,
) -> TrainResult:
    """Fine-tune `model` on `dataset["train"]`, evaluating on its validation split, tracked in MLflow/W&B.

    Columns: `text` plus `label` (class id or name; a list for multi-label), `summary`, or `spans`, by task.
    `training_args` take TrainingArguments names (see TRAINING_ARGS)."""
    from legistra.contract import configured_uris, move_credentials, tracking_uri
    from legistra.trainer.train import InMemory, RunPaths, RunSettings, already_loaded, train

    if "train" not in dataset:
        raise ValueError("dataset: needs a 'train' split")
    if "text" not in dataset["train"].column_names:
        raise ValueError("dataset: needs a 'text' column (and the task's target column); give rows, not tokens")
    out = Path(output_dir)
    task = task_of(model)
    labels = None
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    feature = dataset["train"].features.get("label")
    if task == "risk-classification" and getattr(feature, "names", None):
        labels = list(feature.names)  # a ClassLabel: its names, in the order of its ids
    elif task == "risk-classification" and num_labels and isinstance(dataset["train"][0].get("label"), int):
        labels = [str(i) for i in range(num_labels)]  # class ids keep the model's own order
    if max_length is None:  # 512, or fewer where the model's position table is shorter
        from legistra.memory import position_limit

        config = getattr(model, "config", None)
        limit = position_limit(config.to_dict()) if config is not None else None
        max_length = min(512, limit) if limit else 512
    run = notebook_run(task, getattr(model, "name_or_path", "") or "in-memory", out, labels=labels,
                       use_lora=use_lora, lora=lora, use_wandb=use_wandb, experiment=experiment,
                       max_length=max_length, training_args=training_args)
    eval_split = _eval_split(dataset)
    state = Path(".legistra")
    given = InMemory(model, tokenizer, _in_memory_data(run, dataset, eval_split, state / "cache"))
    # Without MLflow the run is still recorded, in a store beside the output (the trainer always tracks).
    uri = tracking_uri(run.spec, configured_uris()[0], state) if use_mlflow else \
        f"sqlite:///{out.resolve() / 'mlflow.db'}"
    paths = RunPaths(root=out, cache=state / "cache")
    settings = RunSettings(tracking_uri=move_credentials(str(uri), os.environ), registry_uri=None)
    # The notebook's own model, tokenizer and rows stand in for the spec's locations; its Ctrl-C stays its own.
    result, fitted = train(run, paths, settings, already_loaded(given), signals=False)
    assert result is not None and fitted is not None  # the notebook is rank 0, and trains
    run_id = (result.get("mlflow") or {}).get("runId") if use_mlflow else None
    return TrainResult(dict(result.get("metrics", {})), out, fitted.trainer.model, run_id, fitted.history)
