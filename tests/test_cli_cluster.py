"""The CLI against a real API server with kubeconfigs as clusters issue them: an `exec` credential plugin (EKS,
GKE and AKS kubeconfigs all use one), several files merged from KUBECONFIG, --context, the context's
namespace; and one-line errors, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.apiserver import ApiServer
from tests.conftest import EXAMPLES, legistra


def test_no_kubeconfig_is_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    for env in ({"KUBECONFIG": str(tmp_path / "missing")}, {"KUBECONFIG": "", "HOME": str(tmp_path)}):
        res = legistra("status", "some-run", env=env)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("error: no kubeconfig found at ") and line.endswith(
            "; set KUBECONFIG or pass --kubeconfig")


def exec_kubeconfig(api: ApiServer, tmp_path: Path, namespace: str) -> str:
    """Two files, as KUBECONFIG merges them: clusters and an exec-plugin user in one, contexts in the other."""
    token = (Path(api.ca_file).parent / "admin.token").read_text().strip()
    plugin = tmp_path / "credential-plugin.py"
    plugin.write_text("import json\nprint(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1', "
                      f"'kind': 'ExecCredential', 'status': {{'token': {token!r}}}}}))\n")
    first: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {"server": api.server, "certificate-authority": api.ca_file}},
                     {"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "plugin-user", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable, "args": [str(plugin)],
            "interactiveMode": "Never"}}}],
    }
    second: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config", "current-context": "broken",
        "contexts": [{"name": "team", "context": {"cluster": "envtest", "user": "plugin-user",
                                                   "namespace": namespace}},
                     {"name": "broken", "context": {"cluster": "nowhere", "user": "plugin-user"}}],
    }
    (tmp_path / "clusters.yaml").write_text(yaml.safe_dump(first))
    (tmp_path / "contexts.yaml").write_text(yaml.safe_dump(second))
    return f"{tmp_path / 'clusters.yaml'}:{tmp_path / 'contexts.yaml'}"


@pytest.mark.apiserver
def test_exec_plugin_merged_kubeconfig_context_and_its_namespace(apiserver: ApiServer, tmp_path: Path) -> None:
    apiserver.install_crds()
    ns = apiserver.namespace("cli")
    env = {"KUBECONFIG": exec_kubeconfig(apiserver, tmp_path, ns)}
    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(doc))
    name = doc["metadata"]["name"]

    res = legistra("submit", str(run_file), "--context", "team", env=env)  # no -n: the context's namespace
    assert res.returncode == 0, res.stderr
    assert f"trainingrun.legistra.io/{name} created in {ns}" in res.stdout
    assert apiserver.get("trainingrun", name, "-n", ns)["spec"]["task"] == "risk-classification"

    res = legistra("status", name, "--context", "team", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {}  # no operator here: nothing reported yet

    # The current context points at a cluster that is not there: one line, exit 1.
    res = legistra("status", name, env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the cluster at https://127.0.0.1:1: ")

    res = legistra("status", "no-such-run", "--context", "team", env=env)
    assert res.returncode == 1 and res.stderr.strip() == f"error: TrainingRun no-such-run not found in {ns}"


@pytest.mark.apiserver
def test_a_rotated_token_is_picked_up_without_a_restart(apiserver: ApiServer, tmp_path: Path) -> None:
    """The operator's API client re-reads its credentials on a 401: a bound service-account token that was
    rotated (here: the old one invalidated by deleting the object it is bound to) costs one retried request."""
    import asyncio
    import ssl
    import time
    import urllib.error
    import urllib.request

    from legistra.operator.credentials import cluster_credentials
    from legistra.operator.kube import Kube

    api = apiserver
    ns = api.namespace("rotate")
    api.kubectl("-n", ns, "create", "serviceaccount", "operator")
    api.kubectl("-n", ns, "create", "role", "read-configmaps", "--verb=list", "--resource=configmaps")
    api.kubectl("-n", ns, "create", "rolebinding", "operator-reads", "--role=read-configmaps",
                f"--serviceaccount={ns}:operator")
    tokens = {}
    for anchor in ("first", "second"):
        api.kubectl("-n", ns, "create", "secret", "generic", anchor, "--from-literal=k=v")
        tokens[anchor] = api.kubectl("-n", ns, "create", "token", "operator", "--bound-object-kind", "Secret",
                                     "--bound-object-name", anchor).stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(tokens["first"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "envtest", "cluster": {"server": api.server, "certificate-authority": api.ca_file}}],
        "users": [{"name": "sa", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "sa", "context": {"cluster": "envtest", "user": "sa", "namespace": ns}}]}))

    def credentials() -> Any:
        return cluster_credentials(str(kubeconfig), None, {})

    def refused(token: str) -> bool:
        req = urllib.request.Request(f"{api.server}/api/v1/namespaces/{ns}/configmaps",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            urllib.request.urlopen(req, context=ssl.create_default_context(cafile=api.ca_file), timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        return False

    async def scenario() -> str | None:
        kube = Kube(credentials(), refresh=credentials)
        try:
            assert await kube.list("ConfigMap", ns) is not None
            token_file.write_text(tokens["second"])  # what the kubelet does when it rotates a projected token
            api.kubectl("-n", ns, "delete", "secret", "first")
            deadline = time.monotonic() + 30
            while not refused(tokens["first"]):  # the API server caches token reviews for about 10 s
                assert time.monotonic() < deadline, "the first token was never refused"
                await asyncio.sleep(0.5)
            await kube.list("ConfigMap", ns)  # 401, fresh credentials, retried: no error
            return kube.creds.token
        finally:
            await kube.close()

    assert asyncio.run(scenario()) == tokens["second"]
