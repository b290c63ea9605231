"""The TrainingRun schema: the single source of truth.

Everything else (the CRD YAML, the Helm chart's CRDs, `legistra validate`, the operator's checks and the
trainer's config) is derived from these models. Field names are camelCase on the wire, as Kubernetes users
expect; Python code uses snake_case attributes.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from legistra.api.formats import (
    DnsLabel,
    DnsName,
    Duration,
    Image,
    LabelKey,
    LabelValue,
    Location,
    Quantity,
    SecretKey,
    Uri,
    bounded_document,
    no_credentials,
)
from legistra.api.tasks import TASK_METRICS, reports

API_GROUP = "legistra.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

Task = Literal["summarization", "clause-extraction", "risk-classification"]
Precision = Literal["fp16", "bf16", "fp32"]
DataFormat = Literal["auto", "jsonl", "csv", "parquet", "cuad", "saved-dataset"]

# Limits the libraries and Kubernetes impose on numbers: refused here, before a pod starts, instead of failing
# inside NumPy's seeding, a C int of the tokenizer or the API server's int32/int64 fields.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1  # numpy.random.seed
NAME_MAX = 256  # column names, metric names, experiment names, labels


class Spec(BaseModel):
    """Base for every spec object: camelCase on the wire, unknown fields are errors."""

    # strict: a YAML `true` is not the number 1 and `"8"` is not 8 (the API server's schema agrees);
    # allow_inf_nan: `.inf` and `.nan` are YAML floats that no setting can mean.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_default=True, strict=True,
        allow_inf_nan=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML / the Kubernetes API (camelCase, defaults filled in)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(Spec):
    name: DnsName = Field(description="Secret name, in the TrainingRun's namespace.")
    key: SecretKey = Field(description="Key inside the Secret.")


class ModelSpec(Spec):
    name: Location = Field(
        description="Base model: a Hugging Face id, an s3:// prefix, or a path on a mounted volume.",
    )
    revision: str | None = Field(None, max_length=NAME_MAX,
                                 description="Hub revision (branch, tag or commit) of the base model.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code shipped with the model.")
    token_secret: SecretKeyRef | None = Field(
        None, description="Secret holding a Hugging Face token for a gated or private model; the pods get it as "
        "HF_TOKEN, which the hub download reads (never logged, never in run.json).")


Column = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]


class FieldNames(Spec):
    text: Column = Field("text", description="Input text column (the clause, the contract, the document).")
    label: Column = Field("label", description="Label column (risk-classification); a list for multi-label.")
    summary: Column = Field("summary", description="Target summary column (summarization).")
    spans: Column = Field(
        "spans",
        description="Clause-span column (clause-extraction): a list of {start, end, label} character spans.",
    )


class SplitNames(Spec):
    train: Column = Field("train", description="Split of a saved DatasetDict to train on.")
    validation: Column = Field(
        "validation", description="Split of a saved DatasetDict to evaluate on (held out of train when absent)."
    )


class DataSpec(Spec):
    train: Location = Field(
        description="Training data: a file or a save_to_disk folder, as a path or s3:// URI, or a hub dataset id."
    )
    validation: Location | None = Field(
        None,
        description="Validation data; when absent, the validation split of a saved DatasetDict at train, else a "
        "held-out fraction of train.",
    )
    validation_split: float = Field(
        0.1, gt=0, lt=1, description="Fraction of train held out for validation when no validation is given."
    )
    format: DataFormat = Field(
        "auto",
        description="File format; auto picks it from the file extension, or saved-dataset for a folder written by "
        "datasets' save_to_disk (it holds dataset_dict.json or state.json).",
    )
    splits: SplitNames = Field(default_factory=SplitNames, description="Split names in a saved DatasetDict.")
    fields: FieldNames = Field(default_factory=FieldNames, description="Column names per task.")
    max_length: int = Field(512, ge=8, le=32768, description="Maximum input tokens.")
    max_target_length: int = Field(128, ge=4, le=4096, description="Maximum target tokens (summarization).")
    stride: int = Field(
        128, ge=0, le=32767,
        description="Token overlap between windows of long documents (clause-extraction); at most half of "
        "maxLength is used."
    )
    max_samples: int | None = Field(
        None, ge=1, le=INT32_MAX, description="Use at most this many training rows (smoke runs).")


class EarlyStoppingSpec(Spec):
    patience: int = Field(3, ge=1, le=10_000, description="Evaluations without improvement before stopping.")
    threshold: float = Field(0.0, ge=0, le=1e6, description="Minimum improvement that counts.")


class TrainingSpec(Spec):
    epochs: float = Field(3, gt=0, le=100_000, description="Number of passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, le=INT32_MAX, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="Peak learning rate.")
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Literal["auto"] = Field(
        8, description="Per-device batch size, or 'auto': the largest that fits the GPU, found at start-up "
                       "(the memory estimate, then a real step that backs off on out-of-memory; 8 on a CPU).")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    precision: Precision = Field("fp16", description="fp16 (default), bf16 or fp32. CPU runs fall back to fp32.")
    evaluation: Literal["epoch", "steps", "no"] = Field("epoch", description="When to evaluate.")
    eval_steps: int | None = Field(
        None, ge=1, le=INT32_MAX, description="Evaluation interval when evaluation is 'steps'.")
    save_steps: int = Field(200, ge=1, le=INT32_MAX, description="Checkpoint interval in optimizer steps.")
    save_total_limit: int = Field(2, ge=1, le=1000, description="Checkpoints kept on disk.")
    logging_steps: int = Field(10, ge=1, le=INT32_MAX, description="Training-loss logging interval.")
    seed: int = Field(42, ge=0, le=SEED_MAX,
                      description="Random seed for data order, initialisation and dropout (0 to 2^32-1).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps used for learning-rate warm-up.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay (0 to 1).")
    group_by_length: bool = Field(True, description="Batch samples of similar length to cut padding.")
    metric_for_best_model: str | None = Field(
        None, max_length=NAME_MAX,
        description="Metric that picks the best checkpoint and drives early stopping (task default if unset)."
    )
    early_stopping: EarlyStoppingSpec | None = Field(None, description="Stop when the metric stops improving.")
    dataloader_workers: int = Field(2, ge=0, le=64, description="Data-loader worker processes per rank.")
    compile: bool = Field(
        False,
        description="torch.compile the model on GPUs (ignored on CPUs). Lengths vary per batch, so the first "
        "steps recompile; measure with `make bench` before turning it on.",
    )
    stall_timeout: Duration | None = Field(
        None, description="A running attempt whose progress has not moved for this long (from its first progress "
        "report) is stalled: the operator stops it and starts the next attempt from the last checkpoint (counted "
        "against runPolicy.maxAttempts); the trainer's collective timeout is set to it too, so a dead peer ends in "
        "an error rather than a hang. 90s, 30m, 2h; 0 turns it off; the operator's default (30m) when unset.")


class ClassificationSpec(Spec):
    labels: list[Annotated[str, Field(max_length=NAME_MAX)]] | None = Field(None, min_length=2, max_length=100_000,
                                     description="Label set, in order; inferred from the data when absent.")
    multi_label: bool = Field(False, description="Each example may carry several labels (LexGLUE unfair_tos).")

    _distinct = field_validator("labels")(lambda v: distinct(v))


class ExtractionSpec(Spec):
    clause_types: list[Annotated[str, Field(max_length=NAME_MAX)]] | None = Field(
        None, min_length=1, max_length=10_000,
        description="Clause types to extract; inferred from the data when absent."
    )

    _distinct = field_validator("clause_types")(lambda v: distinct(v))


class GenerationSpec(Spec):
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Tokens generated per summary at evaluation.")
    num_beams: int = Field(1, ge=1, le=16, description="Beam width at evaluation.")
    length_penalty: float = Field(1.0, ge=-100, le=100, description="Beam-search length penalty.")
    no_repeat_ngram_size: int = Field(0, ge=0, le=1024, description="Forbid repeated n-grams of this size (0 = off).")


class LoraSpec(Spec):
    enabled: bool = Field(True, description="Train low-rank adapters instead of all weights.")
    r: int = Field(16, ge=1, le=1024, description="Adapter rank.")
    alpha: int = Field(32, ge=1, le=65536, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Annotated[str, Field(max_length=NAME_MAX)]] | None = Field(
        None, min_length=1, max_length=1000, description="Modules to adapt; per-architecture defaults when absent."
    )

    _distinct = field_validator("target_modules")(lambda v: distinct(v))


class DeepSpeedSpec(Spec):
    zero_stage: int | None = Field(None, ge=0, le=3, description="ZeRO stage 0-3; unset disables DeepSpeed.")
    offload: Literal["none", "cpu"] = Field("none", description="Offload optimizer (and ZeRO-3 params) to CPU.")
    config: dict[str, Any] | None = Field(
        None, description="A raw DeepSpeed config passed through; 'auto' values are resolved by the trainer "
        "(at most 64 KiB as JSON, 16 levels deep, finite numbers)."
    )

    _bounded = field_validator("config")(lambda v: bounded_document(v, max_bytes=64 << 10, max_depth=16))

    @property
    def enabled(self) -> bool:
        return self.zero_stage is not None or self.config is not None


class Toleration(Spec):
    key: LabelKey | None = Field(None, description="Taint key; empty with operator Exists matches every taint.")
    operator: Literal["Exists", "Equal"] | None = None
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=-INT64_MAX - 1, le=INT64_MAX,
                                           description="With effect NoExecute: how long the pod stays bound.")

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        # The API server's own rules for a toleration (ValidateTolerations), said before the job is created.
        if self.operator == "Exists" and self.value:
            raise ValueError("value: must be empty when operator is Exists")
        if not self.key and self.operator != "Exists":
            raise ValueError("operator: must be Exists when key is empty")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds: only allowed with effect NoExecute")
        return self


class ResourcesSpec(Spec):
    nodes: int = Field(1, ge=1, le=512, description="Pods (nodes) in the job: one Master and nodes-1 Workers.")
    gpus_per_node: int = Field(1, ge=0, le=16, description="GPUs per pod; also the processes per pod.")
    cpu: Quantity | None = Field(None, description="CPU request and limit per pod, e.g. '8'.")
    memory: Quantity | None = Field(None, description="Memory request and limit per pod, e.g. '64Gi'.")
    image: Image | None = Field(None, description="Trainer image; the operator's default when absent.")
    node_selector: dict[LabelKey, LabelValue] | None = Field(None, description="Node labels the pods must match.")
    tolerations: list[Toleration] | None = Field(None, max_length=100, description="Taints the pods tolerate.")
    priority_class_name: DnsName | None = Field(None, description="PriorityClass of the pods.")
    queue_name: LabelValue | None = Field(None, min_length=1,
                                          description="Kueue LocalQueue; sets kueue.x-k8s.io/queue-name.")
    service_account_name: DnsName | None = Field(None, description="ServiceAccount of the pods.")
    shm_size: Quantity | None = Field("8Gi", description="Size of /dev/shm for data loaders and NCCL.")
    termination_grace_period_seconds: int = Field(
        300, ge=30, le=86400,
        description="Seconds a pod has after SIGTERM (eviction, preemption, node drain, suspend) to finish its "
        "step, save a checkpoint and upload it before it is killed.")
    backend: Literal["auto", "pytorchjob", "trainjob"] = Field(
        "auto", description="Job kind: pytorchjob (Kubeflow training-operator), trainjob (Kubeflow Trainer v2), or "
        "auto (the operator's setting; with auto there too, TrainJob where the cluster serves it and its "
        "ClusterTrainingRuntime exists, else what it serves). A started run keeps its kind.")
    training_runtime: DnsName | None = Field(
        None, description="TrainJob only: the ClusterTrainingRuntime to run on; the operator's default "
        "(torch-distributed) when absent.")


class MlflowSpec(Spec):
    experiment: str | None = Field(None, min_length=1, max_length=NAME_MAX,
                                   description="Experiment name; defaults to the model name.")
    tracking_uri: Uri | None = Field(
        None, description="Tracking server; defaults to the operator's (or a local sqlite store). Never with a "
        "user or password in it: give credentialsSecret."
    )
    credentials_secret: DnsName | None = Field(
        None, description="Secret (in the run's namespace) with the tracking server's credentials: its keys "
        "username and password become MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the pods, or token "
        "becomes MLFLOW_TRACKING_TOKEN.")


class WandbSpec(Spec):
    project: str = Field(min_length=1, max_length=128, description="W&B project.")
    entity: str | None = Field(None, min_length=1, max_length=128, description="W&B entity (team).")
    api_key_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the API key; without it W&B runs offline."
    )


class TrackingSpec(Spec):
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, description="MLflow settings.")
    wandb: WandbSpec | None = Field(None, description="Weights & Biases, when configured.")


class PromotionSpec(Spec):
    metric: str = Field(
        min_length=1, max_length=NAME_MAX, description="Evaluation metric compared, e.g. eval_f1_macro.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Which way is better.")
    alias: str = Field(
        "champion", pattern=r"^[a-z][a-z0-9-]{0,62}$", description="Alias the new version takes if it wins."
    )


class CheckpointsSpec(Spec):
    uri: Annotated[str, Field(pattern=r"^s3://[^/]+", max_length=1024), AfterValidator(no_credentials)] | None = Field(
        None,
        description="Object storage for checkpoints (s3://bucket/prefix): pods keep working checkpoints on "
        "node-local storage, upload every save in the background and resume from the newest complete one on "
        "any node; no volume is claimed. Defaults to the operator's; without one, a PersistentVolumeClaim holds "
        "the checkpoints (ReadWriteMany when the run has several nodes).",
    )
    local_size: Quantity = Field(
        "50Gi", description="Size limit of each pod's node-local storage (an emptyDir) when uri is set."
    )


class RegistrySpec(Spec):
    model_name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$", description="Registered model name (lower case, no slashes)."
    )
    uri: Location | None = Field(
        None, description="Registry root (s3://bucket/prefix or a path); defaults to the operator's."
    )
    merge_adapter: bool = Field(False, description="Also store the base model with the adapter merged in.")
    promotion: PromotionSpec | None = Field(None, description="Gate that moves an alias to better versions.")


class RunPolicySpec(Spec):
    backoff_limit: int = Field(3, ge=0, le=100, description="Pod restarts before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, le=INT64_MAX, description="Wall-clock limit of the job.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=INT32_MAX, description="Delete the finished job after this.")
    suspend: bool = Field(False, description="Hold the job (or pause it, keeping its checkpoints).")
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "None", description="Pods deleted when the job ends; None keeps logs."
    )
    max_attempts: int = Field(
        2, ge=1, le=20,
        description="PyTorchJobs tried before the run fails. A job that ends Failed (backoffLimit spent, deadline "
        "passed) is replaced by a new one that resumes from the last checkpoint. May be raised after a failure "
        "to try again.",
    )
    retry_delay_seconds: int = Field(
        60, ge=0, le=86400, description="Wait before the next attempt; doubles with each failed attempt."
    )


class TrainingRunSpec(Spec):
    task: Task = Field(description="summarization, clause-extraction or risk-classification.")
    model: ModelSpec = Field(description="Base model.")
    data: DataSpec = Field(description="Training and validation data.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    classification: ClassificationSpec = Field(
        default_factory=ClassificationSpec, description="risk-classification settings."
    )
    extraction: ExtractionSpec = Field(default_factory=ExtractionSpec, description="clause-extraction settings.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="summarization settings.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapters (PEFT).")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Pods, GPUs and scheduling.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")
    registry: RegistrySpec = Field(description="Where the trained model is registered.")
    checkpoints: CheckpointsSpec = Field(default_factory=CheckpointsSpec, description="Where checkpoints are kept.")
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec, description="Job-level policy.")

    @model_validator(mode="after")
    def _cross_field(self) -> TrainingRunSpec:
        # These rules span fields; they are mirrored as CEL rules in the CRD (see crd.py).
        if self.training.precision == "fp16" and is_t5_family(self.model.name):
            raise ValueError(
                "spec.training.precision: fp16 is not allowed for T5-family models (they overflow to NaN); "
                "use bf16 or fp32"
            )
        if self.training.evaluation == "steps" and self.training.eval_steps is None:
            raise ValueError("spec.training.evalSteps: required when evaluation is 'steps'")
        if self.training.early_stopping is not None and self.training.evaluation == "no":
            raise ValueError("spec.training.earlyStopping: needs evaluation ('epoch' or 'steps')")
        if self.deepspeed.zero_stage is not None and self.deepspeed.config is not None:
            raise ValueError("spec.deepspeed: give zeroStage or config, not both")
        known = ", ".join(TASK_METRICS[self.task])
        gate = self.registry.promotion
        for path, metric in (("spec.registry.promotion.metric", gate.metric if gate else None),
                             ("spec.training.metricForBestModel", self.training.metric_for_best_model)):
            if metric and not reports(self.task, metric):
                raise ValueError(f"{path}: {self.task} does not report {metric!r}; it reports {known} "
                                 "(with or without the eval_ prefix)")
        return self


def distinct(values: list[str] | None) -> list[str] | None:
    """No empty entries and no duplicates in a list the user names things with."""
    if values is None:
        return None
    if any(not v.strip() for v in values):
        raise ValueError("entries must not be empty")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"duplicate entries: {', '.join(repeated)}")
    return values


T5_NAME = re.compile(r"(^|[-_/])(code|flan-|long-|by|m|um)?t5([-_.]|$)")
T5_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers"})


def is_t5_family(model_name: str) -> bool:
    """By name; the trainer checks the loaded config's model_type too, for paths that hide the name."""
    return bool(T5_NAME.search(model_name.lower()))


class ObjectMeta(BaseModel):
    """The subset of metadata a TrainingRun file may carry (the API server fills in the rest).

    Name, namespace and uid end up in MLflow lookups, object-store prefixes and child names: they are checked
    here as the API server checks them, so a local file cannot carry what a cluster would refuse."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=52)
    namespace: DnsLabel | None = None
    uid: str | None = Field(None, pattern=r"^[A-Za-z0-9][-A-Za-z0-9]{0,127}$")
    generation: int | None = Field(None, ge=0, le=INT64_MAX)
    labels: dict[LabelKey, LabelValue] | None = None
    annotations: dict[LabelKey, str] | None = None

    @field_validator("annotations")
    @classmethod
    def _annotation_size(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        size = sum(len(k) + len(val) for k, val in (v or {}).items())
        if size > 256 << 10:  # the API server's TotalAnnotationSizeLimitB
            raise ValueError(f"annotations total {size:,} bytes; at most {256 << 10:,} are allowed")
        return v


class TrainingRun(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["legistra.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrainingRun"]
    metadata: ObjectMeta
    spec: TrainingRunSpec
    status: dict[str, Any] | None = None
