"""The training run: one TrainingRun in, a registered model version and its metrics out.

Every rank runs this module under torchrun. All ranks train and evaluate (data-parallel, and ZeRO-3 needs
every rank in each forward); rank 0 alone logs, tracks, saves, registers and writes the result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from legistra import __version__
from legistra.api.formats import duration_seconds
from legistra.api.spec import T5_MODEL_TYPES, TrainingRun, TrainingRunSpec
from legistra.api.validation import SpecError
from legistra.contract import (
    DEFAULT_METRIC,
    ENV_COLLECTIVE_TIMEOUT,
    FINAL_PREFIX,
    RESULT_FILE,
    TAG_BASE_MODEL,
    TAG_CODE_VERSION,
    TAG_FAILURE,
    TAG_TASK,
    TAG_TRAINER_STARTED,
    TAG_TRAINING_RUN,
    experiment_name,
)
from legistra.memory import length_problem
from legistra.trainer.checkpoints import (
    CheckpointSync,
    Preempted,
    RemoteCheckpoints,
    StopOnSignal,
    remote_prefix,
    restore,
)
from legistra.trainer.columnar import features_table, open_dataset, write_arrow
from legistra.trainer.data import LoadedData, cache_lock, load_data
from legistra.trainer.dsconfig import deepspeed_config, zero_stage_of
from legistra.trainer.runtime import DistInfo, setup_logging, show_progress_bar
from legistra.trainer.tasks import TaskHandler, handler_for

# When this process started: each start of rank 0 is announced to MLflow (contract.TAG_TRAINER_STARTED).
STARTED = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")

log = logging.getLogger("legistra.trainer")


@dataclass
class RunPaths:
    """Where one run keeps its state. `root` survives pod restarts (a volume), so resume works."""

    root: Path
    cache: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def result(self) -> Path:
        return self.root / RESULT_FILE


@dataclass
class RunSettings:
    """Runtime settings that do not belong in the spec, resolved once (`legistra.contract.tracking_uri` and
    `registry_uri`: the spec's, else the environment's, else the local state folder)."""

    tracking_uri: str
    registry_uri: str | None  # None: train and track, but register nothing (the notebook API)
    mlflow_artifact_root: str | None = None
    checkpoint_uri: str | None = None  # object storage for checkpoints (`legistra.contract.checkpoint_uri`)


@dataclass
class InMemory:
    """A run's inputs in memory: the model, its tokenizer and the rows (loaded from the spec's locations, or the
    notebook API's own). `model` becomes the LoRA-wrapped model when the spec asks for LoRA."""

    model: Any
    tokenizer: Any
    data: LoadedData


def remote_checkpoints(run: TrainingRun, settings: RunSettings) -> RemoteCheckpoints | None:
    """The run's checkpoint prefix in object storage: per namespace, run and identity (its uid; its spec's
    hash for a local run), so a recreated run of the same name never resumes another's checkpoints."""
    if not settings.checkpoint_uri:
        return None
    identity = run.metadata.uid or run_key(run).rsplit("-", 1)[-1]
    return RemoteCheckpoints(remote_prefix(settings.checkpoint_uri, run.metadata.namespace, run.metadata.name,
                                           identity))


def run_key(run: TrainingRun) -> str:
    """Stable identity of a TrainingRun across restarts (for MLflow and W&B resume)."""
    if run.metadata.uid:
        return run.metadata.uid
    digest = hashlib.sha256(json.dumps(run.spec.wire(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{run.metadata.namespace or 'local'}-{run.metadata.name}-{digest}"


def effective_precision(spec: TrainingRunSpec, cuda: bool, bf16_ok: bool) -> str:
    """fp16 needs a GPU; bf16 needs Ampere or newer (or the CPU, which emulates it)."""
    wanted = spec.training.precision
    if wanted == "fp16" and not cuda:
        return "fp32"
    if wanted == "bf16" and cuda and not bf16_ok:
        return "fp16"
    return wanted


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


ENCODE_BATCH = 1_000  # rows tokenized per call: large enough for the Rust tokenizer's threads, small in memory


def encode_split(handler: TaskHandler, data: LoadedData, role: str, tokenizer: Any, path: Path) -> int:
    """Tokenize a split batch by batch into an Arrow file (a batch of rows in Python at a time)."""

    def tables() -> Iterator[pa.Table]:
        first = 0
        for batch in data.batches(role, ENCODE_BATCH):
            columns = handler.encode(batch.to_pylist(), tokenizer, first)
            first += batch.num_rows
            yield features_table(columns)

    return write_arrow(path, None, tables())


@contextlib.contextmanager
def tokenizer_threads() -> Iterator[None]:
    """The Rust tokenizer's thread pool for the one tokenization pass of a node. Pods and `legistra train` set
    TOKENIZERS_PARALLELISM=false so that data-loader workers, forked later, never inherit a pool mid-use; the
    variable is read at every call, so the pass can have every core (docs/operator.md, "Measurements behind
    the design") and the workers still start with it off."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def encode_cached(handler: TaskHandler, data: LoadedData, tokenizer: Any, cache_root: Path) -> tuple[Any, Any, bool]:
    """Tokenized train/validation sets, reused across runs with the same data, tokenizer and settings. The first
    process of a node to take the lock tokenizes; the others wait, then map the same files."""
    key = hashlib.sha256(
        json.dumps(
            {"data": data.fingerprint, "tok": _tokenizer_fingerprint(tokenizer), **handler.cache_key()},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]
    target = cache_root / "tokenized" / key
    hit = (target / "done").exists()
    with cache_lock(cache_root, f"tokenized-{key}"), tokenizer_threads():
        if not (target / "done").exists():
            target.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            n = encode_split(handler, data, "train", tokenizer, target / "train.arrow")
            encode_split(handler, data, "validation", tokenizer, target / "validation.arrow")
            (target / "done").write_text(__version__)
            log.info("tokenized %d training examples in %.1fs", n, time.monotonic() - started)
    return open_dataset(target / "train.arrow"), open_dataset(target / "validation.arrow"), hit


def verify_adapter(model_dir: Path) -> dict[str, float]:
    """The saved adapter is non-empty and trained: lora_B starts at zero, so all-zero means no learning."""
    from safetensors.torch import load_file

    path = model_dir / "adapter_model.safetensors"
    if not path.exists():
        raise RuntimeError(f"{path}: adapter was not saved")
    tensors = load_file(str(path))
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    if not lora_b or any(t.numel() == 0 for t in lora_b):
        raise RuntimeError(f"{path}: adapter is empty (ZeRO-3 parameters were not gathered before saving)")
    norm = float(sum(t.float().abs().sum() for t in lora_b))
    if norm == 0.0:
        raise RuntimeError(f"{path}: adapter weights never changed from their zero init; LoRA did not train")
    return {"adapter_tensors": float(len(tensors)), "lora_b_abs_sum": norm}


class Diverged(Exception):
    """Training ended with a non-finite loss or non-finite weights: such a model is never registered, and a retry
    from the last checkpoint would only diverge again (contract reason Diverged)."""


def divergence(metrics: dict[str, Any], model_dir: Path) -> str | None:
    """Why the trained model is unusable, or None: a final loss that is NaN or infinite, or a saved weight that is.
    (A few fp16 steps that overflow early are normal and skipped by the loss scaler; they leave both finite.)"""
    import torch
    from safetensors import safe_open

    for key in ("train_loss", "eval_loss"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"{key} is {value}: the run diverged (lower spec.training.learningRate, or use bf16/fp32)"
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (safe_open is not iterable); one tensor at a time
                tensor = fh.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return (f"{path.name}: {name} holds NaN or infinite values: the run diverged (lower "
                            "spec.training.learningRate, or use bf16/fp32)")
    return None


def build_training_args(
    spec: TrainingRunSpec,
    handler: TaskHandler,
    paths: RunPaths,
    dist: DistInfo,
    resolved: ResolvedTraining,
) -> Any:
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    t, precision, cuda = spec.training, resolved.precision, resolved.cuda
    metric = t.metric_for_best_model or DEFAULT_METRIC[spec.task]
    kwargs: dict[str, Any] = {
        "output_dir": str(paths.checkpoints),
        "per_device_train_batch_size": resolved.batch_size,
        "per_device_eval_batch_size": resolved.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "warmup_steps": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "eval_strategy": t.evaluation,
        "eval_steps": t.eval_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "seed": t.seed,
        "data_seed": t.seed,
        "fp16": precision == "fp16",
        "bf16": precision == "bf16",
        "deepspeed": resolved.deepspeed,
        "train_sampling_strategy": "group_by_length" if t.group_by_length else "random",
        "dataloader_num_workers": t.dataloader_workers,
        "dataloader_persistent_workers": t.dataloader_workers > 0,
        "report_to": "none",
        "disable_tqdm": not (dist.is_main and show_progress_bar()),
        "log_level_replica": "error",
        "include_num_input_tokens_seen": "non_padding",
        "label_names": ["labels"],
        # HF rescales the loss by the world size when the model "accepts loss kwargs"; PEFT wrappers claim to
        # while heads such as sequence classification ignore them, which doubled the loss on 2 ranks. Plain
        # per-device means (averaged by DDP/ZeRO) are correct for every task here.
        "average_tokens_across_devices": False,
        "metric_for_best_model": f"eval_{metric}",
        "greater_is_better": handler.greater_is_better,
        "load_best_model_at_end": t.early_stopping is not None,
        "optim": "adamw_torch_fused" if cuda else "adamw_torch",
        "torch_compile": t.compile and cuda,
        "use_cpu": not cuda,
        "ddp_backend": "gloo" if not cuda and dist.world_size > 1 else None,
        "ddp_find_unused_parameters": False,
    }
    if handler.seq2seq:
        # Generation settings live on the model's generation_config (set in make_trainer), in one place.
        return Seq2SeqTrainingArguments(**kwargs, predict_with_generate=True)
    return TrainingArguments(**kwargs)


def final_eval(trainer: Any) -> dict[str, Any]:
    """The evaluation of the final weights: reused when the last scheduled evaluation ran at the last step."""
    state = trainer.state
    evals = [h for h in state.log_history if "eval_loss" in h]
    if evals and evals[-1].get("step") == state.global_step and not trainer.args.load_best_model_at_end:
        return dict(evals[-1])
    metrics: dict[str, Any] = trainer.evaluate()
    return metrics


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    drop = ("runtime", "samples_per_second", "steps_per_second")
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith(drop)
    }


def collective_timeout(spec: TrainingRunSpec) -> dt.timedelta | None:
    """How long a collective waits for a peer before it fails: the operator's word for the run (the effective
    stall timeout, contract.ENV_COLLECTIVE_TIMEOUT), else the spec's stallTimeout, else torch's default (None)."""
    raw = os.environ.get(ENV_COLLECTIVE_TIMEOUT, "")
    seconds = int(raw) if raw.isdigit() else duration_seconds(spec.training.stall_timeout or "0")
    return dt.timedelta(seconds=seconds) if seconds else None


def init_process_group(dist: DistInfo, cuda: bool, deepspeed: bool, timeout: dt.timedelta | None = None) -> None:
    """Join the job's process group before any model is built: ZeRO-3 partitions weights while loading. With
    `timeout` and NCCL's asynchronous error handling, a dead or hung peer ends the collective in an error (and the
    attempt in a restart from the last checkpoint) rather than in a hang that holds every GPU."""
    import torch
    import torch.distributed as tdist

    if dist.world_size == 1 or tdist.is_initialized():
        return
    if cuda:
        torch.cuda.set_device(dist.local_rank)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    backend = "nccl" if cuda else "gloo"
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend, **({"timeout": timeout} if timeout is not None else {}))
    else:
        tdist.init_process_group(backend=backend, timeout=timeout)


def leave_process_group(dist: DistInfo) -> None:
    """Tear the process group down on every rank after the last collective, while the interpreter is whole.

    Left to interpreter shutdown, gloo's worker threads can be destroyed while still joinable and the rank dies
    with SIGABRT ("terminate called without an active exception") although training succeeded. Only called on
    success: a rank that failed mid-collective must not wait for peers that will never arrive. A single process
    (a notebook) keeps whatever group it had.
    """
    import torch.distributed as tdist

    if dist.world_size > 1 and tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


@dataclass(frozen=True)
class ResolvedTraining:
    """What the spec leaves to the machine, decided once on it: the precision the device supports, the
    per-device batch ('auto' measured), the DeepSpeed config, whether a GPU trains. Travels as this value; the
    spec is never rewritten with it."""

    precision: str
    batch_size: int
    cuda: bool
    deepspeed: dict[str, Any] | None = None

    @classmethod
    def of(cls, spec: TrainingRunSpec, precision: str, cuda: bool) -> ResolvedTraining:
        """A spec with a fixed batch size, no DeepSpeed (benchmarks and tests that build arguments alone)."""
        assert spec.training.batch_size != "auto"
        return cls(precision, int(spec.training.batch_size), cuda, deepspeed_config(spec.deepspeed))


@dataclass
class Prepared:
    """Everything `fit` needs, ready: the run, where it keeps its state, the resolved settings, the task's
    handler, the loaded inputs (`inputs.model` LoRA-wrapped), the tokenized sets and the training arguments."""

    run: TrainingRun
    paths: RunPaths
    settings: RunSettings
    dist: DistInfo
    resolved: ResolvedTraining
    handler: TaskHandler
    inputs: InMemory
    model_path: str
    train_ds: Any
    eval_ds: Any
    cache_hit: bool
    args: Any
    remote: RemoteCheckpoints | None
    signals: bool  # stop cleanly on SIGTERM (a pod); a notebook keeps its own Ctrl-C
    started: float  # time.time() before the inputs were loaded: result.json's wallSeconds counts from there


@dataclass
class Fitted:
    """What training left: the trainer (its model and state), its metrics, the checkpoint it resumed from, the
    trackers it logged to (rank 0) and the checkpoint upload's timings."""

    trainer: Any
    metrics: dict[str, Any]
    resumed_from: str | None
    history: list[dict[str, float]]
    mlflow: Any = None  # MlflowTracker on rank 0
    wandb: Any = None  # WandbTracker on rank 0 when the spec asks for it
    sync: CheckpointSync | None = None


Loader = Callable[[TrainingRunSpec, TaskHandler, Path], tuple[InMemory, str]]


def run_training(run: TrainingRun, paths: RunPaths, settings: RunSettings) -> dict[str, Any] | None:
    """Train, evaluate, save and register (pods and `legistra train`). The result on rank 0, None elsewhere."""
    return train(run, paths, settings, load_inputs, signals=True)[0]


def train(run: TrainingRun, paths: RunPaths, settings: RunSettings, load: Loader, signals: bool
          ) -> tuple[dict[str, Any] | None, Fitted | None]:
    """prepare -> fit -> finish, with the inputs from `load` (`load_inputs` from the spec's locations; the
    notebook's own model, tokenizer and rows). Also returns what training left (None for a finished run)."""
    dist = DistInfo.from_env()
    setup_logging(dist)
    remote = remote_checkpoints(run, settings)
    done = finished_result(paths, remote)
    if done is not None:
        # A pod restarted after the run finished: never train or register twice.
        log.info("run already finished (%s); nothing to do", paths.result)
        return (done if dist.is_main else None), None
    prepared = prepare(run, paths, settings, dist, load, signals, remote, time.time())
    fitted = fit(prepared)
    if not dist.is_main:
        return None, fitted
    return finish(prepared, fitted), fitted


def finished_result(paths: RunPaths, remote: RemoteCheckpoints | None) -> dict[str, Any] | None:
    """The result of a run that finished before, from the local volume or, for a new pod with empty local storage,
    from object storage; None when it has not finished."""
    if remote is not None and not paths.result.exists():
        finished = remote.get_result()
        if finished is not None:
            paths.result.parent.mkdir(parents=True, exist_ok=True)
            paths.result.write_bytes(finished)
    if not paths.result.exists():
        return None
    done: dict[str, Any] = json.loads(paths.result.read_text(encoding="utf-8"))
    return done


def load_inputs(spec: TrainingRunSpec, handler: TaskHandler, cache: Path) -> tuple[InMemory, str]:
    """The rows, tokenizer and model from the spec's locations (hub, S3, a local folder); also where the model's
    files are."""
    from transformers import AutoTokenizer

    from legistra.trainer.modeling import model_loading, resolve_model

    data = load_data(spec, cache)
    handler.fit_labels(data.train, data.validation)
    with model_loading(spec.model.name):
        model_path = resolve_model(spec.model, cache)
        tokenizer = AutoTokenizer.from_pretrained(model_path, revision=spec.model.revision,
                                                  trust_remote_code=spec.model.trust_remote_code)
        model = handler.load_model(model_path, revision=spec.model.revision,
                                   trust_remote_code=spec.model.trust_remote_code)
    return InMemory(model, tokenizer, data), model_path


def already_loaded(inputs: InMemory) -> Loader:
    """A loader for inputs held in memory (the notebook API): only the labels are learnt from its rows."""

    def load(spec: TrainingRunSpec, handler: TaskHandler, cache: Path) -> tuple[InMemory, str]:
        handler.fit_labels(inputs.data.train, inputs.data.validation)
        return inputs, spec.model.name

    return load


def prepare(run: TrainingRun, paths: RunPaths, settings: RunSettings, dist: DistInfo, load: Loader, signals: bool,
            remote: RemoteCheckpoints | None, started: float) -> Prepared:
    """Device, process group, inputs, tokenized sets, LoRA, batch size and arguments: every check that can fail
    before the first step fails here."""
    import torch
    from transformers import set_seed

    from legistra.trainer.batchsize import resolve_batch_size
    from legistra.trainer.modeling import apply_lora, enable_gradient_checkpointing, lora_targets

    spec = run.spec
    set_seed(spec.training.seed)
    cuda = torch.cuda.is_available()
    precision = effective_precision(spec, cuda, cuda and torch.cuda.is_bf16_supported())
    if precision != spec.training.precision:
        log.warning("precision %s is not available on this device; using %s", spec.training.precision, precision)
    if spec.training.compile and not cuda:
        log.warning("training.compile is ignored without a GPU")
    ds_config = deepspeed_config(spec.deepspeed)
    # Before the model: ZeRO-3 partitions while loading.
    init_process_group(dist, cuda, ds_config is not None, collective_timeout(spec))
    handler = handler_for(spec)
    inputs, model_path = load(spec, handler, paths.cache)
    train_ds, eval_ds, cache_hit = encode_cached(handler, inputs.data, inputs.tokenizer, paths.cache)
    handler.bind_eval(eval_ds, inputs.data.validation, inputs.tokenizer)
    log.info("%s: %d train / %d validation rows -> %d / %d examples (tokenization %s)", spec.task,
             len(inputs.data.train), len(inputs.data.validation), len(train_ds), len(eval_ds),
             "cached" if cache_hit else "computed")
    model = inputs.model
    too_long = length_problem(spec, model.config.to_dict(), f"{model_path}'s config")
    if too_long is not None:  # before any step: the first long batch would fail with an index error
        raise SpecError([too_long])
    if precision == "fp16" and model.config.model_type in T5_MODEL_TYPES:
        raise SpecError([f"spec.training.precision: fp16 is not allowed for {model.config.model_type} models "
                         "(they overflow to NaN); use bf16 or fp32"])
    if spec.training.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if spec.lora.enabled:
        inputs.model = model = apply_lora(model, spec.task, spec.lora)
    batch = resolve_batch_size(spec, model, lora_targets(model.config.model_type, spec.lora),
                               len(handler.labels), precision, cuda)
    resolved = ResolvedTraining(precision, batch, cuda, ds_config)
    args = build_training_args(spec, handler, paths, dist, resolved)
    return Prepared(run, paths, settings, dist, resolved, handler, inputs, model_path, train_ds, eval_ds, cache_hit,
                    args, remote, signals, started)


def start_tracking(p: Prepared) -> tuple[Any, Any]:
    """Rank 0's MLflow run (and W&B's), tagged and with the run's public parameters; (None, None) elsewhere."""
    from legistra.tracking.mlflow_tracker import MlflowTracker, public_params
    from legistra.tracking.wandb_tracker import WandbTracker

    if not p.dist.is_main:
        return None, None
    run, spec, r = p.run, p.run.spec, p.resolved
    key = run_key(run)
    mlflow = MlflowTracker(p.settings.tracking_uri, experiment_name(spec), key, run.metadata.name,
                           artifact_root=p.settings.mlflow_artifact_root)
    mlflow.start(tags={TAG_TASK: spec.task, TAG_BASE_MODEL: spec.model.name,
                       TAG_TRAINING_RUN: f"{run.metadata.namespace or 'local'}/{run.metadata.name}",
                       TAG_CODE_VERSION: __version__})
    # At every start, a resumed run's too (start() tags only a new run): a restart in place shows here.
    mlflow.set_tags({TAG_TRAINER_STARTED: STARTED})
    model = p.inputs.model
    params = public_params({"spec": spec.wire()})
    params.update({
        "resolved.world_size": p.dist.world_size,
        "resolved.batch_size": r.batch_size,
        "resolved.precision": r.precision,
        "resolved.zero_stage": zero_stage_of(r.deepspeed),
        "resolved.trainable_params": sum(x.numel() for x in model.parameters() if x.requires_grad),
        "resolved.total_params": sum(x.numel() for x in model.parameters()),
        "resolved.train_examples": len(p.train_ds),
        "resolved.eval_examples": len(p.eval_ds),
        "resolved.labels": json.dumps(p.handler.labels) if p.handler.labels else None,
    })
    mlflow.log_params(params)
    mlflow.log_dict({"apiVersion": run.api_version, "kind": run.kind, "metadata": {"name": run.metadata.name},
                     "spec": spec.wire()}, "trainingrun.json")
    wandb = None
    if spec.tracking.wandb is not None:
        wandb = WandbTracker(spec.tracking.wandb, key[:64].replace("/", "-"), run.metadata.name, p.paths.root)
        wandb.start(params)
    return mlflow, wandb


def make_trainer(p: Prepared, callbacks: list[Any]) -> Any:
    """The transformers Trainer for the prepared run, its generation settings on the model (seq2seq)."""
    from transformers import Seq2SeqTrainer, Trainer

    model, handler, tokenizer = p.inputs.model, p.handler, p.inputs.tokenizer
    if handler.seq2seq:
        gen = p.run.spec.generation
        config = model.generation_config  # PEFT forwards to the base model's
        config.length_penalty = gen.length_penalty
        config.no_repeat_ngram_size = gen.no_repeat_ngram_size
        config.num_beams = gen.num_beams
        config.max_new_tokens = gen.max_new_tokens
        config.max_length = None
    trainer = (Seq2SeqTrainer if handler.seq2seq else Trainer)(
        model=model, args=p.args, train_dataset=p.train_ds, eval_dataset=p.eval_ds, processing_class=tokenizer,
        data_collator=handler.collator(tokenizer, model), compute_metrics=handler.compute_metrics,
        preprocess_logits_for_metrics=None if handler.seq2seq else handler.preprocess_logits, callbacks=callbacks)
    if not show_progress_bar():
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # LogLineCallback prints the readable version
    return trainer


def fit(p: Prepared) -> Fitted:
    """Train from the last checkpoint, evaluate the final weights, save the model (every rank: ZeRO-3 gathers
    collectively). A stop signal saves and raises Preempted; any failure ends rank 0's trackers as FAILED."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import get_last_checkpoint

    from legistra.trainer.callbacks import LogLineCallback, MetricsCallback

    mlflow, wandb = start_tracking(p)
    metrics_cb = MetricsCallback(mlflow, wandb)
    callbacks: list[Any] = [metrics_cb] if show_progress_bar() else [metrics_cb, LogLineCallback()]
    # Before the upload callback: a stop request turns the step's end into a save, which the upload then sees.
    stop = StopOnSignal() if p.signals else None
    if stop is not None:
        stop.install()
        callbacks.append(stop)
    sync = None
    if p.remote is not None:
        nodes = max(1, p.dist.world_size // max(1, p.dist.local_world_size))
        sync = CheckpointSync(p.remote, p.dist, nodes, p.run.spec.training.save_total_limit)
        callbacks.append(sync)
    if (es := p.run.spec.training.early_stopping) is not None:
        callbacks.append(EarlyStoppingCallback(es.patience, es.threshold))
    trainer = make_trainer(p, callbacks)
    if p.remote is not None:
        restore(p.remote, p.paths.checkpoints, p.dist)  # the newest complete save, unless this node holds it
    last = get_last_checkpoint(str(p.paths.checkpoints)) if p.paths.checkpoints.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    status = "FAILED"
    try:
        train_out = trainer.train(resume_from_checkpoint=last)
        if stop is not None and stop.stopped_at is not None:
            status = "KILLED"  # saved (and uploaded: on_train_end waited) at the step the signal ended
            leave_process_group(p.dist)
            raise Preempted(int(trainer.state.global_step))
        final = final_eval(trainer)
        if p.resolved.deepspeed and mlflow is not None and getattr(p.args, "hf_deepspeed_config", None) is not None:
            mlflow.log_dict(p.args.hf_deepspeed_config.config, "deepspeed_config.json")
        trainer.save_model(str(p.paths.model))
        status = "FINISHED"
        leave_process_group(p.dist)
    finally:
        if stop is not None:
            stop.uninstall()
        if status in ("FAILED", "KILLED"):
            if mlflow is not None:
                mlflow.end(status)  # KILLED: the next attempt finds the same run again and goes on
            if wandb is not None:
                wandb.finish(exit_code=1)
    return Fitted(trainer, {**train_out.metrics, **final}, last, metrics_cb.history, mlflow, wandb, sync)


def finish(p: Prepared, f: Fitted) -> dict[str, Any]:
    """Rank 0: check the model (finite, trained), write its files, register it (the registry decides and records
    first), mirror the outcome to tracking once, and write the result."""
    spec, paths, mlflow = p.run.spec, p.paths, f.mlflow
    assert mlflow is not None
    p.inputs.tokenizer.save_pretrained(str(paths.model))
    (paths.model / "training_args.bin").unlink(missing_ok=True)  # a pickle: nothing to ship in a registry
    diverged = divergence(f.metrics, paths.model)
    if diverged is not None:
        mlflow.set_tags({TAG_FAILURE: f"Diverged: {diverged}"})
        mlflow.end("FAILED")
        if f.wandb is not None:
            f.wandb.finish(exit_code=1)
        raise Diverged(diverged)
    adapter_check = verify_adapter(paths.model) if spec.lora.enabled else {}
    metrics = _clean_metrics(f.metrics)
    baseline = p.handler.baseline(p.inputs.data.train, p.inputs.data.validation)
    (paths.model / "legistra.json").write_text(
        json.dumps({"task": spec.task, "labels": p.handler.labels, "baseModel": spec.model.name,
                    "lora": spec.lora.enabled}, indent=2), encoding="utf-8")
    if spec.registry.merge_adapter and spec.lora.enabled:
        from legistra.trainer.merge import merge_and_check

        merge_and_check(p.handler, p.model_path, paths.model, paths.model / "merged", p.inputs.tokenizer, p.eval_ds)

    from legistra.trainer.publish import Outcome, mirror, register

    step = int(f.trainer.state.global_step)
    outcome = Outcome(metrics, baseline, step, f.resumed_from)
    if p.settings.registry_uri is not None:
        extra = {"adapterCheck": adapter_check, "precision": p.resolved.precision, "worldSize": p.dist.world_size,
                 "zeroStage": zero_stage_of(p.resolved.deepspeed), "tokenizationCached": p.cache_hit}
        outcome = register(p.run, paths.model, p.settings.registry_uri, mlflow, outcome,
                           data_sources=p.inputs.data.sources, extra=extra)
    result = mirror(mlflow, spec, outcome)
    if f.history:
        from legistra.tracking.plots import plot_curves

        png = plot_curves(f.history, paths.root / "training_curves.png", p.run.metadata.name)
        if png is not None:
            mlflow.log_artifact(png)
    mlflow.log_metrics({f"{FINAL_PREFIX}{k}": v for k, v in metrics.items()}, step)
    mlflow.end("FINISHED")
    if f.wandb is not None:
        f.wandb.log({f"{FINAL_PREFIX}{k}": v for k, v in metrics.items()}, step)
        f.wandb.finish()
    result["wallSeconds"] = round(time.time() - p.started, 1)
    if f.sync is not None:
        result["checkpoints"] = {"uri": p.remote.uri if p.remote else None, "uploadedBytes": f.sync.times.bytes_sent,
                                 "stallSeconds": [round(x, 3) for x in f.sync.times.stalls],
                                 "uploadSeconds": [round(x, 3) for x in f.sync.times.uploads]}
    paths.result.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if p.remote is not None:
        p.remote.put_result(paths.result)  # the marker that this run is done, for pods with empty storage
    return result
