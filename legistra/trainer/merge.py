"""Merging the adapter into the base model, in one process after training (never under ZeRO-3)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("legistra.trainer")


def merge_and_check(
    handler: Any, base_path: str, adapter_dir: Path, out_dir: Path, tokenizer: Any, eval_ds: Any, atol: float = 1e-3
) -> float:
    """Save base+adapter merged into `out_dir`; refuse if its logits differ from the adapter model's."""
    import torch
    from peft import PeftModel

    base = handler.load_model(base_path)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    sample = eval_ds.select(range(min(4, len(eval_ds))))
    cols = ["input_ids", "attention_mask"] + (["labels"] if handler.seq2seq else [])
    batch = handler.collator(tokenizer, peft_model)([{c: ex[c] for c in cols} for ex in sample])
    batch = {k: v for k, v in batch.items() if k in cols or k == "decoder_input_ids"}
    with torch.no_grad():
        before = peft_model(**batch).logits
        merged = peft_model.merge_and_unload()
        after = merged(**batch).logits
    diff = float((before - after).abs().max())
    if diff > atol:
        raise RuntimeError(f"merged model's logits differ from the adapter model's by {diff:.2e} (> {atol})")
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    log.info("merged model saved to %s (max logit difference %.2e)", out_dir, diff)
    return diff
