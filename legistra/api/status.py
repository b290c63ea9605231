"""TrainingRun status: what `kubectl get`, Argo CD and Flux read."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from legistra.api.spec import Spec

# The condition types the operator writes (the phase says Running / Succeeded / Suspended).
ConditionType = Literal["Ready", "JobCreated", "Failed", "SpecChangeRefused", "CheckpointStorage", "Stalled",
                        "BackendSelected", "QueueIntegration"]
Phase = Literal["Pending", "Running", "Retrying", "Succeeded", "Failed", "Suspended"]


class Condition(Spec):
    type: ConditionType = Field(description="Ready (for Argo CD / Flux), JobCreated, Failed, SpecChangeRefused, "
                                "CheckpointStorage (False: the checkpoint volume cannot be provided, and why), Stalled "
                                "(True: progress stood still for spec.training.stallTimeout), BackendSelected (which "
                                "job kind the run got, and why) or QueueIntegration (Unknown: Kueue admits a "
                                "PyTorchJob only where its integration is enabled).")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="Spec generation this condition was computed from.")


class Progress(Spec):
    step: int = Field(0, ge=0)
    total_steps: int = Field(0, ge=0)
    epoch: float | None = None
    percent: int = Field(0, ge=0, le=100)


class AttemptUsage(Spec):
    attempt: int = Field(ge=1)
    gpus: int = Field(0, ge=0, description="GPUs the attempt's job requested (nodes x gpusPerNode).")
    wall_seconds: float = Field(0, ge=0, description="Seconds the attempt ran (phase Running).")
    gpu_seconds: float = Field(0, ge=0, description="wallSeconds x gpus.")


class Usage(Spec):
    gpus: int = Field(0, ge=0, description="GPUs the current attempt requested (nodes x gpusPerNode).")
    gpu_seconds: float = Field(0, ge=0, description="GPU-seconds of every finished stretch of Running, all attempts.")
    wall_seconds: float = Field(0, ge=0, description="Seconds spent Running, all attempts.")
    running_since: str | None = Field(
        None, description="While Running: since when (RFC 3339); the stretch is added to the totals when it ends.")
    attempts: list[AttemptUsage] = Field(default_factory=list, description="The same, per attempt.")
    estimated_cost: float | None = Field(
        None, ge=0, description="gpuSeconds at the operator's price per GPU-hour of the run's GPU product "
        "(gpuPrices), when it has one.")


class MlflowRef(Spec):
    run_id: str | None = None
    experiment_id: str | None = None
    url: str | None = None
    note: str | None = Field(None, description="Why the operator does not read this run's tracking server (its own "
                             "server behind its own credentials); progress then comes from the job.")


class ModelRef(Spec):
    name: str | None = None
    version: int | None = None
    uri: str | None = None
    alias: str | None = None


class TrainingRunStatus(Spec):
    phase: Phase = Field(
        "Pending", description="Pending, Running, Retrying (a job failed; the next attempt is scheduled), Succeeded, "
        "Failed or Suspended.")
    attempt: int | None = Field(None, ge=1, description="Which PyTorchJob attempt this is (see runPolicy.maxAttempts).")
    preemptions: int | None = Field(
        None, ge=0, description="Attempts that ended on a termination signal after saving (not counted against "
        "maxAttempts).")
    retry_at: str | None = Field(None, description="When the next attempt starts, while Retrying (RFC 3339).")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions, Ready among them.")
    observed_generation: int | None = Field(None, description="Last spec generation the operator acted on.")
    backend: str | None = Field(None, description="pytorchjob or trainjob: the kind of job this run uses.")
    job_name: str | None = Field(None, description="The PyTorchJob or TrainJob running this TrainingRun.")
    job_delete_at: str | None = Field(
        None, description="When the operator deletes the finished TrainJob (runPolicy.ttlSecondsAfterFinished; "
        "Trainer v2 has no TTL of its own).")
    start_time: str | None = None
    completion_time: str | None = None
    progress: Progress | None = Field(None, description="Training progress reported by the trainer.")
    progressed_at: str | None = Field(
        None, description="When this attempt's progress (or its trainer's start) last moved (RFC 3339): what "
        "spec.training.stallTimeout is counted from.")
    usage: Usage | None = Field(
        None, description="GPU-seconds and wall time from the run's own Running stretches (TrainJobs carry no start "
        "or completion time), and their estimated cost.")
    restarts: int | None = Field(
        None, ge=0, description="In-place restarts of the trainer's containers in this attempt (restartPolicy "
        "OnFailure), as last read from its pods.")
    trainer_started_at: str | None = Field(
        None, description="When the trainer (rank 0) last started, as it told MLflow (RFC 3339); a new value "
        "after progress means it crashed and restarted.")
    key_metric: str | None = Field(None, description="The promotion (or task) metric, e.g. 'f1_macro=0.812'.")
    metrics: dict[str, float] | None = Field(None, description="Final evaluation metrics.")
    mlflow: MlflowRef | None = None
    model: ModelRef | None = None
    message: str | None = Field(None, description="Why the run is in its phase, in one line.")
