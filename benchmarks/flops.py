"""Model FLOPs for LoRA fine-tuning, and utilisation against the GPU's dense peak (pure).

Per real (non-padding) token, for a linear layer with N frozen weights and a LoRA adapter of M weights:
forward 2N + 2M; backward 2N for the activation gradient only (frozen weights get no weight gradient)
+ 4M for the adapter (activation and weight gradients). Total 4N + 6M. Attention scores and the
weighted sum add 4·s·d per layer per token forward (s = the sequence length the token attends over,
d = model width), times 3 with the backward pass: 12·L·s·d. An encoder-decoder counts encoder weights
over encoder tokens and decoder weights (self + cross attention, the LM head) over decoder tokens.
Recomputation under gradient checkpointing (another forward, 2N + 2M + 4·L·s·d) counts toward hardware
FLOPs utilisation (HFU), not model FLOPs utilisation (MFU).
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense tensor-core peaks (FLOP/s) for bf16/fp16; never the 2:4-sparse figures.
PEAK_FLOPS = {
    "H100 SXM": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H200": 989.4e12,
    "A100": 312.0e12,
}


def peak_for(device_name: str) -> float | None:
    name = device_name.upper()
    if "H200" in name:
        return PEAK_FLOPS["H200"]
    if "H100" in name:
        return PEAK_FLOPS["H100 PCIe"] if "PCIE" in name else PEAK_FLOPS["H100 SXM"]
    if "A100" in name:
        return PEAK_FLOPS["A100"]
    return None


@dataclass(frozen=True)
class StackFlops:
    """One transformer stack (an encoder, or a decoder) as the FLOP count sees it."""

    frozen_params: int  # weights that take part in matmuls (embedding lookups excluded; LM head included)
    lora_params: int
    layers: int
    width: int


def token_flops(stack: StackFlops, attended: float, recompute: bool = False) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) per token of this stack; `attended` = mean attended length."""
    n, m = stack.frozen_params, stack.lora_params
    attn_fwd = 4.0 * stack.layers * attended * stack.width
    model = 4.0 * n + 6.0 * m + 3.0 * attn_fwd
    hardware = model + (2.0 * n + 2.0 * m + attn_fwd if recompute else 0.0)
    return model, hardware


def utilisation(flops_per_second: float, peak: float | None) -> float | None:
    return flops_per_second / peak if peak else None
