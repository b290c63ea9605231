"""DeepSpeed configs generated from the spec (pure).

Values left as "auto" are filled in by the Hugging Face integration from the training arguments, so the
batch size, accumulation, clipping and precision can never disagree between the two.
"""

from __future__ import annotations

import copy
from typing import Any

from legistra.api.spec import DeepSpeedSpec


def deepspeed_config(spec: DeepSpeedSpec) -> dict[str, Any] | None:
    if spec.config is not None:
        return copy.deepcopy(spec.config)
    if spec.zero_stage is None:
        return None
    stage = spec.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update(
            {
                "overlap_comm": True,
                "contiguous_gradients": True,
                "reduce_bucket_size": "auto",
            }
        )
    if stage == 2:
        zero["allgather_bucket_size"] = 200_000_000
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # The adapter must be gathered into full tensors before saving, or PEFT writes an empty file.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "fp16": {"enabled": "auto", "loss_scale": 0, "initial_scale_power": 16, "hysteresis": 2},
        "bf16": {"enabled": "auto"},
        "steps_per_print": 1_000_000,  # our own logging reports progress; DeepSpeed's would duplicate it
        "wall_clock_breakdown": False,
    }
    if spec.offload == "cpu" and stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        # Offloaded optimizer states need DeepSpeed's CPU Adam, not the torch one HF would create.
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return cfg


def zero_stage_of(config: dict[str, Any] | None) -> int:
    if not config:
        return -1
    return int(config.get("zero_optimization", {}).get("stage", 0))
