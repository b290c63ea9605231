"""The two Kubeflow job kinds a TrainingRun can run as, and which one a run gets (pure).

PyTorchJob (kubeflow.org/v1, the training-operator, maintained on its 1.9 branch only) and TrainJob
(trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2). A run keeps the backend it started on; before that,
`spec.resources.backend`, else the operator's `backend` setting, decides, and `auto` prefers PyTorchJob where
both are served so that existing installs do not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Literal

BackendName = Literal["pytorchjob", "trainjob"]
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SUSPEND_ANNOTATION = "legistra.io/suspend"  # the suspend value the operator last wrote on the job
Choice = Literal["auto", "pytorchjob", "trainjob"]


@dataclass(frozen=True)
class Backend:
    name: BackendName
    kind: str
    group: str
    version: str
    plural: str
    pod_label: str  # the label the job's controller puts on its pods, naming the job
    container: str  # the trainer's container in those pods
    description: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def suspended(self, job: Mapping[str, Any]) -> bool:
        spec = job.get("spec") or {}
        return bool((spec.get("runPolicy") or {}).get("suspend") if self.name == "pytorchjob" else spec.get("suspend"))

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        """Set the job's suspend, and record it as the operator's last word on it (see `suspend_to_write`)."""
        spec = {"runPolicy": {"suspend": suspend}} if self.name == "pytorchjob" else {"suspend": suspend}
        return {"metadata": {"annotations": {SUSPEND_ANNOTATION: str(suspend).lower()}}, "spec": spec}

    def suspend_to_write(self, job: Mapping[str, Any], wanted: bool) -> bool | None:
        """The suspend value to write on the job, or None to leave it.

        Without Kueue the operator owns `suspend` and keeps it equal to the run's `runPolicy.suspend`. A job in a
        Kueue queue (its queue-name label) shares it: Kueue's webhook suspends the job at creation and Kueue
        unsuspends it on admission and suspends it again on preemption. Resetting it to the run's value on every
        pass would undo each of those decisions (and start a job the quota has not admitted). So the operator
        writes only its own transitions: when the run's value differs from the last one it wrote (the annotation,
        set at build and by every patch of ours)."""
        if not (job.get("metadata", {}).get("labels") or {}).get(QUEUE_LABEL):
            return wanted if self.suspended(job) != wanted else None
        written = (job.get("metadata", {}).get("annotations") or {}).get(SUSPEND_ANNOTATION)
        if written is None:  # built before the annotation: a suspend still goes through, a resume is Kueue's
            return True if wanted and not self.suspended(job) else None
        return wanted if written != str(wanted).lower() else None


BACKENDS: dict[str, Backend] = {
    "pytorchjob": Backend("pytorchjob", "PyTorchJob", "kubeflow.org", "v1", "pytorchjobs",
                          "training.kubeflow.org/job-name", "pytorch", "Kubeflow training-operator (PyTorchJob)"),
    "trainjob": Backend("trainjob", "TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs",
                        "jobset.sigs.k8s.io/jobset-name", "node", "Kubeflow Trainer v2 (TrainJob)"),
}
BY_KIND = {b.kind: b for b in BACKENDS.values()}


def backend_of(job: Mapping[str, Any]) -> Backend:
    return BY_KIND.get(str(job.get("kind")), BACKENDS["pytorchjob"])


@dataclass(frozen=True)
class BackendChoice:
    """The job kind a run gets, and why (`reason` and `message` go into its BackendSelected condition); `backend`
    None: none it may use is served (`message` says what to install)."""

    backend: Backend | None
    reason: str
    message: str


def choose_backend(in_spec: Choice, configured: Choice, served: Set[str], started_on: str | None,
                   runtime_ready: bool = False, runtime: str = "torch-distributed") -> BackendChoice:
    """`served`: backend names whose CRDs the cluster serves; `started_on`: status.backend of a run that has (or
    had) a job, which never changes backend mid-run (an operator upgrade moves no running user); `runtime_ready`:
    the ClusterTrainingRuntime `runtime` exists (Trainer v2 is installed and usable, not only its CRDs).

    `auto` prefers TrainJob where Trainer v2 is usable: Kubeflow Training Operator v1 is deprecated, and Kueue no
    longer enables its kubeflow.org/pytorchjob integration by default."""
    if started_on in BACKENDS:
        b = BACKENDS[started_on]
        return BackendChoice(b, "Recorded", f"{b.kind}, as when this run started (status.backend)")
    wanted = in_spec if in_spec != "auto" else configured
    if wanted != "auto":
        b = BACKENDS[wanted]
        where = "spec.resources.backend" if in_spec != "auto" else "the operator's backend setting"
        if wanted in served:
            return BackendChoice(b, "Requested" if in_spec != "auto" else "Configured", f"{b.kind}: {where} asks "
                                 "for it")
        return BackendChoice(None, "BackendUnavailable", f"{where} asks for {b.kind}, but this cluster serves no "
                             f"{b.api_version} {b.plural}: install {b.description}, or choose another backend")
    if {"pytorchjob", "trainjob"} <= set(served):
        if runtime_ready:
            return BackendChoice(BACKENDS["trainjob"], "TrainerV2Preferred", (
                f"TrainJob: the cluster serves both kinds and ClusterTrainingRuntime {runtime} exists; Kubeflow "
                "Training Operator v1 is deprecated and Kueue enables its PyTorchJob integration only when "
                "configured"))
        return BackendChoice(BACKENDS["pytorchjob"], "NoTrainingRuntime", (
            f"PyTorchJob: the cluster serves both kinds, but ClusterTrainingRuntime {runtime} does not exist (or the "
            "operator may not read it), so a TrainJob could not start"))
    for name in ("trainjob", "pytorchjob"):
        if name in served:
            b = BACKENDS[name]
            return BackendChoice(b, "OnlyServed", f"{b.kind}: the only job kind this cluster serves")
    return BackendChoice(None, "BackendUnavailable", (
        "neither a PyTorchJob (Kubeflow training-operator) nor a TrainJob (Kubeflow Trainer v2) CRD is served by "
        "this cluster; install one of them"))
