"""clause-extraction: CUAD-style clause spans as BIO token classification over overlapping windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from legistra.contract import DEFAULT_METRIC
from legistra.trainer.columnar import first_outside, table_of
from legistra.trainer.data import DataError, Row
from legistra.trainer.metrics import Span, bio_decode, span_metrics
from legistra.trainer.tasks.base import Columns, TaskHandler

IGNORE = -100


def token_tags(offsets: list[tuple[int, int]], spans: list[dict[str, Any]], tag_index: dict[str, int]) -> list[int]:
    """BIO tag ids for one window; special tokens (empty offsets) are ignored by the loss."""
    tags = [IGNORE if start == end else tag_index["O"] for start, end in offsets]
    for span in spans:
        first = True
        for i, (start, end) in enumerate(offsets):
            if start == end or end <= span["start"] or start >= span["end"]:
                continue
            tags[i] = tag_index[("B-" if first else "I-") + span["label"]]
            first = False
    return tags


class ClauseExtraction(TaskHandler):
    name = "clause-extraction"
    default_metric = DEFAULT_METRIC["clause-extraction"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clause_types: list[str] = []
        # Filled by bind_eval: which document and characters each validation window token covers.
        self._eval_windows: list[tuple[int, list[tuple[int, int]]]] = []
        self._eval_docs: list[Row] = []

    def fit_labels(self, train: Any, validation: Any) -> None:
        if self.spec.extraction.clause_types:
            self.clause_types = list(self.spec.extraction.clause_types)
        else:
            self.clause_types = sorted(str(v) for v in pc.unique(_span_labels(train)[0]).to_pylist())
        if not self.clause_types:
            raise DataError("train", None, "spans", "no clause spans found in the training data")
        for split, ds in (("train", train), ("validation", validation)):
            values, rows = _span_labels(ds)
            at = first_outside(values, self.clause_types)
            if at >= 0:
                raise DataError(split, rows[at].as_py() + 1, "spans",
                                f"clause type {values[at].as_py()!r} is not in {self.clause_types}")
        self.labels = ["O"] + [f"{p}-{c}" for c in self.clause_types for p in ("B", "I")]

    def load_model(self, path: str, **kwargs: Any) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            path,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={label: i for i, label in enumerate(self.labels)},
            **kwargs,
        )

    def encode(self, rows: list[Row], tokenizer: Any, first: int = 0) -> Columns:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("spec.model.name: clause-extraction needs a fast tokenizer (character offsets)")
        d = self.spec.data
        stride = min(d.stride, d.max_length // 2)
        enc = tokenizer(
            [r["text"] for r in rows],
            truncation=True,
            max_length=d.max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        tag_index = {label: i for i, label in enumerate(self.labels)}
        columns: Columns = {"input_ids": [], "labels": [], "length": [], "doc_index": [], "offsets": []}
        for w, doc in enumerate(enc["overflow_to_sample_mapping"]):
            offsets = [tuple(o) for o in enc["offset_mapping"][w]]
            columns["input_ids"].append(enc["input_ids"][w])
            columns["labels"].append(token_tags(offsets, rows[doc]["spans"], tag_index))
            columns["length"].append(len(enc["input_ids"][w]))
            # Not model inputs (the Trainer drops them from batches); kept to map predictions to characters.
            columns["doc_index"].append(first + int(doc))
            columns["offsets"].append([list(o) for o in offsets])
        return columns

    def bind_eval(self, dataset: Any, rows: Any, tokenizer: Any) -> None:
        self._eval_docs = table_of(rows).to_pylist()
        self._eval_windows = [
            (int(d), [(int(a), int(b)) for a, b in offs]) for d, offs in zip(dataset["doc_index"], dataset["offsets"])
        ]

    def collator(self, tokenizer: Any, model: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8)

    def preprocess_logits(self, logits: Any, labels: Any) -> Any:
        import torch

        # Keep (label id, probability) per token instead of full logits: memory stays O(tokens).
        probs = torch.softmax(logits.float(), dim=-1)
        top, ids = probs.max(dim=-1)
        return torch.stack([ids.float(), top], dim=-1)

    def decode(self, packed: np.ndarray) -> list[list[Span]]:
        """Window predictions back to character spans per document (overlaps: most confident wins)."""
        best: list[dict[tuple[int, int], tuple[int, float]]] = [{} for _ in self._eval_docs]
        for w, (doc, offsets) in enumerate(self._eval_windows):
            row = packed[w]
            for i, (start, end) in enumerate(offsets):
                if start == end or i >= len(row):
                    continue
                lid, prob = int(row[i][0]), float(row[i][1])
                if lid < 0:
                    continue
                prev = best[doc].get((start, end))
                if prev is None or prob > prev[1]:
                    best[doc][(start, end)] = (lid, prob)
        out = []
        for tokens in best:
            ordered = sorted((s, e, lid, p) for (s, e), (lid, p) in tokens.items())
            out.append(bio_decode(ordered, self.labels))
        return out

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        packed = eval_pred.predictions
        packed = packed[0] if isinstance(packed, tuple) else packed
        predictions = self.decode(np.asarray(packed))
        references = [[Span(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in self._eval_docs]
        return span_metrics(predictions, references)


def _span_labels(ds: Any) -> tuple[pa.Array, pa.Array]:
    """The clause type of every span of a split, and the row each span belongs to."""
    spans = table_of(ds).column("spans").combine_chunks()
    return pc.struct_field(pc.list_flatten(spans), "label"), pc.list_parent_indices(spans)
