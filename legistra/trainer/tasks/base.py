"""What every task provides to the training loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from legistra.api.spec import TrainingRunSpec
from legistra.trainer.data import Row


class TaskHandler(ABC):
    """One legal-NLP task: label space, model head, encoding, collation and metrics."""

    name: str
    default_metric: str
    greater_is_better: bool = True
    seq2seq: bool = False

    def __init__(self, spec: TrainingRunSpec) -> None:
        self.spec = spec
        self.labels: list[str] = []

    def fit_labels(self, train: list[Row], validation: list[Row]) -> None:
        """Fix the label space from the spec or the data (before the model is built)."""

    @abstractmethod
    def load_model(self, path: str, **kwargs: Any) -> Any: ...

    @abstractmethod
    def encode(self, rows: list[Row], tokenizer: Any) -> Any:
        """A `datasets.Dataset` with model inputs and a `length` column for length-grouped batching."""

    @abstractmethod
    def collator(self, tokenizer: Any, model: Any) -> Any: ...

    @abstractmethod
    def compute_metrics(self, eval_pred: Any) -> dict[str, float]: ...

    def bind_eval(self, dataset: Any, rows: list[Row], tokenizer: Any) -> None:
        """Remember what compute_metrics needs beyond the model outputs (documents, references)."""

    def preprocess_logits(self, logits: Any, labels: Any) -> Any:
        return logits

    def baseline(self, train: list[Row], validation: list[Row]) -> dict[str, float]:
        """A trivial reference score on the validation split, to read the model's metrics against."""
        return {}

    def cache_key(self) -> dict[str, Any]:
        d = self.spec.data
        return {
            "task": self.name,
            "labels": self.labels,
            "max_length": d.max_length,
            "max_target_length": d.max_target_length,
            "stride": d.stride,
        }
