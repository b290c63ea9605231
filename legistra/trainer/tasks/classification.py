"""risk-classification: clauses into risk levels or provision types, single- or multi-label."""

from __future__ import annotations

from typing import Any

import numpy as np

from legistra.contract import DEFAULT_METRIC
from legistra.trainer.data import DataError, Row
from legistra.trainer.metrics import classification_metrics, majority_baseline, multilabel_metrics
from legistra.trainer.tasks.base import TaskHandler


class RiskClassification(TaskHandler):
    name = "risk-classification"
    default_metric = DEFAULT_METRIC["risk-classification"]

    @property
    def multi_label(self) -> bool:
        return self.spec.classification.multi_label

    def fit_labels(self, train: list[Row], validation: list[Row]) -> None:
        def labels_of(row: Row) -> list[str]:
            value = row["label"]
            return list(value) if isinstance(value, list) else [value]

        if self.spec.classification.labels:
            self.labels = list(self.spec.classification.labels)
        else:
            self.labels = sorted({label for row in train for label in labels_of(row)})
        known = set(self.labels)
        for split, rows in (("train", train), ("validation", validation)):
            for i, row in enumerate(rows, start=1):
                for label in labels_of(row):
                    if label not in known:
                        raise DataError(
                            split, i, "label", f"label {label!r} is not in the label set {self.labels}"
                        )
            if not self.multi_label and any(isinstance(r["label"], list) for r in rows):
                raise DataError(split, None, "label", "lists of labels need spec.classification.multiLabel")
        if len(self.labels) < 2:
            raise DataError("train", None, "label", "risk-classification needs at least two labels")

    def load_model(self, path: str, **kwargs: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={label: i for i, label in enumerate(self.labels)},
            problem_type="multi_label_classification" if self.multi_label else "single_label_classification",
            **kwargs,
        )

    def encode(self, rows: list[Row], tokenizer: Any) -> Any:
        import datasets

        index = {label: i for i, label in enumerate(self.labels)}
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=self.spec.data.max_length)
        if self.multi_label:
            labels: list[Any] = []
            for r in rows:
                vec = [0.0] * len(self.labels)
                for label in r["label"] if isinstance(r["label"], list) else [r["label"]]:
                    vec[index[label]] = 1.0
                labels.append(vec)
        else:
            labels = [index[r["label"]] for r in rows]
        return datasets.Dataset.from_dict(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": labels,
                "length": [len(ids) for ids in enc["input_ids"]],
            }
        )

    def collator(self, tokenizer: Any, model: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        labels = np.asarray(eval_pred.label_ids)
        if self.multi_label:
            return multilabel_metrics(labels > 0.5, np.asarray(logits) > 0.0)
        return classification_metrics(labels.tolist(), np.argmax(logits, axis=-1).tolist(), len(self.labels))

    def baseline(self, train: list[Row], validation: list[Row]) -> dict[str, float]:
        if self.multi_label:
            return {}
        top, acc = majority_baseline([r["label"] for r in train], [r["label"] for r in validation])
        n = len(self.labels)
        y_true = [self.labels.index(r["label"]) for r in validation]
        f1 = classification_metrics(y_true, [self.labels.index(top)] * len(y_true), n)["f1_macro"]
        return {"majority_accuracy": acc, "majority_f1_macro": f1}
