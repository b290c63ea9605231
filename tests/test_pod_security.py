"""Every pod the chart and the operator create passes the Kubernetes "restricted" Pod Security Standard
(tests/pod_security.py holds its rules), and the checker itself catches each rule broken."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from kit.apiserver import SHARED_CANDIDATES
from kit.harness import trainjob_node_pod
from legistra.api.validation import parse_training_run
from legistra.operator.build import build_children
from legistra.operator.config import JobDefaults
from tests.pod_security import violations
from tests.test_operator_decisions import run_doc
from tests.test_shipping import render

REFERENCE = next((p / "reference" for p in SHARED_CANDIDATES if (p / "reference").is_dir()), None)

COMPLIANT: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "image": "i", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "v", "emptyDir": {}}],
}


@pytest.mark.parametrize(("path", "value", "rule"), [
    (("hostNetwork",), True, "spec.hostNetwork: host namespaces"),
    (("hostPID",), True, "spec.hostPID: host namespaces"),
    (("hostIPC",), True, "spec.hostIPC: host namespaces"),
    (("securityContext", "windowsOptions"), {"hostProcess": True}, "HostProcess pods"),
    (("volumes",), [{"name": "h", "hostPath": {"path": "/"}}], "hostPath volumes"),
    (("volumes",), [{"name": "n", "nfs": {"server": "s", "path": "/"}}], "volume type ['nfs']"),
    (("securityContext", "sysctls"), [{"name": "kernel.msgmax", "value": "1"}], "not a safe sysctl"),
    (("securityContext", "seLinuxOptions"), {"type": "spc_t"}, "spc_t is not allowed"),
    (("securityContext", "seLinuxOptions"), {"user": "root"}, "user and role"),
    (("securityContext", "appArmorProfile"), {"type": "Unconfined"}, "Unconfined is not allowed"),
    (("securityContext", "runAsUser"), 0, "runAsUser: 0"),
    (("securityContext", "runAsNonRoot"), False, "runAsNonRoot: must not be false"),
    (("securityContext", "seccompProfile"), {"type": "Unconfined"}, "seccompProfile.type: Unconfined"),
    (("securityContext", "seccompProfile"), None, "seccompProfile.type must be"),
    (("containers", 0, "securityContext", "privileged"), True, "privileged containers"),
    (("containers", 0, "securityContext", "procMount"), "Unmasked", "procMount: must be Default"),
    (("containers", 0, "ports"), [{"containerPort": 80, "hostPort": 80}], "hostPort 80"),
    (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation"),
    (("containers", 0, "securityContext", "capabilities"), {"drop": ["NET_RAW"]}, "must include ALL"),
    (("containers", 0, "securityContext", "capabilities"), {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
     "only NET_BIND_SERVICE"),
    (("containers", 0, "securityContext", "runAsUser"), 0, "runAsUser: 0"),
    (("containers", 0, "securityContext", "runAsNonRoot"), False, "runAsNonRoot: must not be false"),
])
def test_the_checker_catches_each_rule(path: tuple[Any, ...], value: Any, rule: str) -> None:
    assert violations(COMPLIANT) == []
    pod = copy.deepcopy(COMPLIANT)
    target: Any = pod
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    found = violations(pod)
    assert any(rule in v for v in found), found


def test_a_pod_without_run_as_non_root_anywhere_is_refused() -> None:
    pod = copy.deepcopy(COMPLIANT)
    del pod["securityContext"]["runAsNonRoot"]
    assert any("runAsNonRoot must be true" in v for v in violations(pod))
    pod["containers"][0]["securityContext"]["runAsNonRoot"] = True  # on every container instead: admitted
    assert violations(pod) == []


@pytest.mark.parametrize("values", [{}, {"metrics": {"serviceMonitor": {"enabled": True}}, "replicaCount": 1}])
def test_the_charts_pods_are_restricted(values: dict[str, Any]) -> None:
    pods = [d["spec"]["template"]["spec"] for d in render(values) if d["kind"] == "Deployment"]
    assert pods
    for pod in pods:
        assert violations(pod) == []


RUNS = {
    "one node": {},
    "three nodes, GPUs, a priority class": {"resources": {"nodes": 3, "gpusPerNode": 8,
                                                           "priorityClassName": "training"}},
    "checkpoints in S3": {"checkpoints": {"uri": "s3://ckpt/runs"}},
    "W&B with a key": {"tracking": {"wandb": {"project": "p", "apiKeySecret": {"name": "wandb", "key": "k"}}}},
}


@pytest.mark.parametrize("spec", RUNS.values(), ids=list(RUNS))
def test_the_operators_training_pods_are_restricted(spec: dict[str, Any]) -> None:
    run = parse_training_run(run_doc(**spec))
    defaults = JobDefaults(s3_secret="legistra-s3")
    job = next(o for o in build_children(run, defaults, 1, "pytorchjob") if o["kind"] == "PyTorchJob")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert violations(replica["template"]["spec"]) == []
    trainjob = next(o for o in build_children(run, defaults, 1, "trainjob") if o["kind"] == "TrainJob")
    assert violations(runtime_node_pod(trainjob)) == []


def runtime_node_pod(trainjob: dict[str, Any]) -> dict[str, Any]:
    """The node pod Trainer v2.3 makes from the shipped torch-distributed runtime and the TrainJob."""
    if REFERENCE is None:
        pytest.skip("no shared/reference beside the checkout")
    runtime = yaml.safe_load((REFERENCE / "trainer.kubeflow.org_runtime_torch-distributed.yaml").read_text())
    base = next(rj for rj in runtime["spec"]["template"]["spec"]["replicatedJobs"] if rj["name"] == "node")
    return trainjob_node_pod(trainjob, base["template"]["spec"]["template"]["spec"])
