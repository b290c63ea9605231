"""TrainingSchedule: retraining on a calendar and/or when the training data changed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from legistra.api.spec import Spec, TrainingRunSpec


class RunTemplateMeta(Spec):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class RunTemplate(Spec):
    metadata: RunTemplateMeta = Field(default_factory=RunTemplateMeta)
    spec: TrainingRunSpec


class DataTrigger(Spec):
    enabled: bool = Field(True, description="Start a run only when the training data changed since the last one.")
    check_validation: bool = Field(False, description="Count changes of the validation data too.")


class TrainingScheduleSpec(Spec):
    schedule: str = Field(min_length=9, description="Cron expression (5 fields), e.g. '0 3 * * 1'.")
    time_zone: str = Field("UTC", description="IANA time zone the cron expression is read in.")
    suspend: bool = Field(False, description="Create no runs while true.")
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = Field(
        "Forbid", description="What to do when a run is still active at the next tick."
    )
    starting_deadline_seconds: int | None = Field(
        None, ge=1, description="Skip a tick that could not start within this many seconds."
    )
    data_trigger: DataTrigger | None = Field(None, description="Gate each tick on new training data.")
    successful_runs_history_limit: int = Field(3, ge=0, le=100, description="Finished runs kept.")
    failed_runs_history_limit: int = Field(1, ge=0, le=100, description="Failed runs kept.")
    template: RunTemplate = Field(description="The TrainingRun created at each tick.")


class TrainingScheduleStatus(Spec):
    last_schedule_time: str | None = Field(None, description="The last tick that created (or skipped) a run.")
    last_run_name: str | None = None
    last_data_fingerprint: str | None = Field(None, description="Data checksums/ETags seen by the last run.")
    active: list[str] | None = Field(None, description="Runs of this schedule not finished yet.")
    message: str | None = None
    conditions: list[dict[str, Any]] | None = None


class TrainingSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["legistra.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrainingSchedule"]
    metadata: dict[str, Any]
    spec: TrainingScheduleSpec
    status: dict[str, Any] | None = None
