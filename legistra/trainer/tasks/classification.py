"""risk-classification: clauses into risk levels or provision types, single- or multi-label."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from legistra.contract import DEFAULT_METRIC
from legistra.trainer.columnar import table_of
from legistra.trainer.data import Row, checked_labels
from legistra.trainer.metrics import classification_metrics, majority_label, multilabel_metrics
from legistra.trainer.tasks.base import Columns, TaskHandler, token_ids


class RiskClassification(TaskHandler):
    name = "risk-classification"
    default_metric = DEFAULT_METRIC["risk-classification"]

    @property
    def multi_label(self) -> bool:
        return self.spec.classification.multi_label

    def fit_labels(self, train: Any, validation: Any) -> None:
        self.labels = checked_labels(self.spec.classification.labels,
                                     [("train", table_of(train)), ("validation", table_of(validation))])

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

    def encode(self, rows: list[Row], tokenizer: Any, first: int = 0) -> Columns:
        index = {label: i for i, label in enumerate(self.labels)}
        ids = token_ids(tokenizer, [r["text"] for r in rows], self.spec.data.max_length)
        if self.multi_label:
            labels: list[Any] = []
            for r in rows:
                vec = [0.0] * len(self.labels)
                for label in r["label"]:
                    vec[index[label]] = 1.0
                labels.append(vec)
        else:
            labels = [index[r["label"]] for r in rows]
        return {"input_ids": ids, "labels": labels, "length": [len(x) for x in ids]}

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

    def baseline(self, train: Any, validation: Any) -> dict[str, float]:
        if self.multi_label:
            return {}
        counts = {c["values"]: c["counts"] for c in pc.value_counts(table_of(train).column("label")).to_pylist()}
        top = majority_label(counts)
        truth = table_of(validation).column("label")
        acc = pc.mean(pc.equal(truth, top).cast(pa.float64())).as_py() or 0.0
        y_true = [self.labels.index(v) for v in truth.to_pylist()]
        f1 = classification_metrics(y_true, [self.labels.index(top)] * len(y_true), len(self.labels))["f1_macro"]
        return {"majority_accuracy": float(acc), "majority_f1_macro": f1}
