"""Which modules LoRA adapts, per model type: one table for the trainer (its PEFT config), the operator's memory
check and `legistra plan`. Torch-free, so that the operator image and a core-only install read the same table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from legistra.api.spec import LoraSpec

# Attention (and, for encoders, attention output) projections per architecture; the caller's fallback (PEFT's
# own table in the trainer) and then "all-linear" cover the rest.
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "electra": ["query", "key", "value"],
    "longformer": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "modernbert": ["Wqkv", "Wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "mbart": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "pegasus": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "pegasus_x": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "led": ["query", "key", "value", "q_proj", "k_proj", "v_proj"],
    "t5": ["q", "k", "v", "o"],
    "mt5": ["q", "k", "v", "o"],
    "umt5": ["q", "k", "v", "o"],
    "longt5": ["q", "k", "v", "o"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def lora_targets(model_type: str, spec: LoraSpec,
                 fallback: Mapping[str, Sequence[str] | str] | None = None) -> list[str] | str:
    """The spec's target modules, else this table's for the model type, else `fallback`'s (the trainer passes
    PEFT's defaults), else every linear layer. Every well-known model (`legistra.memory.KNOWN_MODELS`) is in the
    table, so the operator, which has no PEFT, decides as the trainer does (tests/test_memory.py)."""
    if spec.target_modules:
        return spec.target_modules
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    found = (fallback or {}).get(model_type)
    if found is not None:
        return found if isinstance(found, str) else list(found)
    return "all-linear"
