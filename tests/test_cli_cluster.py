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
