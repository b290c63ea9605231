"""`legistra logs RUN [-f] [--rank N]`: a run's training logs, through Kubeflow's own client.

A PyTorchJob's pods are found and read by `kubeflow-training`'s `TrainingClient` (the master by default, or
the pod that holds rank N); a TrainJob's through the same Kubernetes client, by its JobSet's labels. The
kubeconfig is read by the `kubernetes` package: exec plugins, merged KUBECONFIG files, `--context`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
# Trainer v2.3's torch plugin runs all nodes as pods of one Indexed Job: a node's rank is its pod's completion
# index, which the Job controller writes on every such pod as this annotation (and, from Kubernetes 1.28, label).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class Replica:
    """Where rank N runs: PyTorchJob node 0 is the Master, node k the Worker k-1; a TrainJob's node k is the pod of
    completion index k."""

    replica_type: str  # "master" or "worker" (PyTorchJob)
    index: int
    node: int


def replica_of(rank: int, nodes: int, procs_per_node: int) -> Replica:
    """The pod of global rank `rank` (torchrun numbers ranks node by node)."""
    per = max(1, procs_per_node)
    node = rank // per
    if rank < 0 or node >= nodes:
        raise ValueError(f"--rank {rank}: this run has {nodes * per} ranks (0-{nodes * per - 1})")
    return Replica("master", 0, node) if node == 0 else Replica("worker", node - 1, node)


def show_logs(run: dict[str, Any], rank: int | None, follow: bool, kubeconfig: str | None,
              context: str | None) -> int:
    from kubernetes.config.config_exception import ConfigException

    spec, status = run["spec"], run.get("status") or {}
    ns, name = run["metadata"]["namespace"], run["metadata"]["name"]
    job = status.get("jobName") or name
    resources = spec.get("resources") or {}
    try:
        replica = replica_of(rank, int(resources.get("nodes", 1)), int(resources.get("gpusPerNode", 1))) \
            if rank is not None else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if status.get("backend") == "trainjob":
            return _trainjob_logs(ns, job, replica, follow, kubeconfig, context)
        from kubeflow.training import TrainingClient

        client = TrainingClient(config_file=kubeconfig, context=context, namespace=ns, job_kind="PyTorchJob")
        logs, _ = client.get_job_logs(
            job, namespace=ns, is_master=replica is None,
            replica_type=replica.replica_type if replica else None,
            replica_index=replica.index if replica else None, follow=follow)
    except ConfigException as exc:
        print(f"error: kubeconfig: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {job}: {exc}", file=sys.stderr)
        return 1
    if not logs:
        where = f"rank {rank}'s pod" if replica else "its master pod"
        print(f"error: no logs for {ns}/{name} yet: {where} does not exist or has not started", file=sys.stderr)
        return 1
    if not follow:  # the client printed every line already when following
        for pod, text in logs.items():
            if len(logs) > 1:
                print(f"==> {pod} <==")
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def _trainjob_logs(ns: str, job: str, replica: Replica | None, follow: bool, kubeconfig: str | None,
                   context: str | None) -> int:
    from kubernetes import client, config

    config.load_kube_config(config_file=kubeconfig, context=context)
    core = client.CoreV1Api()
    node = replica.node if replica else 0
    selector = f"{JOBSET_LABEL}={job},{REPLICATED_JOB_LABEL}=node"
    pods = [p for p in core.list_namespaced_pod(ns, label_selector=selector).items
            if (p.metadata.annotations or {}).get(COMPLETION_INDEX) == str(node)]
    if not pods:
        print(f"error: no pod of TrainJob {ns}/{job} is node {node} ({selector}, {COMPLETION_INDEX}={node})",
              file=sys.stderr)
        return 1
    # A node restarted by its Job has a new pod beside the failed one: the newest is the one training.
    pod = max(pods, key=lambda p: str(p.metadata.creation_timestamp or "")).metadata.name
    if follow:
        stream = core.read_namespaced_pod_log(pod, ns, container="node", follow=True, _preload_content=False)
        for chunk in stream.stream():
            sys.stdout.write(chunk.decode(errors="replace"))
    else:
        sys.stdout.write(core.read_namespaced_pod_log(pod, ns, container="node"))
    return 0
