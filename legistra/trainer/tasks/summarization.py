"""summarization: seq2seq (BART, T5, Pegasus families) evaluated with ROUGE-1/2/L."""

from __future__ import annotations

from typing import Any

import numpy as np

from legistra.api.spec import is_t5_family
from legistra.contract import DEFAULT_METRIC
from legistra.trainer.columnar import table_of
from legistra.trainer.data import Row
from legistra.trainer.metrics import rouge_scores
from legistra.trainer.tasks.base import Columns, TaskHandler, token_ids


class Summarization(TaskHandler):
    name = "summarization"
    default_metric = DEFAULT_METRIC["summarization"]
    seq2seq = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: Any = None
        self._references: list[str] = []

    @property
    def prefix(self) -> str:
        # T5 checkpoints were pre-trained with task prefixes; others take the text as is.
        return "summarize: " if is_t5_family(self.spec.model.name) else ""

    def load_model(self, path: str, **kwargs: Any) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)

    def encode(self, rows: list[Row], tokenizer: Any, first: int = 0) -> Columns:
        d = self.spec.data
        ids = token_ids(tokenizer, [self.prefix + r["text"] for r in rows], d.max_length)
        # Targets through __call__: some tokenizers switch to a target mode (language codes) for text_target.
        labels = tokenizer(text_target=[r["summary"] for r in rows], truncation=True,
                           max_length=d.max_target_length)["input_ids"]
        return {"input_ids": ids, "labels": list(labels), "length": [len(x) for x in ids]}

    def bind_eval(self, dataset: Any, rows: Any, tokenizer: Any) -> None:
        self._tokenizer, self._references = tokenizer, table_of(rows).column("summary").to_pylist()

    def collator(self, tokenizer: Any, model: Any) -> Any:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=8)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        preds = eval_pred.predictions
        preds = preds[0] if isinstance(preds, tuple) else preds
        preds = np.where(preds < 0, self._tokenizer.pad_token_id, preds)
        decoded = self._tokenizer.batch_decode(preds, skip_special_tokens=True)
        refs = self._references[: len(decoded)]
        scores = rouge_scores([p.strip() for p in decoded], refs)
        scores["gen_len"] = float(np.mean([np.count_nonzero(p != self._tokenizer.pad_token_id) for p in preds]))
        return scores
