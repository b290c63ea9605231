"""The GPU-memory estimate (`legistra.memory`): its constants against what autograd really keeps, its arithmetic,
and its three users: `legistra plan`, the operator's refusal and `legistra validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.objects import run_spec
from legistra.memory import (
    GIB,
    KNOWN_MODELS,
    ModelShape,
    activation_bytes,
    estimate,
    fit,
    gpu_memory,
    gpu_of,
    known_shape,
    lora_params,
)
from legistra.operator.build import memory_refusal
from legistra.operator.config import JobDefaults
from tests.conftest import EXAMPLES, legistra

torch = pytest.importorskip("torch")


spec = run_spec


def saved_bytes_per_sample(model: Any, batch: dict[str, Any]) -> float:
    """Bytes autograd keeps for the backward pass (weights excluded), per sample, as saved-tensor hooks see them."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    return sum(kept.values()) / batch["input_ids"].shape[0]


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("kind", ["bert", "bart"])
def test_activation_constants_match_what_autograd_keeps(kind: str, checkpointing: bool) -> None:
    """fp32 on CPU, SDPA attention without attention dropout (the fused GPU kernels keep no score matrix either),
    LoRA as the trainer applies it: the estimate's activations within 20% of the bytes really kept."""
    from transformers import BartConfig, BartForConditionalGeneration, BertConfig, BertForSequenceClassification

    from legistra.trainer.modeling import apply_lora, enable_gradient_checkpointing

    torch.manual_seed(0)
    h, layers, s, t, b, vocab = 384, 2, 192, 48, 2, 1000
    common = {"attn_implementation": "sdpa", "vocab_size": vocab}
    if kind == "bert":
        model: Any = BertForSequenceClassification(BertConfig(
            hidden_size=h, num_hidden_layers=layers, num_attention_heads=6, intermediate_size=4 * h, num_labels=3,
            attention_probs_dropout_prob=0.0, **common))
        task, labels = "risk-classification", torch.randint(0, 3, (b,))
    else:
        model = BartForConditionalGeneration(BartConfig(
            d_model=h, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=6,
            decoder_attention_heads=6, encoder_ffn_dim=4 * h, decoder_ffn_dim=4 * h, attention_dropout=0.0, **common))
        task, labels = "summarization", torch.randint(5, vocab, (b, t))
    run = spec(task, data={"maxLength": s, "maxTargetLength": t},
               training={"gradientCheckpointing": checkpointing, "precision": "fp32"})
    model = apply_lora(model, run.task, run.lora)
    if checkpointing:
        enable_gradient_checkpointing(model)
    batch = {"input_ids": torch.randint(5, vocab, (b, s)), "attention_mask": torch.ones(b, s, dtype=torch.long),
             "labels": labels}
    measured = saved_bytes_per_sample(model, batch)
    shape = ModelShape.from_config(model.config.to_dict())
    # Hooks see what the forward pass keeps; a checkpointed layer's recomputation happens inside the backward.
    predicted, recomputed = activation_bytes(run, shape, act_bytes=4)
    assert (recomputed > 0) == checkpointing
    assert estimate(run, shape, ["q"], on_gpu=False).per_sample == predicted + recomputed
    assert abs(predicted / measured - 1) < 0.20, (predicted / 2**20, measured / 2**20)


@pytest.mark.parametrize("name", ["bert-base-uncased", "roberta-large", "microsoft/deberta-v3-base",
                                  "facebook/bart-large", "sentence-transformers/all-MiniLM-L6-v2"])
def test_parameter_counts_from_config_match_the_real_models(name: str) -> None:
    """Built on the meta device from the same config fields: no memory, no download. (FLAN-T5's count, 248M for
    the base model with its untied LM head, is the published one: the meta build here ties the head.)"""
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

    cfg = dict(KNOWN_MODELS[name])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = (AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModel).from_config(config)
    real = sum(p.numel() for p in model.parameters())
    assert abs(known_shape(name).params / real - 1) < 0.03  # type: ignore[union-attr]


@pytest.mark.parametrize(("targets", "kind"), [(None, "bert"), (None, "bart"), (["query", "value", "dense"], "bert"),
                                               (["q", "v"], "t5"), (["fc1", "fc2", "q_proj"], "bart")])
def test_lora_parameter_count_matches_peft(targets: Any, kind: str) -> None:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForTokenClassification

    from legistra.trainer.modeling import apply_lora, lora_targets

    small = {"bert": {"model_type": "bert", "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 512,
                      "vocab_size": 100, "num_attention_heads": 2},
             "bart": {"model_type": "bart", "d_model": 128, "encoder_layers": 2, "decoder_layers": 3,
                      "encoder_ffn_dim": 512, "decoder_ffn_dim": 512, "vocab_size": 100},
             "t5": {"model_type": "t5", "d_model": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "d_ff": 256,
                    "vocab_size": 100}}[kind]
    cfg = dict(small)
    auto = AutoModelForTokenClassification if kind == "bert" else AutoModelForSeq2SeqLM
    model = auto.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    run = spec(lora={"targetModules": targets} if targets else {})
    shape = ModelShape.from_config(small)
    chosen = lora_targets(shape.model_type, run.lora)
    peft_model = apply_lora(model, "summarization" if kind != "bert" else "clause-extraction", run.lora)
    trainable = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert lora_params(shape, chosen, run.lora.r) == trainable


def test_gpu_names_as_node_labels_spell_them() -> None:
    assert gpu_memory("NVIDIA-H100-80GB-HBM3") == ("H100-80GB", 79.6 * GIB)
    assert gpu_memory("NVIDIA-A100-SXM4-80GB")[0] == "A100-80GB"  # type: ignore[index]
    assert gpu_memory("NVIDIA-A100-SXM4-40GB")[0] == "A100-40GB"  # type: ignore[index]
    assert gpu_memory("A100")[0] == "A100-40GB"  # type: ignore[index]  # a bare chip: its smallest size
    assert gpu_memory("NVIDIA-H200")[0] == "H200"  # type: ignore[index]
    assert gpu_memory("Tesla-T4")[0] == "T4"  # type: ignore[index]
    assert gpu_memory("NVIDIA-L40S")[0] == "L40S"  # type: ignore[index]
    assert gpu_memory("NVIDIA-L4")[0] == "L4"  # type: ignore[index]
    assert gpu_memory("Radeon-MI300X") is None
    run = spec(resources={"nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"}})
    assert gpu_of(run, "NVIDIA-H200") == "Tesla-T4" and gpu_of(spec(), "NVIDIA-H200") == "NVIDIA-H200"


def test_the_largest_batch_is_the_edge_of_fitting() -> None:
    run = spec("summarization", "facebook/bart-large", data={"maxLength": 1024, "maxTargetLength": 128},
               deepspeed={"zeroStage": 2})
    shape = known_shape("facebook/bart-large")
    assert shape is not None
    verdict = fit(run, shape, ["q_proj", "v_proj"], "T4", 15.0 * GIB)
    edge = verdict.largest_batch
    assert edge >= 1
    assert fit(run, shape, ["q_proj", "v_proj"], "T4", 15.0 * GIB, batch_size=edge).fits
    assert not fit(run, shape, ["q_proj", "v_proj"], "T4", 15.0 * GIB, batch_size=edge + 1).fits
    # Gradient checkpointing keeps one layer's activations: a far larger batch fits.
    saved = spec("summarization", "facebook/bart-large", data={"maxLength": 1024, "maxTargetLength": 128},
                 deepspeed={"zeroStage": 2}, training={"gradientCheckpointing": True})
    assert fit(saved, shape, ["q_proj", "v_proj"], "T4", 15.0 * GIB).largest_batch > 4 * edge


def test_zero_stages_and_offload_divide_what_they_should() -> None:
    """Full fine-tuning of BERT-base on 8 GPUs: ZeRO-1 splits the optimizer, ZeRO-2 the gradients too, ZeRO-3 the
    weights too; offload takes the optimizer off the GPU."""
    shape = known_shape("bert-base-uncased")
    assert shape is not None
    parts = {}
    for stage in (0, 1, 2, 3):
        run = spec(lora={"enabled": False}, deepspeed={"zeroStage": stage}, resources={"nodes": 2, "gpusPerNode": 4})
        parts[stage] = estimate(run, shape, [])
    p = shape.params
    assert parts[0].weights == 2 * p and parts[0].gradients == 4 * p and parts[0].optimizer == 12 * p
    assert parts[1].optimizer == 12 * p / 8 and parts[1].gradients == 4 * p
    assert parts[2].gradients == 4 * p / 8 and parts[2].weights == 2 * p
    assert parts[3].weights == 2 * p / 8
    offload = spec(lora={"enabled": False}, deepspeed={"zeroStage": 2, "offload": "cpu"})
    assert estimate(offload, shape, []).optimizer == 0
    # Without DeepSpeed the Trainer keeps fp32 weights and no master copy.
    plain = estimate(spec(lora={"enabled": False}), shape, [])
    assert plain.weights == 4 * p and plain.optimizer == 8 * p


def test_operator_refuses_a_run_that_cannot_fit_its_gpu_and_names_the_batch_that_would() -> None:
    from legistra.api.spec import TrainingRun

    def run(**sections: Any) -> TrainingRun:
        return TrainingRun.model_validate({"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun",
                                           "metadata": {"name": "big"},
                                           "spec": spec("summarization", "facebook/bart-large", **sections
                                                        ).model_dump(by_alias=True, exclude_none=True)})

    big = {"data": {"maxLength": 1024, "maxTargetLength": 256}, "training": {"batchSize": 64}}
    on_t4 = JobDefaults(gpu_product="Tesla-T4")
    message = memory_refusal(run(**big), on_t4)
    assert message is not None and message.startswith("spec.training.batchSize: batch 64 does not fit on T4")
    edge = fit(run(**big).spec, known_shape("facebook/bart-large"), ["q_proj", "k_proj", "v_proj", "out_proj"],  # type: ignore[arg-type]
               "T4", 15.0 * GIB).largest_batch
    assert f"the largest batch that fits is {edge}" in message
    assert memory_refusal(run(**big), JobDefaults(gpu_product="NVIDIA-H200")) is None  # fits there
    assert memory_refusal(run(**big), JobDefaults()) is None  # GPU unknown: nothing to say
    # The run's own node selector wins over the operator's default.
    pinned = run(**big, resources={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"}})
    assert memory_refusal(pinned, on_t4) is None
    other = TrainingRun.model_validate({**run(**big).model_dump(by_alias=True, exclude_none=True),
                                        "spec": {**run(**big).model_dump(by_alias=True, exclude_none=True)["spec"],
                                                 "model": {"name": "acme/unknown-model"}}})
    assert memory_refusal(other, on_t4) is None  # shape unknown to the operator: not refused


def test_plan_command_prints_the_parts_and_exits_3_when_it_does_not_fit(tmp_path: Path) -> None:
    ok = legistra("plan", str(EXAMPLES / "summarization.yaml"), "--gpu", "H100-80GB", "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["gpus"][0]["gpu"] == "H100-80GB" and doc["gpus"][0]["fits"]
    assert set(doc["perRankGiB"]) == {"weights", "gradients", "optimizer", "activations", "context"}
    table = legistra("plan", str(EXAMPLES / "summarization.yaml"))
    assert table.returncode == 0 and "H200" in table.stdout and "T4" in table.stdout
    text = (EXAMPLES / "summarization.yaml").read_text().replace("batchSize: 8", "batchSize: 4000")
    text = text.replace("gradientCheckpointing: true", "gradientCheckpointing: false")
    (tmp_path / "big.yaml").write_text(text)
    bad = legistra("plan", str(tmp_path / "big.yaml"), "--gpu", "NVIDIA-L4")
    assert bad.returncode == 3
    assert "batch 4000 does not fit on L4" in bad.stdout and "the largest batch that fits is" in bad.stdout
    unknown = legistra("plan", str(tmp_path / "big.yaml"), "--gpu", "MI300X")
    assert unknown.returncode == 1 and "--gpu MI300X: unknown GPU" in unknown.stderr
    # The same verdict from `legistra validate` with the operator's GPU setting.
    refused = legistra("validate", str(tmp_path / "big.yaml"), env={"LEGISTRA_GPU_PRODUCT": "NVIDIA-L4"})
    assert refused.returncode == 1 and "error: spec.training.batchSize: batch 4000 does not fit on L4" in refused.stdout


def test_gpu_prices_by_our_names_or_the_node_labels() -> None:
    from legistra.memory import price_per_gpu_hour

    assert price_per_gpu_hour({"H100-80GB": 4.0}, "NVIDIA-H100-80GB-HBM3") == 4.0
    assert price_per_gpu_hour({"NVIDIA-H100-80GB-HBM3": 4.5}, "H100-80GB") == 4.5
    assert price_per_gpu_hour({"Tesla-T4": 0.35}, "Tesla-T4") == 0.35
    assert price_per_gpu_hour({"T4": 0.35}, "NVIDIA-A100-SXM4-80GB") is None
    assert price_per_gpu_hour({"T4": 0.35}, None) is None and price_per_gpu_hour({}, "T4") is None


def test_plan_prices_an_hour_of_the_run_and_validate_warns_about_queued_pytorchjobs(tmp_path: Path) -> None:
    """Priced as the operator would price it (LEGISTRA_GPU_PRICES): nodes x gpusPerNode GPUs at the GPU's price."""
    text = (EXAMPLES / "summarization.yaml").read_text()
    doc = json.loads(legistra("plan", str(EXAMPLES / "summarization.yaml"), "--json",
                              env={"LEGISTRA_GPU_PRICES": '{"NVIDIA-H100-80GB-HBM3": 4.0, "T4": 0.5}'}).stdout)
    gpus = yaml.safe_load(text)["spec"]["resources"]
    count = gpus.get("nodes", 1) * gpus.get("gpusPerNode", 1)
    prices = {g["gpu"]: g.get("costPerHour") for g in doc["gpus"]}
    assert prices["H100-80GB"] == 4.0 * count and prices["T4"] == 0.5 * count and prices["A10G"] is None
    table = legistra("plan", str(EXAMPLES / "summarization.yaml"), env={"LEGISTRA_GPU_PRICES": '{"T4": 0.5}'})
    assert f"cost/hour ({count} GPUs)" in table.stdout
    bad = legistra("plan", str(EXAMPLES / "summarization.yaml"), env={"LEGISTRA_GPU_PRICES": "{"})
    assert bad.returncode == 1 and "LEGISTRA_GPU_PRICES" in bad.stderr
    queued = yaml.safe_load(text)
    queued["spec"]["resources"] = {**gpus, "queueName": "team-a", "backend": "pytorchjob"}
    (tmp_path / "queued.yaml").write_text(yaml.safe_dump(queued))
    said = legistra("validate", str(tmp_path / "queued.yaml"))
    assert said.returncode == 0 and "warning: queued in Kueue's team-a as a PyTorchJob" in said.stdout
    queued["spec"]["resources"]["backend"] = "trainjob"
    (tmp_path / "queued.yaml").write_text(yaml.safe_dump(queued))
    assert "Kueue" not in legistra("validate", str(tmp_path / "queued.yaml")).stdout


def test_plan_takes_prices_on_its_command_line_over_the_operators() -> None:
    """`--price GPU=PRICE`: for a laptop without the operator's LEGISTRA_GPU_PRICES, and over it where both say."""
    from legistra.cli.main import price_flags

    assert price_flags(["H100-80GB=2.49", "T4=0", "NVIDIA-A10G=1e0"]) == {"H100-80GB": 2.49, "T4": 0.0,
                                                                         "NVIDIA-A10G": 1.0}
    for bad, said in (("H100", "expected GPU=PRICE"), ("=3", "expected GPU=PRICE"), ("T4=cheap", "expected GPU=PRICE"),
                      ("T4=nan", "expected GPU=PRICE"), ("T4=-1", "'T4': a price per GPU-hour is a number from 0 up"),
                      ("T4=inf", "a number from 0 up")):
        with pytest.raises(ValueError, match=said):
            price_flags([bad])
    file = str(EXAMPLES / "summarization.yaml")
    doc = json.loads(legistra("plan", file, "--json", "--price", "T4=0.25", "--price", "NVIDIA-H100-80GB-HBM3=3",
                              env={"LEGISTRA_GPU_PRICES": '{"T4": 0.5, "L4": 0.8}'}).stdout)
    count = doc["gpuCount"]
    prices = {g["gpu"]: g.get("costPerHour") for g in doc["gpus"]}
    assert prices["T4"] == 0.25 * count and prices["L4"] == 0.8 * count and prices["H100-80GB"] == 3 * count
    bad = legistra("plan", file, "--price", "T4=-2")
    assert bad.returncode == 1 and "error: 'T4': a price per GPU-hour is a number from 0 up" in bad.stderr


def test_plan_reads_a_local_models_config(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    text = (EXAMPLES / "risk-classification.yaml").read_text()
    doc = text.replace("sentence-transformers/all-MiniLM-L6-v2", str(tiny_models["bert"]))
    (tmp_path / "run.yaml").write_text(doc)
    got = legistra("plan", str(tmp_path / "run.yaml"), "--gpu", "T4", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["config"] == str(tiny_models["bert"] / "config.json")
    (tmp_path / "none.yaml").write_text(text.replace("sentence-transformers/all-MiniLM-L6-v2", "acme/nothing"))
    missing = legistra("plan", str(tmp_path / "none.yaml"))
    assert missing.returncode == 1 and "spec.model.name: no config.json for 'acme/nothing'" in missing.stderr


def test_auto_batch_backs_off_by_a_fifth_until_a_step_runs() -> None:
    from legistra.trainer.batchsize import largest_that_runs

    tried: list[int] = []

    def runs_up_to(limit: int) -> Any:
        def runs(b: int) -> bool:
            tried.append(b)
            return b <= limit
        return runs

    assert largest_that_runs(100, runs_up_to(37)) == 32 and tried == [100, 80, 64, 51, 40, 32]
    assert largest_that_runs(5, runs_up_to(5)) == 5
    tried.clear()
    assert largest_that_runs(3, runs_up_to(0)) == 0 and tried == [3, 2, 1]  # always ends, at 1 at the latest


def test_auto_batch_is_a_spec_value_and_eight_on_a_cpu() -> None:
    from legistra.api.validation import SpecError, parse_training_run
    from legistra.trainer.batchsize import resolve_batch_size

    auto = spec(training={"batchSize": "auto"})
    assert auto.training.batch_size == "auto"
    assert resolve_batch_size(auto, model=None, targets=[], labels=3, precision="fp32", cuda=False) == 8
    assert resolve_batch_size(spec(training={"batchSize": 12}), None, [], 3, "fp32", cuda=False) == 12
    for value, problem in (("big", "must be a whole number or one of 'auto' (got 'big')"),
                           (0, "must be >= 1 (got 0)"), (2.5, "must be a whole number or one of 'auto' (got 2.5)")):
        doc = {"apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "x"},
               "spec": {**spec().model_dump(by_alias=True, exclude_none=True), "training": {"batchSize": value}}}
        with pytest.raises(SpecError) as err:
            parse_training_run(doc)
        assert err.value.problems == [f"spec.training.batchSize: {problem}"]  # one line per field, not per type
    # The operator and `legistra plan` judge 'auto' by whether a batch of one fits.
    assert estimate(auto, known_shape("bert-base-uncased"), ["query"]).batch_size == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(("cfg", "limit"), [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 514}, 512),  # two entries reserved (padding offset)
    ({"model_type": "xlm-roberta", "max_position_embeddings": 514}, 512),
    ({"model_type": "bart", "d_model": 768, "max_position_embeddings": 1024}, 1024),
    ({"model_type": "t5", "d_kv": 64}, None),  # relative positions
    ({"model_type": "deberta-v2", "max_position_embeddings": 512, "position_biased_input": False}, None),
    ({"model_type": "deberta", "max_position_embeddings": 512}, 512),
    ({"model_type": "bert"}, None),
    ({"model_type": "bert", "max_position_embeddings": True}, None),
])
def test_position_limit_per_architecture(cfg: dict[str, object], limit: int | None) -> None:
    from legistra.memory import position_limit

    assert position_limit(cfg) == limit


def test_the_operator_refuses_a_max_length_a_well_known_model_cannot_take() -> None:
    from legistra.api.validation import parse_training_run
    from legistra.operator.build import length_refusal

    def run(**data: object) -> object:
        return parse_training_run({
            "apiVersion": "legistra.io/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "r"},
            "spec": {"task": "summarization", "model": {"name": "facebook/bart-large-cnn"},
                     "data": {"train": "s3://b/t.jsonl", **data}, "registry": {"modelName": "m"}}})

    assert length_refusal(run(maxLength=1024)) is None  # type: ignore[arg-type]
    assert length_refusal(run(maxLength=4096)) == (  # type: ignore[arg-type]
        "spec.data.maxLength: 4096 tokens is more than facebook/bart-large-cnn can take (1024 positions, from "
        "legistra's list of well-known models); use at most 1024")
    assert "spec.data.maxTargetLength: 2048" in str(length_refusal(run(maxTargetLength=2048)))  # type: ignore[arg-type]
