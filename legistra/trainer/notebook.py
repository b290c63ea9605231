"""The notebook API: fine-tune an in-memory model on a `datasets.DatasetDict` with LoRA and tracking.

    from legistra.trainer.notebook import train_with_tracking
    result = train_with_tracking(model, tokenizer, dataset, "out/", learning_rate=2e-4, num_train_epochs=3)

It shares the LoRA defaults, metrics, tracking and checkpoint resume of the TrainingRun path; what it does
not do is register the model (call `legistra registry push OUT/model` when it is worth keeping).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from legistra.api.spec import LoraSpec, Task, WandbSpec
from legistra.trainer.metrics import classification_metrics

log = logging.getLogger("legistra.trainer")


@dataclass
class TrainResult:
    metrics: dict[str, float]
    output_dir: Path
    model: Any
    mlflow_run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


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
    for name in ("validation", "eval", "test"):
        if name in dataset:
            return name
    return None


def _tokenize(dataset: Any, tokenizer: Any, task: Task, max_length: int) -> Any:
    columns = dataset["train"].column_names
    if "input_ids" in columns:
        return dataset
    if "text" not in columns:
        raise ValueError("dataset: needs either tokenized columns (input_ids) or a 'text' column")

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        if task == "summarization":
            return dict(tokenizer(batch["text"], text_target=batch["summary"], truncation=True, max_length=max_length))
        out = dict(tokenizer(batch["text"], truncation=True, max_length=max_length))
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    return dataset.map(encode, batched=True, remove_columns=columns)


def _classification_metrics(eval_pred: Any) -> dict[str, float]:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = np.asarray(eval_pred.label_ids)
    return classification_metrics(labels.tolist(), np.argmax(logits, -1).tolist(), int(logits.shape[-1]))


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
    max_length: int = 512,
    **training_args: Any,
) -> TrainResult:
    """Fine-tune `model` on `dataset["train"]`, evaluating on its validation split, tracked in MLflow/W&B."""
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        Trainer,
        TrainingArguments,
    )
    from transformers.trainer_utils import get_last_checkpoint

    from legistra.contract import FINAL_PREFIX, TAG_SOURCE, TAG_TASK, configured_uris, tracking_uri
    from legistra.tracking.mlflow_tracker import MlflowTracker
    from legistra.tracking.wandb_tracker import WandbTracker
    from legistra.trainer.callbacks import MetricsCallback
    from legistra.trainer.modeling import apply_lora

    if "train" not in dataset:
        raise ValueError("dataset: needs a 'train' split")
    out = Path(output_dir)
    task = task_of(model)
    data = _tokenize(dataset, tokenizer, task, max_length)
    eval_split = _eval_split(data)
    if use_lora:
        model = apply_lora(model, task, lora or LoraSpec())

    import torch

    cuda = torch.cuda.is_available()
    defaults: dict[str, Any] = {
        "output_dir": str(out / "checkpoints"),
        "learning_rate": 2e-5,
        "per_device_train_batch_size": 8,
        "num_train_epochs": 3,
        "eval_strategy": "epoch" if eval_split else "no",
        "save_strategy": "epoch",
        "save_total_limit": 2,
        "logging_steps": 10,
        "report_to": "none",
        "use_cpu": not cuda,
        "label_names": ["labels"],
        "average_tokens_across_devices": False,
        "include_num_input_tokens_seen": "non_padding",
    }
    args_cls = Seq2SeqTrainingArguments if task == "summarization" else TrainingArguments
    args = args_cls(**{**defaults, **training_args})

    mlflow = None
    if use_mlflow:
        mlflow = MlflowTracker(str(tracking_uri(None, configured_uris()[0], Path(".legistra"))), experiment,
                               f"notebook-{out.resolve()}", out.name or "notebook")
        mlflow.start(tags={TAG_TASK: task, TAG_SOURCE: "train_with_tracking"})
        mlflow.log_params({k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))})
    wandb = None
    if use_wandb:
        wandb = WandbTracker(WandbSpec(project=os.environ.get("WANDB_PROJECT", "legistra")),
                             f"nb-{abs(hash(str(out.resolve()))) % 10**12}", out.name or "notebook", out)
        wandb.start({"task": task, "lora": use_lora})

    metrics_cb = MetricsCallback(mlflow, wandb)
    collator: Any
    if task == "summarization":
        collator = DataCollatorForSeq2Seq(tokenizer, model=model)
    elif task == "clause-extraction":
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    trainer_cls = Seq2SeqTrainer if task == "summarization" else Trainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data[eval_split] if eval_split else None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=_classification_metrics if task == "risk-classification" else None,
        callbacks=[metrics_cb],
    )
    ckpt = Path(str(args.output_dir))
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    status = "FAILED"
    try:
        trainer.train(resume_from_checkpoint=last)
        metrics = {k: float(v) for k, v in (trainer.evaluate() if eval_split else {}).items()
                   if isinstance(v, (int, float))}
        trainer.save_model(str(out / "model"))
        tokenizer.save_pretrained(str(out / "model"))
        if mlflow is not None:
            mlflow.log_metrics({f"{FINAL_PREFIX}{k}": v for k, v in metrics.items()}, trainer.state.global_step)
        status = "FINISHED"
    finally:
        if mlflow is not None:
            mlflow.end(status)
        if wandb is not None:
            wandb.finish(0 if status == "FINISHED" else 1)
    return TrainResult(metrics, out, trainer.model, mlflow.run_id if mlflow else None, metrics_cb.history)
