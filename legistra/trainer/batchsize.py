"""`training.batchSize: auto`: the largest per-device batch that fits this GPU, found before training starts.

First the memory estimate (`legistra.memory`, the same as `legistra plan`) against the GPU's real capacity,
then a real forward and backward pass at the longest sequences, backing off by a fifth on CUDA out-of-memory;
every rank runs it and the smallest answer wins (all ranks must step together). On a CPU: 8.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from legistra.api.spec import TrainingRunSpec
from legistra.api.validation import SpecError
from legistra.memory import ModelShape, estimate

log = logging.getLogger("legistra.trainer")

CPU_BATCH = 8
BACK_OFF = 0.8
MAX_BATCH = 4096  # what a number in the spec may say


def largest_that_runs(start: int, runs: Callable[[int], bool]) -> int:
    """Try `start`, then a fifth less each time, until one runs; 0 when not even 1 does."""
    b = start
    while b >= 1:
        if runs(b):
            return b
        b = min(b - 1, math.floor(b * BACK_OFF))
    return 0


def probe_batch(model: Any, spec: TrainingRunSpec, labels: int, precision: str) -> Callable[[int], bool]:
    """One forward and backward pass of `model` on the GPU at batch b and the longest sequences."""
    import torch

    vocab = int(model.config.vocab_size)
    s, t = spec.data.max_length, spec.data.max_target_length
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def batch(b: int) -> dict[str, Any]:
        ids = torch.randint(5, vocab, (b, s), device="cuda")
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if model.config.is_encoder_decoder:
            out["labels"] = torch.randint(5, vocab, (b, t), device="cuda")
        elif spec.task == "clause-extraction":
            out["labels"] = torch.randint(0, labels, (b, s), device="cuda")
        elif spec.classification.multi_label:
            out["labels"] = torch.randint(0, 2, (b, labels), device="cuda").float()
        else:
            out["labels"] = torch.randint(0, labels, (b,), device="cuda")
        return out

    def runs(b: int) -> bool:
        try:
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = model(**batch(b)).loss
            loss.backward()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return runs


def resolve_batch_size(spec: TrainingRunSpec, model: Any, targets: list[str] | str, labels: int, precision: str,
                       cuda: bool) -> int:
    """The per-device batch to train with: the spec's number, or for 'auto' the largest that runs here."""
    if spec.training.batch_size != "auto":
        return spec.training.batch_size
    if not cuda:
        log.info("training.batchSize auto: %d on a CPU", CPU_BATCH)
        return CPU_BATCH
    import torch

    capacity = float(torch.cuda.mem_get_info()[1])
    planned = estimate(spec, ModelShape.from_config(model.config.to_dict()), targets).largest_batch(capacity)
    device = next(model.parameters()).device
    model.to("cuda")
    found = largest_that_runs(min(max(1, planned), MAX_BATCH), probe_batch(model, spec, labels, precision))
    model.to(device)
    torch.cuda.empty_cache()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor([found], device="cuda")
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        found = int(agreed.item())
    if found == 0:
        raise SpecError([f"spec.training.batchSize: auto found no batch that fits this GPU, not even 1 at "
                         f"data.maxLength {spec.data.max_length}; use gradient checkpointing, a higher ZeRO stage, "
                         "offload or shorter sequences"])
    log.info("training.batchSize auto: %d (estimate %d for %.1f GiB; checked with a real step)", found, planned,
             capacity / 2**30)
    return found
