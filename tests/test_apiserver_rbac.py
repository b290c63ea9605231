"""The operator as a cluster runs it: the Helm chart's ServiceAccount and ClusterRole, a token from the
TokenRequest API, the Deployment's own arguments and environment (cluster-wide, peering on), two replicas.
Against the real kube-apiserver, which enforces RBAC exactly as a cluster does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.apiserver import ApiServer
from kit.harness import OperatorProcess
from kit.ports import free_port
from tests.conftest import EXAMPLES
from tests.test_operator_config import deployment_env
from tests.test_shipping import render

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]


def wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise TimeoutError(what)


def token_kubeconfig(api: ApiServer, path: Path, namespace: str, service_account: str) -> Path:
    """A kubeconfig that is the ServiceAccount: a bound token from the TokenRequest API, never the admin's."""
    token = api.kubectl("-n", namespace, "create", "token", service_account, "--duration", "1h").stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "envtest", "cluster": {"server": api.server, "certificate-authority": api.ca_file}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "envtest", "user": "sa"}}],
    }))
    return path


def apply_chart_identity(api: ApiServer, docs: list[dict[str, Any]], namespace: str) -> str:
    """The chart's ServiceAccount, ClusterRole and ClusterRoleBinding (`docs`, rendered for `namespace`) applied,
    the cluster-scoped ones prefixed with `<namespace>-` so that each test leaves the chart's own names to the
    others; the ServiceAccount's name."""
    identity = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    for d in identity:
        if d["kind"] == "ServiceAccount":
            d["metadata"]["namespace"] = namespace
        else:  # the operator's role and the runtimes' read: both keep their own, prefixed names
            d["metadata"]["name"] = f"{namespace}-{d['metadata']['name']}"
            if d["kind"] == "ClusterRoleBinding":
                d["roleRef"]["name"] = f"{namespace}-{d['roleRef']['name']}"
    api.apply(identity)
    return str(next(d for d in identity if d["kind"] == "ServiceAccount")["metadata"]["name"])


def replica(api: ApiServer, tmp_path: Path, pod: str, deployment: dict[str, Any], kubeconfig: Path
            ) -> OperatorProcess:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [a if not a.startswith("http://0.0.0.0:") else f"http://127.0.0.1:{free_port()}/healthz"
            for a in container["args"]]
    env = {name: str(e["value"]) for name, e in deployment_env([deployment]).items() if "value" in e}
    # POD_ID comes from the downward API in the chart; a shorter peering lifetime keeps the takeover quick.
    env.update(POD_ID=pod, LEGISTRA_PEERING_LIFETIME="8")
    return OperatorProcess(kubeconfig, "", env, tmp_path / f"{pod}.log", args=args).start()


def test_two_replicas_with_only_the_charts_rbac_act_once_and_hand_over(apiserver: ApiServer,
                                                                        tmp_path: Path) -> None:
    api = apiserver
    api.install_crds()
    system = api.namespace("rbac-system")  # the session's server is shared: not the docs' legistra-system
    docs = render({}, namespace=system)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert deployment_env([deployment])["LEGISTRA_PEERING"]["value"]  # peering on, as installed
    sa = apply_chart_identity(api, docs, system)
    kubeconfig = token_kubeconfig(api, tmp_path / "sa.kubeconfig", system, sa)
    ns = api.namespace("rbac")
    # Really the ServiceAccount, not the admin: RBAC refuses what the chart does not grant.
    refused = api.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", "-n", ns, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
    procs: list[OperatorProcess] = []
    try:
        a = replica(api, tmp_path, "op-a", deployment, kubeconfig)
        procs.append(a)
        wait("replica A to join the peering", lambda: "peering" in (tmp_path / "op-a.log").read_text())
        time.sleep(1.1)  # B starts later, so it ranks below A
        b = replica(api, tmp_path, "op-b", deployment, kubeconfig)
        procs.append(b)
        wait("replica B to join the peering", lambda: "peering" in (tmp_path / "op-b.log").read_text())

        doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
        doc["metadata"] = {"name": "risk-rbac", "namespace": ns}
        api.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc))

        def status() -> dict[str, Any]:
            return dict(api.get("trainingrun", "risk-rbac", "-n", ns).get("status") or {})

        wait("the PyTorchJob", lambda: api.kubectl("get", "pytorchjob", "risk-rbac", "-n", ns,
                                                   check=False).returncode == 0)
        st = wait("the status written through the subresource", lambda: status().get("observedGeneration") and
                  status())
        assert st["phase"] == "Pending"
        assert api.kubectl("get", "configmap", "risk-rbac-config", "-n", ns, check=False).returncode == 0
        assert api.kubectl("get", "pvc", "risk-rbac-checkpoints", "-n", ns, check=False).returncode == 0
        time.sleep(3)
        assert f"{ns}/risk-rbac: created" in (tmp_path / "op-a.log").read_text()
        assert f"{ns}/risk-rbac" not in (tmp_path / "op-b.log").read_text()  # the standby stayed quiet

        # The leader dies mid-run; the training-operator then reports the job running. B takes over once A's
        # peering record expires and mirrors it: nothing lost, nothing created twice.
        a.kill()
        api.kubectl("patch", "pytorchjob", "risk-rbac", "-n", ns, "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"conditions": [
                        {"type": "Created", "status": "True", "reason": "PyTorchJobCreated",
                         "lastTransitionTime": "2026-11-26T00:00:00Z"},
                        {"type": "Running", "status": "True", "reason": "PyTorchJobRunning",
                         "lastTransitionTime": "2026-11-26T00:00:01Z"}]}}))
        wait("B to mirror the running job", lambda: status().get("phase") == "Running", timeout=90)
        jobs = json.loads(api.kubectl("get", "pytorchjobs", "-n", ns, "-o", "json").stdout)["items"]
        assert [j["metadata"]["name"] for j in jobs] == ["risk-rbac"]
        assert int(status().get("attempt") or 1) == 1
        for log in ("op-a.log", "op-b.log"):
            text = (tmp_path / log).read_text()
            # An RBAC refusal reads "forbidden" in the API's Status and in our ApiError; a bare "403" would also
            # match a log line's milliseconds (it did: "01:13:59,403").
            assert "forbidden" not in text.lower(), text[-3000:]
    finally:
        for p in procs:
            p.stop()
        api.kubectl("delete", "clusterrolebinding,clusterrole", f"{system}-operator", check=False)
