"""What every task provides to the training loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from legistra.api.spec import TrainingRunSpec
from legistra.trainer.data import Row

Columns = dict[str, list[Any]]


class TaskHandler(ABC):
    """One legal-NLP task: label space, model head, encoding, collation and metrics."""

    name: str
    default_metric: str
    greater_is_better: bool = True
    seq2seq: bool = False

    def __init__(self, spec: TrainingRunSpec) -> None:
        self.spec = spec
        self.labels: list[str] = []

    def fit_labels(self, train: Any, validation: Any) -> None:
        """Fix the label space from the spec or the data (`datasets.Dataset`s of canonical rows, before the model
        is built)."""

    @abstractmethod
    def load_model(self, path: str, **kwargs: Any) -> Any: ...

    @abstractmethod
    def encode(self, rows: list[Row], tokenizer: Any, first: int = 0) -> Columns:
        """Model inputs for a batch of canonical rows (the first is row `first` of its split), with a `length`
        column for length-grouped batching. Called batch by batch; the results go to an Arrow file."""

    @abstractmethod
    def collator(self, tokenizer: Any, model: Any) -> Any: ...

    @abstractmethod
    def compute_metrics(self, eval_pred: Any) -> dict[str, float]: ...

    def bind_eval(self, dataset: Any, rows: Any, tokenizer: Any) -> None:
        """Remember what compute_metrics needs beyond the model outputs (documents, references)."""

    def preprocess_logits(self, logits: Any, labels: Any) -> Any:
        return logits

    def baseline(self, train: Any, validation: Any) -> dict[str, float]:
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


def token_ids(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Input ids of `texts`, truncated to `max_length` with the special tokens the tokenizer adds.

    A fast tokenizer's Rust batch call without offsets is faster than the Python `__call__`, which builds offsets
    and a BatchEncoding (docs/operator.md, "Measurements behind the design"); tests/test_data.py holds both to the
    same ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return list(tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    # The same settings `__call__` gives the backend before each call (it resets them every time too).
    backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=tokenizer.truncation_side)
    backend.no_padding()
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]
