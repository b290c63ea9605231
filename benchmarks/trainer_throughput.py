"""Trainer throughput: the seed guide's baseline against our trainer, side by side, same machine, same data.

(a) baseline: Hugging Face Trainer + PEFT LoRA, fp16 (fp32 on a CPU), batch 8, every sequence padded to
    the maximum length, default everything else — what a user writes from the seed guide.
(b) ours: the arguments and collators our trainer uses (`build_training_args`, the task handlers):
    length-grouped batches with dynamic padding, bf16 where the GPU has it, fused AdamW, data-loader
    workers, SDPA attention; on a GPU also (b') the same with `training.compile` on.

Each configuration runs in its own process (clean peak-memory numbers). On a GPU the workloads are a
BART-large-sized summarizer (1024 input / 128 target tokens) and a BERT-base-sized classifier (512 tokens)
with random weights from their configs (same FLOPs as the pretrained ones); on a CPU, tiny versions of
the same, and only the ratio between (a) and (b) means anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS = {"gpu": 60, "cpu": 60}
WARMUP = {"gpu": 10, "cpu": 6}
# Short CPU runs are noisy (2.0x and 2.6x for the same code, minutes apart): interleave repeats, keep medians.
REPEATS = {"gpu": 1, "cpu": 3}


def lengths(n: int, max_len: int, median: float, seed: int) -> list[int]:
    """Long-tailed (log-normal) lengths, as legal clauses and bills are: many short, a few very long."""
    import numpy as np

    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=math.log(median), sigma=0.8, size=n)
    return [int(min(max_len, max(8, x))) for x in raw]


def workload(name: str, device: str) -> dict[str, Any]:
    big = device == "gpu"
    if name == "summarization":
        return {"task": "summarization", "kind": "bart", "max_len": 1024 if big else 256,
                "target_len": 128 if big else 32, "median": 420 if big else 100, "target_median": 60 if big else 16,
                "vocab": 50265 if big else 1000}
    return {"task": "risk-classification", "kind": "bert", "max_len": 512 if big else 128,
            "median": 128 if big else 40, "vocab": 30522 if big else 1000, "num_labels": 3}


def build_model(w: dict[str, Any], big: bool) -> Any:
    from transformers import BartConfig, BartForConditionalGeneration, BertConfig, BertForSequenceClassification

    if w["kind"] == "bart":
        bart: dict[str, Any] = (
            {"d_model": 1024, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
             "decoder_attention_heads": 16, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096}  # BART-large
            if big else
            {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256})
        bart.update(vocab_size=w["vocab"], max_position_embeddings=max(1024, w["max_len"]))
        return BartForConditionalGeneration(BartConfig(**bart))
    bert: dict[str, Any] = {} if big else {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                           "intermediate_size": 256}  # defaults are BERT-base
    bert.update(vocab_size=w["vocab"], num_labels=w["num_labels"], max_position_embeddings=512)
    return BertForSequenceClassification(BertConfig(**bert))


def make_rows(w: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    src = lengths(n, w["max_len"], w["median"], seed)
    rows = []
    for i, length in enumerate(src):
        ids = [0, *rng.integers(5, w["vocab"], size=length - 2).tolist(), 2]
        row: dict[str, Any] = {"input_ids": ids}
        if w["kind"] == "bart":
            tl = lengths(1, w["target_len"], w["target_median"], seed + i + 1)[0]
            row["labels"] = [0, *rng.integers(5, w["vocab"], size=tl - 2).tolist(), 2]
        else:
            row["labels"] = int(rng.integers(0, w["num_labels"]))
        rows.append(row)
    return rows


def pad_to_max(rows: list[dict[str, Any]], w: dict[str, Any], pad: int) -> Any:
    """The baseline's tokenization: padding='max_length' for inputs and targets."""
    import datasets

    out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for r in rows:
        ids = r["input_ids"]
        out["input_ids"].append(ids + [pad] * (w["max_len"] - len(ids)))
        out["attention_mask"].append([1] * len(ids) + [0] * (w["max_len"] - len(ids)))
        if w["kind"] == "bart":
            lab = r["labels"]
            out["labels"].append(lab + [-100] * (w["target_len"] - len(lab)))
        else:
            out["labels"].append(r["labels"])
    return datasets.Dataset.from_dict(out)


def dynamic(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_dict({
        "input_ids": [r["input_ids"] for r in rows],
        "attention_mask": [[1] * len(r["input_ids"]) for r in rows],
        "labels": [r["labels"] for r in rows],
        "length": [len(r["input_ids"]) for r in rows],
    })


class Tokenizer:
    """The collators need only padding behaviour; this avoids shipping a real tokenizer to the benchmark."""

    def __init__(self, pad: int) -> None:
        from tokenizers import Tokenizer as Raw
        from tokenizers import models
        from transformers import PreTrainedTokenizerFast

        raw = Raw(models.WordLevel({"<pad>": pad, "<unk>": 3}, unk_token="<unk>"))
        self.tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>")


def run_one(workload_name: str, config: str, device: str, out: Path, profile: int = 0) -> dict[str, Any]:
    """One configuration in this process; `profile` > 0: also record that many steps after the warm-up with
    torch.profiler (`step_profile.py`: the op table and where the device time went, next to `out`)."""
    import torch
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from legistra.api.spec import TrainingRunSpec
    from legistra.trainer.modeling import apply_lora
    from legistra.trainer.runtime import DistInfo
    from legistra.trainer.tasks import handler_for
    from legistra.trainer.train import ResolvedTraining, RunPaths, build_training_args, effective_precision

    set_seed(0)
    big = device == "gpu"
    cuda = torch.cuda.is_available()
    w = workload(workload_name, device)
    steps = int(os.environ.get("LEGISTRA_BENCH_STEPS", STEPS[device]))
    warm = min(WARMUP[device], steps // 3)
    if profile:
        steps = min(steps, warm + profile + 1)  # a profile needs no long run; the timings are not its point
    n_train = 8 * steps + 64
    train_rows, eval_rows = make_rows(w, n_train, seed=1), make_rows(w, 64, seed=2)
    model = build_model(w, big)
    pad = 1 if w["kind"] == "bart" else 0
    tok = Tokenizer(pad).tok
    spec = TrainingRunSpec.model_validate({
        "task": w["task"], "model": {"name": "synthetic"},
        "data": {"train": "synthetic", "maxLength": w["max_len"], "maxTargetLength": w.get("target_len", 128)},
        "training": {"batchSize": "auto" if config == "ours-auto" else 8, "maxSteps": steps, "learningRate": 2e-4,
                     "precision": "bf16" if big else "fp16",
                     "evaluation": "no", "dataloaderWorkers": 2 if big else 0, "loggingSteps": 1000,
                     "saveSteps": 100000, "compile": config == "ours-compile"},
        "lora": {"r": 16, "alpha": 32}, "registry": {"modelName": "bench"},
    })
    handler = handler_for(spec)
    handler.labels = ["a", "b", "c"]
    model = apply_lora(model, spec.task, spec.lora)
    tmp = out.parent / f"tmp-{workload_name}-{config}"
    batch = 8
    if config == "ours-auto":
        batch, steps, warm, spec = _auto_batch(spec, model, steps, warm, cuda)
        train_rows = make_rows(w, max(n_train, batch * steps + 64), seed=1)

    if config == "baseline":
        precision = "fp16" if cuda else "fp32"
        args_cls = Seq2SeqTrainingArguments if w["kind"] == "bart" else TrainingArguments
        args = args_cls(output_dir=str(tmp), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                        max_steps=steps, learning_rate=2e-4, fp16=cuda, report_to="none", save_strategy="no",
                        logging_steps=1000, use_cpu=not cuda, disable_tqdm=True,
                        include_num_input_tokens_seen="non_padding")
        train_ds, eval_ds = pad_to_max(train_rows, w, pad), pad_to_max(eval_rows, w, pad)
        collator: Any = default_data_collator
    else:
        precision = effective_precision(spec, cuda, cuda and torch.cuda.is_bf16_supported())
        paths = RunPaths(root=tmp, cache=tmp / "cache")
        args = build_training_args(spec, handler, paths, DistInfo(0, 1, 0), ResolvedTraining(precision, batch, cuda))
        args.save_strategy = "no"
        args.disable_tqdm = True
        args.predict_with_generate = False
        train_ds, eval_ds = dynamic(train_rows), dynamic(eval_rows)
        collator = handler.collator(tok, model)  # the trainer's own, not a copy

    times: list[float] = []

    class Clock(TrainerCallback):
        tokens_at_warm = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == warm:
                self.tokens_at_warm = state.num_input_tokens_seen

    clock = Clock()
    callbacks: list[Any] = [clock]
    if profile:
        from benchmarks.step_profile import profiler_callback

        callbacks.append(profiler_callback(out.with_suffix(""), warm, profile, cuda))
    trainer_cls = Seq2SeqTrainer if w["kind"] == "bart" else Trainer
    trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                          data_collator=collator, callbacks=callbacks)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    end = time.perf_counter()
    measured = end - times[warm]
    state = trainer.state
    tokens = state.num_input_tokens_seen - clock.tokens_at_warm
    samples = (steps - warm) * batch
    eval_loss = float(trainer.evaluate()["eval_loss"])
    result: dict[str, Any] = {
        "workload": workload_name, "config": config, "device": device, "steps_measured": steps - warm,
        "seconds": measured, "tokens_per_second": tokens / measured, "samples_per_second": samples / measured,
        "non_padding_tokens": int(tokens), "eval_loss": eval_loss,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_rss_gb": _rss_gb(),
        "precision": precision,
        "batch_size": batch,
        "samples_trained": steps * batch,  # eval loss compares only between rows that trained on as many
        "profiled_steps": profile,  # > 0: the profiler's overhead is in these timings; not a benchmark figure
    }
    result.update(_mfu(trainer.model, w, train_rows, tokens / measured, cuda))
    result.update(_memory_estimate(spec, model, result["peak_gpu_memory_gb"]))
    out.write_text(json.dumps(result, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _auto_batch(spec: Any, model: Any, steps: int, warm: int, cuda: bool) -> tuple[int, int, int, Any]:
    """ours-auto: the batch `training.batchSize: auto` finds on this GPU (8 on a CPU), and about as many samples
    as the batch-8 rows train on, but at least 5 measured steps: at a large batch it trains on more, so its eval
    loss does not compare and the ratio table leaves it out (`samples_trained`); its tokens/s and MFU count."""
    from legistra.trainer.batchsize import resolve_batch_size
    from legistra.trainer.modeling import lora_targets

    precision = "bf16" if cuda else "fp32"
    batch = resolve_batch_size(spec, model, lora_targets(model.config.model_type, spec.lora), 3, precision, cuda)
    warm_b = max(1, round(8 * warm / batch))
    steps_b = max(warm_b + 5, round(8 * steps / batch))
    training = spec.training.model_copy(update={"max_steps": steps_b})
    return batch, steps_b, warm_b, spec.model_copy(update={"training": training})


def _memory_estimate(spec: Any, model: Any, measured_gb: float | None) -> dict[str, Any]:
    """`legistra plan`'s estimate for this configuration (what max_memory_allocated should read), and its error."""
    from legistra.memory import ModelShape, estimate
    from legistra.trainer.modeling import lora_targets

    shape = ModelShape.from_config(model.config.to_dict())
    est = estimate(spec, shape, lora_targets(shape.model_type, spec.lora)).allocated / 2**30
    return {"estimated_gpu_memory_gb": est,
            "memory_estimate_error": est / measured_gb - 1 if measured_gb else None}


def _rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _mfu(model: Any, w: dict[str, Any], rows: list[dict[str, Any]], tok_per_s: float, cuda: bool) -> dict[str, Any]:
    """Model FLOPs per second from the LoRA formula in flops.py, and MFU on a known GPU."""
    import torch

    from benchmarks.flops import StackFlops, peak_for, token_flops, utilisation

    def count(prefix: str) -> tuple[int, int]:
        frozen = lora = 0
        for name, p in model.named_parameters():
            if prefix not in name or "embed" in name or "position" in name:
                continue
            if "lora_" in name:
                lora += p.numel()
            elif p.dim() >= 2:
                frozen += p.numel()
        return frozen, lora

    cfg = model.config
    src = [len(r["input_ids"]) for r in rows]
    if w["kind"] == "bart":
        tgt = [len(r["labels"]) for r in rows]
        ef, el = count("encoder.")
        df, dl = count("decoder.")
        df += cfg.vocab_size * cfg.d_model  # the (tied) LM head is a matmul per decoder token
        enc = StackFlops(ef, el, cfg.encoder_layers, cfg.d_model)
        dec = StackFlops(df, dl, cfg.decoder_layers, cfg.d_model)
        mean_src = sum(s * s for s in src) / sum(src)  # a token attends over its own sequence's length
        mean_tgt = sum(t * t for t in tgt) / sum(tgt)
        e_model, _ = token_flops(enc, mean_src)
        d_model_f, _ = token_flops(dec, mean_tgt + mean_src * 0.5)  # self + cross attention (cross ~ src/2 share)
        share_src = sum(src) / (sum(src) + sum(tgt))
        per_token = share_src * e_model + (1 - share_src) * d_model_f
    else:
        f, lo = count("encoder.")
        f += sum(p.numel() for n, p in model.named_parameters() if "classifier" in n and p.dim() >= 2)
        stack = StackFlops(f, lo, cfg.num_hidden_layers, cfg.hidden_size)
        per_token, _ = token_flops(stack, sum(s * s for s in src) / sum(src))
    achieved = per_token * tok_per_s
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_for(device_name) if cuda else None
    return {"model_flops_per_token": per_token, "model_tflops": achieved / 1e12, "device_name": device_name,
            "mfu": utilisation(achieved, peak)}


def configs(device: str) -> tuple[str, ...]:
    """torch.compile only where it can pay off: on a CPU its compile time would swamp a short run.
    LEGISTRA_BENCH_CONFIGS (comma-separated) picks some of them, in that order (a second GPU call reruns only
    what failed; benchmarks/gpu/NOTES.md)."""
    default = ("baseline", "ours", "ours-compile") if device == "gpu" else ("baseline", "ours")
    known = (*default, "ours-auto")  # ours with batchSize auto: only when named (benchmarks/gpu/NOTES.md)
    picked = [c for c in os.environ.get("LEGISTRA_BENCH_CONFIGS", "").split(",") if c]
    unknown = [c for c in picked if c not in known]
    if unknown:
        raise SystemExit(f"LEGISTRA_BENCH_CONFIGS: {', '.join(unknown)} not among {', '.join(known)} on a {device}")
    return tuple(picked) or default


def run(device: str, out_dir: Path, workloads: list[str],
        on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """One row per workload and configuration: the repeat with the median tokens/s, with every repeat's figure.
    `on_row` gets the rows so far after each configuration's last repeat."""
    repeats = int(os.environ.get("LEGISTRA_BENCH_REPEATS", REPEATS[device]))
    results: list[dict[str, Any]] = []
    for wname in workloads:
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs(device)}
        for repeat in range(repeats):
            for config in runs:  # interleaved, so a slow spell of the machine hits every configuration
                out = out_dir / f"throughput-{wname}-{config}.json"
                cmd = [sys.executable, "-m", "benchmarks.trainer_throughput", "--one", wname, config,
                       "--device", device, "--out", str(out)]
                env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "LEGISTRA_PROGRESS": "log"}
                done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    # One configuration failing (an OOM, a compile error on a new GPU) must not cost the others.
                    print(done.stderr[-3000:], file=sys.stderr)
                    runs[config].append({"workload": wname, "config": config, "device": device,
                                         "error": done.stderr.strip().splitlines()[-1:] or ["failed"]})
                else:
                    runs[config].append(json.loads(out.read_text()))
                    out.unlink()
                if repeat == repeats - 1:
                    results.append(_median(runs[config]))
                    if on_row:
                        on_row(results)
    return results


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median tokens/s, with every repeat's figure; a failed one when none succeeded."""
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["tokens_per_second"])
    if not ok:
        return rows[-1]
    median = dict(ok[len(ok) // 2])
    median["tokens_per_second_repeats"] = [r["tokens_per_second"] for r in ok]
    return median


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("WORKLOAD", "CONFIG"))
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="record STEPS steps after the warm-up with torch.profiler (benchmarks/step_profile.py)")
    a = ap.parse_args()
    run_one(a.one[0], a.one[1], a.device, a.out, a.profile)


if __name__ == "__main__":
    main()
