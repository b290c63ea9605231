"""Pure decisions: a TrainingRun -> the objects that run it (ConfigMap, checkpoint PVC, PyTorchJob).

Nothing here talks to the API server; the kopf handlers create what these functions return, and
`legistra render` prints it for review and GitOps diffs.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import ValidationError

from legistra.api.formats import duration_seconds
from legistra.api.spec import GROUP_VERSION, TrainingRun, TrainingRunSpec
from legistra.contract import (
    ENV_CACHE_DIR,
    ENV_CHECKPOINT_URI,
    ENV_COLLECTIVE_TIMEOUT,
    ENV_OUTPUT_DIR,
    ENV_PROGRESS,
    ENV_REGISTRY_URI,
    ENV_TERMINATION_LOG,
    ENV_TRACKING_URI,
    MLFLOW_CREDENTIALS,
    MUTABLE_RUN_POLICY,
    TERMINATION_LOG_PATH,
    checkpoint_uri,
    registry_uri,
    run_document,
    tracking_uri,
    trainer_argv,
)
from legistra.operator.attempts import ATTEMPT_ANNOTATION
from legistra.operator.backends import BACKENDS, QUEUE_LABEL, SUSPEND_ANNOTATION, BackendName
from legistra.operator.config import JobDefaults

CONFIG_MOUNT = "/etc/legistra"
OUTPUT_MOUNT = "/var/run/legistra"
MASTER_PORT = 23456
LABEL_PREFIX = "legistra.io"
SPEC_HASH_ANNOTATION = f"{LABEL_PREFIX}/spec-hash"
MANAGED_BY = {"app.kubernetes.io/managed-by": "legistra-operator"}


def spec_hash(spec_wire: dict[str, Any]) -> str:
    """Hash of everything that shapes the job; the mutable fields are left out. Jobs carry it across operator
    versions, so the bytes hashed never change: the spec's JSON with sorted keys. Only `runPolicy` is copied to
    drop fields (a deep copy of the whole spec cost a JSON round trip per reconcile)."""
    shaped = dict(spec_wire)
    policy = shaped.get("runPolicy")
    if isinstance(policy, dict):
        shaped["runPolicy"] = {k: v for k, v in policy.items() if k not in MUTABLE_RUN_POLICY}
    return hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()[:16]


def label_value(text: str) -> str:
    """A valid label value (63 chars of [A-Za-z0-9._-], alphanumeric at both ends)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[-63:]
    return clean.strip("-._") or "unknown"


def run_labels(run: TrainingRun) -> dict[str, str]:
    return {
        **MANAGED_BY,
        f"{LABEL_PREFIX}/run": run.metadata.name,
        f"{LABEL_PREFIX}/task": run.spec.task,
        f"{LABEL_PREFIX}/model": label_value(run.spec.model.name),
    }


def owner_reference(run: TrainingRun) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "TrainingRun",
        "name": run.metadata.name,
        "uid": run.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(run: TrainingRun, name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**run_labels(run), **(extra_labels or {})},
        "ownerReferences": [owner_reference(run)],
    }
    if run.metadata.namespace:
        meta["namespace"] = run.metadata.namespace
    return meta


def config_name(run: TrainingRun) -> str:
    return f"{run.metadata.name}-config"


def pvc_name(run: TrainingRun) -> str:
    return f"{run.metadata.name}-checkpoints"


def build_configmap(run: TrainingRun) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(run, config_name(run)),
        "data": {"run.json": json.dumps(run_document(run), indent=2, sort_keys=True)},
    }


def build_pvc(run: TrainingRun, defaults: JobDefaults) -> dict[str, Any]:
    """Checkpoints outlive pods: a restarted pod resumes from here and loses at most one save interval."""
    spec: dict[str, Any] = {
        # Every rank writes its ZeRO shard: several nodes need a volume they can all mount.
        "accessModes": ["ReadWriteMany" if run.spec.resources.nodes > 1 else "ReadWriteOnce"],
        "resources": {"requests": {"storage": defaults.checkpoint_size}},
    }
    if defaults.checkpoint_storage_class:
        spec["storageClassName"] = defaults.checkpoint_storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(run, pvc_name(run)), "spec": spec}


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key, **({"optional": True} if optional else {})}
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def stall_seconds(spec: TrainingRunSpec, defaults: JobDefaults) -> int:
    """The run's stall timeout in seconds: its spec.training.stallTimeout, else the operator's (0: off)."""
    return duration_seconds(spec.training.stall_timeout or defaults.stall_timeout)


def trainer_env(run: TrainingRun, defaults: JobDefaults) -> list[dict[str, Any]]:
    spec = run.spec
    env: list[dict[str, Any]] = [
        {"name": ENV_OUTPUT_DIR, "value": f"{OUTPUT_MOUNT}/output"},
        {"name": ENV_CACHE_DIR, "value": f"{OUTPUT_MOUNT}/cache"},
        {"name": "HF_HOME", "value": f"{OUTPUT_MOUNT}/cache/hf"},
        {"name": "HOME", "value": "/tmp"},
        {"name": ENV_PROGRESS, "value": "log"},
        # A dead peer ends a collective in an error (and the attempt in a restart) instead of a hang.
        {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": ENV_TERMINATION_LOG, "value": TERMINATION_LOG_PATH},
    ]
    stall = stall_seconds(spec, defaults)
    if stall:
        env.append({"name": ENV_COLLECTIVE_TIMEOUT, "value": str(stall)})
    tracking = tracking_uri(spec, defaults.mlflow_tracking_uri)
    if tracking:
        env.append({"name": ENV_TRACKING_URI, "value": tracking})
        # Credentials by reference only: MLflow's client reads these variables (each key may be absent).
        secret = spec.tracking.mlflow.credentials_secret or defaults.mlflow_credentials_secret
        if secret:
            env.extend(_secret_env(name, secret, key, optional=True) for name, key in MLFLOW_CREDENTIALS.items())
    if spec.model.token_secret is not None:
        # huggingface_hub reads HF_TOKEN for gated and private models; it never reaches run.json or a log.
        env.append(_secret_env("HF_TOKEN", spec.model.token_secret.name, spec.model.token_secret.key))
    registry = registry_uri(spec, defaults.registry_uri)
    if registry:
        env.append({"name": ENV_REGISTRY_URI, "value": registry})
    if defaults.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": defaults.s3_endpoint})
    if defaults.s3_secret:
        env.append(_secret_env("AWS_ACCESS_KEY_ID", defaults.s3_secret, "AWS_ACCESS_KEY_ID"))
        env.append(_secret_env("AWS_SECRET_ACCESS_KEY", defaults.s3_secret, "AWS_SECRET_ACCESS_KEY"))
    ckpt = object_storage(run, defaults)
    if ckpt:
        env.append({"name": ENV_CHECKPOINT_URI, "value": ckpt})
    # torchrun forwards SIGTERM to the ranks and kills them after this long: leave them the grace period to
    # save and upload (less a margin for torchrun itself); the variable is torchrun's own.
    grace = spec.resources.termination_grace_period_seconds
    env.append({"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(max(10, grace - 15))})
    wandb = spec.tracking.wandb
    if wandb is not None:
        if wandb.api_key_secret is not None:
            env.append(_secret_env("WANDB_API_KEY", wandb.api_key_secret.name, wandb.api_key_secret.key))
        else:
            env.append({"name": "WANDB_MODE", "value": "offline"})
    env.extend({"name": k, "value": v} for k, v in sorted(defaults.extra_env.items()))
    return env


def _resources(run: TrainingRun) -> dict[str, Any]:
    r = run.spec.resources
    limits: dict[str, str] = {}
    if r.gpus_per_node:
        limits["nvidia.com/gpu"] = str(r.gpus_per_node)
    if r.cpu:
        limits["cpu"] = r.cpu
    if r.memory:
        limits["memory"] = r.memory
    return {"limits": limits, "requests": dict(limits)} if limits else {}


# The trainer's command: torchrun reads PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR / ..., which both the
# training-operator and Trainer v2's torch runtime inject. Spec values never reach a shell: the trainer reads
# them from the mounted run.json.
TRAINER_COMMAND = ["torchrun"]
TRAINER_ARGS = trainer_argv(f"{CONFIG_MOUNT}/run.json", f"{OUTPUT_MOUNT}/output", OUTPUT_MOUNT)
VOLUME_MOUNTS = [
    {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
    {"name": "checkpoints", "mountPath": OUTPUT_MOUNT},
    {"name": "dshm", "mountPath": "/dev/shm"},
    {"name": "tmp", "mountPath": "/tmp"},
]
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def object_storage(run: TrainingRun, defaults: JobDefaults) -> str | None:
    """Where the run keeps its checkpoints when not on a volume: its spec's URI, else the operator's."""
    return checkpoint_uri(run.spec, defaults.checkpoint_uri)


def storage_warning(run: TrainingRun, defaults: JobDefaults) -> str | None:
    """A multi-node run that needs a ReadWriteMany volume on a cluster said to have none."""
    if run.spec.resources.nodes > 1 and not object_storage(run, defaults) and not defaults.checkpoint_rwx:
        return (f"spec.checkpoints.uri: this run has {run.spec.resources.nodes} nodes and no checkpoint URI, so "
                "it needs a ReadWriteMany volume, which this cluster does not provide (the PVC would stay "
                "Pending); set spec.checkpoints.uri to an s3:// prefix")
    return None


def kueue_warning(queue: str) -> str:
    """What `validate` and the status say about a queued PyTorchJob."""
    return (f"queued in Kueue's {queue} as a PyTorchJob: Kueue admits PyTorchJobs only where its "
            "kubeflow.org/pytorchjob integration is enabled (off by default since kueue#12606, June 2026); if "
            "the run stays Queued, set spec.resources.backend: trainjob or ask the cluster's admin to enable it")


def queue_warning(run: TrainingRun, defaults: JobDefaults) -> str | None:
    """`legistra validate`'s word on a queued run that may become a PyTorchJob (with `auto`, the operator decides
    from what the cluster serves; its status says which it took)."""
    r = run.spec.resources
    wanted = r.backend if r.backend != "auto" else defaults.backend
    if not r.queue_name or wanted == "trainjob":
        return None
    return kueue_warning(r.queue_name) + ("" if wanted == "pytorchjob" else
                                          " (this applies if backend auto picks PyTorchJob on the cluster)")


def memory_refusal(run: TrainingRun, defaults: JobDefaults) -> str | None:
    """Why a run cannot fit the GPU it will get, when the operator knows the GPU (the run's nvidia.com/gpu.product
    node selector, else its default) and the model's shape (a well-known model); None when it fits or is unknown."""
    from legistra.lora import lora_targets
    from legistra.memory import fit, gpu_memory, gpu_of, known_shape

    product = gpu_of(run.spec, defaults.gpu_product)
    gpu = gpu_memory(product) if product else None
    shape = known_shape(run.spec.model.name)
    if gpu is None or shape is None or run.spec.resources.gpus_per_node == 0:
        return None
    verdict = fit(run.spec, shape, lora_targets(shape.model_type, run.spec.lora), *gpu)
    if verdict.fits:
        return None
    return f"spec.training.batchSize: {verdict.message()}"


def length_refusal(run: TrainingRun) -> str | None:
    """spec.data.maxLength beyond a well-known model's positions (the operator reads no model files)."""
    from legistra.memory import known_config, length_problem

    cfg = known_config(run.spec.model.name)
    return length_problem(run.spec, cfg, "legistra's list of well-known models") if cfg is not None else None


def volumes(run: TrainingRun, defaults: JobDefaults) -> list[dict[str, Any]]:
    shm: dict[str, Any] = {"medium": "Memory"}
    if run.spec.resources.shm_size:
        shm["sizeLimit"] = run.spec.resources.shm_size
    # With object storage, working checkpoints live on the node (uploaded after each save): any node can
    # resume, and no ReadWriteMany class is needed.
    work: dict[str, Any] = (
        {"emptyDir": {"sizeLimit": run.spec.checkpoints.local_size}} if object_storage(run, defaults)
        else {"persistentVolumeClaim": {"claimName": pvc_name(run)}})
    return [
        {"name": "config", "configMap": {"name": config_name(run)}},
        {"name": "checkpoints", **work},
        {"name": "dshm", "emptyDir": shm},
        {"name": "tmp", "emptyDir": {}},
    ]


def scheduling(run: TrainingRun, defaults: JobDefaults) -> dict[str, Any]:
    """Pod-spec fields that place the pods: service account, node selector, tolerations."""
    r = run.spec.resources
    out: dict[str, Any] = {}
    sa = r.service_account_name or defaults.service_account
    if sa:
        out["serviceAccountName"] = sa
    if r.node_selector:
        out["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        out["tolerations"] = [t.wire() for t in r.tolerations]
    return out


def pod_template(run: TrainingRun, defaults: JobDefaults) -> dict[str, Any]:
    r = run.spec.resources
    container: dict[str, Any] = {
        "name": BACKENDS["pytorchjob"].container,  # the training-operator finds the container by this name
        "image": r.image or defaults.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": TRAINER_COMMAND,
        "args": TRAINER_ARGS,
        "env": trainer_env(run, defaults),
        "ports": [{"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}],
        # The trainer's one-line reason for a failure a retry would repeat; the operator reads it from the pod.
        "terminationMessagePath": TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": VOLUME_MOUNTS,
        "securityContext": CONTAINER_SECURITY,
    }
    res = _resources(run)
    if res:
        container["resources"] = res
    pod: dict[str, Any] = {"containers": [container], "securityContext": POD_SECURITY,
                           "volumes": volumes(run, defaults), **scheduling(run, defaults),
                           "terminationGracePeriodSeconds": r.termination_grace_period_seconds}
    if r.priority_class_name:
        pod["priorityClassName"] = r.priority_class_name
    return {"metadata": {"labels": run_labels(run)}, "spec": pod}


def _job_meta(run: TrainingRun, attempt: int) -> dict[str, Any]:
    """Either job's metadata: the run's labels (and Kueue's queue label), the spec hash and the attempt."""
    queue = run.spec.resources.queue_name
    meta = _meta(run, run.metadata.name, {QUEUE_LABEL: queue} if queue else None)
    meta["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(run.spec.wire()), ATTEMPT_ANNOTATION: str(attempt)}
    if queue:  # Kueue shares suspend with the operator: what the operator said last (backends.suspend_to_write)
        meta["annotations"][SUSPEND_ANNOTATION] = str(run.spec.run_policy.suspend).lower()
    return meta


def build_pytorchjob(run: TrainingRun, defaults: JobDefaults, attempt: int = 1) -> dict[str, Any]:
    spec, r = run.spec, run.spec.resources
    template = pod_template(run, defaults)
    replicas: dict[str, Any] = {
        # OnFailure: a crashed rank restarts in place and resumes from the last checkpoint on the PVC.
        # (ExitCode ignores backoffLimit: kubeflow/trainer#2045.)
        "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template},
    }
    if r.nodes > 1:
        replicas["Worker"] = {"replicas": r.nodes - 1, "restartPolicy": "OnFailure", "template": template}
    rp = spec.run_policy
    run_policy: dict[str, Any] = {
        "backoffLimit": rp.backoff_limit,
        "cleanPodPolicy": rp.clean_pod_policy,
        "suspend": rp.suspend,
    }
    if rp.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = rp.active_deadline_seconds
    if rp.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = rp.ttl_seconds_after_finished
    if r.priority_class_name:
        run_policy["schedulingPolicy"] = {"priorityClass": r.priority_class_name}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _job_meta(run, attempt),
        "spec": {
            "nprocPerNode": str(max(1, r.gpus_per_node)),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


RUNTIME_PATCH_MANAGER = "legistra.io/operator"


def build_trainjob(run: TrainingRun, defaults: JobDefaults, attempt: int = 1) -> dict[str, Any]:
    """The same run as a Trainer v2 TrainJob on a ClusterTrainingRuntime (torch-distributed by default).

    What a TrainJob cannot say itself (volumes, security contexts, placement) goes through `runtimePatches`
    (Trainer >= v2.2). Not expressible there: the pods' priorityClassName (set it in the runtime, or use a
    Kueue WorkloadPriorityClass) and the termination-message policy (the default path is the one the trainer
    writes)."""
    spec, r = run.spec, run.spec.resources
    node = BACKENDS["trainjob"].container
    trainer: dict[str, Any] = {
        "image": r.image or defaults.trainer_image,
        "command": TRAINER_COMMAND,
        "args": TRAINER_ARGS,
        "env": trainer_env(run, defaults),
        "numNodes": r.nodes,
        "numProcPerNode": max(1, r.gpus_per_node),
    }
    res = _resources(run)
    if res:
        trainer["resourcesPerNode"] = res
    pod: dict[str, Any] = {
        "containers": [{"name": node, "volumeMounts": VOLUME_MOUNTS, "securityContext": CONTAINER_SECURITY}],
        "securityContext": POD_SECURITY,
        "volumes": volumes(run, defaults),
        **scheduling(run, defaults),
        "terminationGracePeriodSeconds": r.termination_grace_period_seconds,
    }
    patch = {"manager": RUNTIME_PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": node, "template": {"spec": {"template": {"metadata": {"labels": run_labels(run)}, "spec": pod}}}},
    ]}}}}
    job_spec: dict[str, Any] = {
        "runtimeRef": {"name": r.training_runtime or defaults.training_runtime},
        "trainer": trainer,
        "runtimePatches": [patch],
        "suspend": spec.run_policy.suspend,
    }
    if spec.run_policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    return {"apiVersion": BACKENDS["trainjob"].api_version, "kind": "TrainJob",
            "metadata": _job_meta(run, attempt), "spec": job_spec}


def build_children(run: TrainingRun, defaults: JobDefaults, attempt: int = 1,
                   backend: BackendName = "pytorchjob") -> list[dict[str, Any]]:
    """In creation order: the job last, so its pods never start without their config and volume (none when
    checkpoints go to object storage)."""
    build = build_trainjob if backend == "trainjob" else build_pytorchjob
    volume = [] if object_storage(run, defaults) else [build_pvc(run, defaults)]
    return [build_configmap(run), *volume, build(run, defaults, attempt)]


def changed_paths(old: Any, new: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Leaf paths that differ between two wire specs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, ...]] = []
        for key in sorted(set(old) | set(new)):
            out.extend(changed_paths(old.get(key), new.get(key), (*prefix, key)))
        return out
    return [] if old == new else [prefix]


def as_current_schema(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec written by an earlier operator version, as the current schema reads it: fields added since
    then get their defaults, so an upgrade never looks like a user's edit. A spec the current schema cannot
    read is compared as it is."""
    try:
        return TrainingRunSpec.model_validate(spec).wire()
    except ValidationError:
        return spec


def refused_changes(applied: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """Spec fields changed since the job was built that cannot be applied to a running job.

    `applied` is the spec in the job's run.json, possibly written by an older operator."""
    allowed = {("runPolicy", mutable) for mutable in MUTABLE_RUN_POLICY}
    return [".".join(p) for p in changed_paths(as_current_schema(applied), desired) if p not in allowed]
