"""Will it fit? Per-rank GPU memory of a TrainingRun, from the model's shape and the spec (pure).

Used by `legistra plan`, by the operator before it creates a job (when it knows the GPU type) and by the
trainer for `training.batchSize: auto`. Parts, per rank:
- weights: every parameter, in half precision under DeepSpeed with fp16/bf16 (the engine casts the model),
  in fp32 otherwise (the Trainer's autocast keeps fp32 weights); ZeRO-3 partitions them over the ranks;
- trainable state (the LoRA adapters, or every weight without LoRA): fp32 gradients (partitioned from
  ZeRO-2), AdamW's two moments plus DeepSpeed's fp32 master copy (partitioned from ZeRO-1; on the CPU with
  offload);
- activations saved for the backward pass, per sample at the longest sequence (length-grouped batches do
  reach it): elements per token, per layer, per unit of model width, measured with autograd's saved-tensor
  hooks (tests/test_memory.py keeps the constants honest on CPU), and the seq2seq logits;
- the CUDA context, cuBLAS workspace and NCCL buffers, which torch's allocated figure never shows.
The constants below are where a GPU measurement (benchmarks/gpu.sh reports the error) feeds back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from legistra.api.spec import TrainingRunSpec

GIB = 2**30

# Saved activation elements per token, per layer, per unit of width (SDPA: no sequence-squared term).
ACT_ENCODER = 17.5  # an encoder layer (self-attention + feed-forward, LoRA on the attention projections)
ACT_DECODER = 28.0  # a decoder layer, per target token (self- and cross-attention + feed-forward)
ACT_CROSS = 8.0  # a decoder layer, per source token (the cross-attention keys and values of the encoder output)
ACT_CHECKPOINTED = 1.75  # with gradient checkpointing: each layer keeps its input only
LOGIT_BYTES = 10  # per target token and vocabulary entry: half logits, their fp32 copy for the loss, its gradient
CONTEXT_BYTES = 1.0 * GIB  # CUDA context, cuBLAS workspace, NCCL buffers
FRAGMENTATION = 1.10  # what the caching allocator reserves over what it hands out

# GPU memory as the driver reports it (nvidia-smi's total), by the names in `nvidia.com/gpu.product` labels.
# A bare chip name takes the first (smallest) entry of that chip.
GPUS: dict[str, float] = {
    "H200": 140.4 * GIB,
    "H100-80GB": 79.6 * GIB,
    "H100-94GB": 93.6 * GIB,
    "A100-40GB": 39.4 * GIB,
    "A100-80GB": 79.2 * GIB,
    "L40S": 45.0 * GIB,
    "A10G": 22.5 * GIB,
    "L4": 22.5 * GIB,
    "V100-16GB": 15.8 * GIB,
    "V100-32GB": 31.7 * GIB,
    "T4": 15.0 * GIB,
}


def gpu_memory(product: str) -> tuple[str, float] | None:
    """(our name, bytes) for a GPU product name such as `NVIDIA-H100-80GB-HBM3`, `Tesla-T4`, `H100`."""
    tokens = set(re.split(r"[-_ ]+", product.upper()))
    for name, size in GPUS.items():
        chip, *mem = name.split("-")
        if chip in tokens and (not mem or mem[0] in tokens or not any(t.endswith("GB") for t in tokens)):
            return name, size
    return None


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, read from its config.json."""

    model_type: str
    width: int
    encoder_layers: int
    decoder_layers: int  # 0: encoder only
    ffn: int
    vocab: int
    params: int
    attention_width: int  # width of the attention projections (T5's heads x d_kv; the model width elsewhere)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ModelShape:
        """The shape of a BERT-, BART- or T5-like model; ValueError naming what the config lacks."""
        kind = str(cfg.get("model_type", ""))

        def need(*keys: str) -> int:
            for k in keys:
                if isinstance(cfg.get(k), int):
                    return int(cfg[k])
            raise ValueError(f"config.json of a {kind or 'model'} has no {' or '.join(keys)}")

        vocab = need("vocab_size")
        if "d_kv" in cfg:  # T5 family
            h, inner, ffn = need("d_model"), need("d_kv") * need("num_heads"), need("d_ff")
            enc = need("num_layers")
            dec = int(cfg.get("num_decoder_layers") or enc)
            mats = 3 if str(cfg.get("feed_forward_proj", "")).startswith("gated") else 2
            embed = vocab * h * (1 if cfg.get("tie_word_embeddings", True) else 2)
            params = embed + enc * (4 * h * inner + mats * h * ffn) + dec * (8 * h * inner + mats * h * ffn)
            return cls(kind, h, enc, dec, ffn, vocab, params, inner)
        if "encoder_layers" in cfg or "d_model" in cfg:  # BART family
            h, enc = need("d_model"), need("encoder_layers")
            dec, ffn = need("decoder_layers"), need("encoder_ffn_dim")
            pos = int(cfg.get("max_position_embeddings") or 1024)
            params = vocab * h + 2 * pos * h + enc * (4 * h * h + 2 * h * ffn) + dec * (8 * h * h + 2 * h * ffn)
            return cls(kind, h, enc, 0 if cfg.get("is_encoder_decoder") is False else dec, ffn, vocab, params, h)
        h = need("hidden_size", "dim")
        layers, ffn = need("num_hidden_layers", "n_layers"), need("intermediate_size", "hidden_dim")
        pos = int(cfg.get("max_position_embeddings") or 512)
        params = vocab * h + pos * h + layers * (4 * h * h + 2 * h * ffn) + h * h
        return cls(kind, h, layers, 0, ffn, vocab, params, h)


# config.json fields of the models our examples and users name most, so the operator (which reads no model
# files) can check them; `legistra plan` reads the real config.json of any other.
KNOWN_MODELS: dict[str, dict[str, Any]] = {}
_BERT_BASE = {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072,
              "num_attention_heads": 12, "vocab_size": 30522, "max_position_embeddings": 512}
_BART_LARGE = {"model_type": "bart", "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
               "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096, "encoder_attention_heads": 16,
               "decoder_attention_heads": 16, "vocab_size": 50265, "max_position_embeddings": 1024}
for _names, _cfg in [
    (("bert-base-uncased", "google-bert/bert-base-uncased", "nlpaueb/legal-bert-base-uncased"), _BERT_BASE),
    (("roberta-base", "FacebookAI/roberta-base"), {**_BERT_BASE, "model_type": "roberta", "vocab_size": 50265,
                                                   "max_position_embeddings": 514}),
    (("roberta-large", "FacebookAI/roberta-large"), {"model_type": "roberta", "hidden_size": 1024,
                                                     "num_hidden_layers": 24, "intermediate_size": 4096,
                                                     "num_attention_heads": 16,
                                                     "vocab_size": 50265, "max_position_embeddings": 514}),
    (("microsoft/deberta-v3-base",), {**_BERT_BASE, "model_type": "deberta-v2", "vocab_size": 128100}),
    (("sentence-transformers/all-MiniLM-L6-v2",), {**_BERT_BASE, "hidden_size": 384, "num_hidden_layers": 6,
                                                    "intermediate_size": 1536}),
    (("facebook/bart-base",), {**_BART_LARGE, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
                               "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, "encoder_attention_heads": 12,
                               "decoder_attention_heads": 12}),
    (("facebook/bart-large", "facebook/bart-large-cnn"), _BART_LARGE),
    (("google/flan-t5-base",), {"model_type": "t5", "d_model": 768, "d_kv": 64, "num_heads": 12, "num_layers": 12,
                                "d_ff": 2048, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
                                "tie_word_embeddings": False}),
    (("google/flan-t5-large",), {"model_type": "t5", "d_model": 1024, "d_kv": 64, "num_heads": 16,
                                 "num_layers": 24, "d_ff": 2816, "vocab_size": 32128,
                                 "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),
]:
    for _n in _names:
        KNOWN_MODELS[_n] = _cfg


# Learned position tables that reserve their first entries (RoBERTa's padding offset): usable = table - 2.
_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"})


def position_limit(cfg: Mapping[str, Any]) -> int | None:
    """The longest input a model's position embeddings can index, from its config.json; None when positions are
    relative (T5, DeBERTa without absolute positions) and so impose no limit of their own."""
    kind = str(cfg.get("model_type", ""))
    if "d_kv" in cfg or kind in ("t5", "mt5", "umt5", "longt5"):
        return None
    if kind.startswith("deberta") and not cfg.get("position_biased_input", kind == "deberta"):
        return None
    table = cfg.get("max_position_embeddings")
    if isinstance(table, bool) or not isinstance(table, int) or table <= 0:
        return None
    return table - 2 if kind in _OFFSET_POSITIONS else table


def length_problem(spec: TrainingRunSpec, cfg: Mapping[str, Any], source: str) -> str | None:
    """Why spec.data.maxLength (or maxTargetLength) is longer than the model can take; None when it fits. The
    model would otherwise fail at its first long batch with an index error, after the GPU was taken."""
    limit = position_limit(cfg)
    if limit is None:
        return None
    for field, wanted in (("maxLength", spec.data.max_length),
                          ("maxTargetLength", spec.data.max_target_length if spec.task == "summarization" else 0)):
        if wanted > limit:
            return (f"spec.data.{field}: {wanted} tokens is more than {spec.model.name} can take ({limit} positions, "
                    f"from {source}); use at most {limit}")
    return None


def known_config(model_name: str) -> Mapping[str, Any] | None:
    """The config.json fields of a well-known model (the operator reads no model files)."""
    return KNOWN_MODELS.get(model_name)


def known_shape(model_name: str) -> ModelShape | None:
    cfg = KNOWN_MODELS.get(model_name)
    return ModelShape.from_config(cfg) if cfg is not None else None


# LoRA target names by what they project: (in, out) in units of (width, attention width, ffn).
_FUSED_QKV = {"in_proj", "Wqkv", "qkv", "query_key_value"}
_FFN_UP = {"fc1", "intermediate", "wi", "wi_0", "wi_1", "lin1", "Wi", "up_proj", "gate_proj", "dense_h_to_4h"}
_FFN_DOWN = {"fc2", "wo", "lin2", "down_proj", "dense_4h_to_h"}


def lora_params(shape: ModelShape, targets: list[str] | str, r: int) -> int:
    """Adapter weights: r x (in + out) per targeted projection; decoder layers have two attentions."""
    h, a, f = shape.width, shape.attention_width, shape.ffn
    if targets == "all-linear":
        targets = ["q", "k", "v", "o", "fc1", "fc2"]
    attn = ffn = 0
    for t in targets:
        leaf = t.split(".")[-1]
        if leaf in _FUSED_QKV:
            attn += r * (h + 3 * a)
        elif leaf in _FFN_UP:
            ffn += r * (h + f)
        elif leaf in _FFN_DOWN:
            ffn += r * (f + h)
        elif leaf == "dense":  # BERT's name for the attention output and both feed-forward projections
            attn += r * 2 * h
            ffn += 2 * r * (h + f)
        else:  # query/key/value/out projections under their many names
            attn += r * (h + a)
    return shape.encoder_layers * (attn + ffn) + shape.decoder_layers * (2 * attn + ffn)


@dataclass(frozen=True)
class Estimate:
    """Per-rank bytes by part, at one batch size."""

    batch_size: int
    weights: float
    gradients: float
    optimizer: float
    activations: float  # all samples of the batch
    context: float
    per_sample: float  # activations of one sample (for the largest batch)

    @property
    def allocated(self) -> float:
        """What torch.cuda.max_memory_allocated should show."""
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def total(self) -> float:
        """What the GPU must hold."""
        return self.allocated * FRAGMENTATION + self.context

    def largest_batch(self, capacity: float) -> int:
        fixed = (self.weights + self.gradients + self.optimizer) * FRAGMENTATION + self.context
        return max(0, math.floor((capacity - fixed) / (self.per_sample * FRAGMENTATION)))

    def parts(self) -> dict[str, float]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "context": self.context}


def estimate(spec: TrainingRunSpec, shape: ModelShape, targets: list[str] | str, batch_size: int | None = None,
             on_gpu: bool = True) -> Estimate:
    """Per-rank memory of `spec` on `shape` (targets: the LoRA target modules the trainer will use)."""
    world = max(1, spec.resources.nodes * max(1, spec.resources.gpus_per_node))
    zero = spec.deepspeed.zero_stage if spec.deepspeed.config is None else int(
        spec.deepspeed.config.get("zero_optimization", {}).get("stage", 0))
    deepspeed = zero is not None
    half = on_gpu and spec.training.precision in ("fp16", "bf16")
    trainable = lora_params(shape, targets, spec.lora.r) if spec.lora.enabled else shape.params
    weight_bytes = 2 if deepspeed and half else 4
    weights = float((shape.params + (trainable if spec.lora.enabled else 0)) * weight_bytes)
    if zero == 3:
        weights /= world
    gradients = 4.0 * trainable / (world if (zero or 0) >= 2 else 1)
    states = trainable * (8 + (4 if deepspeed and half else 0))  # AdamW moments (+ DeepSpeed's fp32 master)
    optimizer = 0.0 if spec.deepspeed.offload == "cpu" and deepspeed else states / (world if (zero or 0) >= 1 else 1)
    per_sample = sum(activation_bytes(spec, shape, act_bytes=2 if deepspeed and half else (3 if half else 4)))
    b = batch_size or (spec.training.batch_size if isinstance(spec.training.batch_size, int) else 1)
    return Estimate(b, weights, gradients, optimizer, per_sample * b, CONTEXT_BYTES if on_gpu else 0.0, per_sample)


def activation_bytes(spec: TrainingRunSpec, shape: ModelShape, act_bytes: float) -> tuple[float, float]:
    """(kept through the forward pass, recomputed at the backward pass's peak) per sample. With gradient
    checkpointing each layer keeps its input, and one layer at a time recomputes its activations."""
    h, s = shape.width, spec.data.max_length
    t = spec.data.max_target_length if shape.decoder_layers else 0
    enc_layer = ACT_ENCODER * s * h
    dec_layer = (ACT_DECODER * t + ACT_CROSS * s) * h
    logits = LOGIT_BYTES * t * shape.vocab if shape.decoder_layers else 0
    if spec.training.gradient_checkpointing:
        kept = ACT_CHECKPOINTED * h * (s * shape.encoder_layers + t * shape.decoder_layers)
        return kept * act_bytes + logits, max(enc_layer, dec_layer if shape.decoder_layers else 0) * act_bytes
    return (enc_layer * shape.encoder_layers + dec_layer * shape.decoder_layers) * act_bytes + logits, 0.0


@dataclass(frozen=True)
class Fit:
    gpu: str
    capacity: float
    estimate: Estimate
    largest_batch: int

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.capacity

    def message(self) -> str:
        e = self.estimate
        verdict = "fits" if self.fits else "does not fit"
        advice = (f"; the largest batch that fits is {self.largest_batch}" if self.largest_batch else
                  "; not even a batch of 1 fits: use gradient checkpointing, a higher ZeRO stage, offload or a "
                  "shorter data.maxLength")
        return (f"batch {e.batch_size} {verdict} on {self.gpu}: about {e.total / GIB:.1f} GiB per GPU of "
                f"{self.capacity / GIB:.1f} GiB (weights {e.weights / GIB:.1f}, activations "
                f"{e.activations / GIB:.1f}){advice}")


def fit(spec: TrainingRunSpec, shape: ModelShape, targets: list[str] | str, gpu: str, capacity: float,
        batch_size: int | None = None) -> Fit:
    e = estimate(spec, shape, targets, batch_size)
    return Fit(gpu, capacity, e, e.largest_batch(capacity))


def price_per_gpu_hour(prices: Mapping[str, float], product: str | None) -> float | None:
    """The price of an hour of `product` (a node label's value or our name), from a table keyed by either; None
    when the table has no price for it."""
    if not product or not prices:
        return None
    if product in prices:
        return prices[product]
    known = gpu_memory(product)
    if known is None:
        return None
    for key, price in prices.items():  # the same GPU under another of its names
        if (named := gpu_memory(key)) is not None and named[0] == known[0]:
            return price
    return None


def gpu_of(spec: TrainingRunSpec, default: str | None = None) -> str | None:
    """The GPU product a run will get: its `nvidia.com/gpu.product` node selector, else the operator's default."""
    return (spec.resources.node_selector or {}).get("nvidia.com/gpu.product") or default
