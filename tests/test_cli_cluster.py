"""The CLI against a real API server with kubeconfigs as clusters issue them: an `exec` credential plugin (EKS,
GKE and AKS kubeconfigs all use one), several files merged from KUBECONFIG, --context, the context's
namespace; and one-line errors, never a traceback."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.apiserver import ApiServer
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


def set_status(api: ApiServer, ns: str, name: str, status: dict[str, Any]) -> None:
    api.kubectl("-n", ns, "patch", "trainingrun", name, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}))


@pytest.mark.apiserver
def test_get_wait_delete_and_the_kubectl_plugin(apiserver: ApiServer, tmp_path: Path) -> None:
    import os
    import threading

    from kit.apiserver import kubectl_binary
    from tests.conftest import VENV_BIN

    api = apiserver
    api.install_crds()
    ns = api.namespace("cli")
    for name in ("risk-a", "risk-b", "risk-c"):
        doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
        doc["metadata"] = {"name": name, "namespace": ns}
        api.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc))
    half_an_hour_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)).isoformat(timespec="seconds")
    set_status(api, ns, "risk-a", {"phase": "Running", "progress": {"step": 4, "totalSteps": 10, "percent": 40},
                                   "keyMetric": "f1_macro=0.61", "backend": "trainjob", "jobName": "risk-a",
                                   # an earlier attempt ran 2 GPU-hours; this one has run 30 minutes on 2 GPUs
                                   "usage": {"gpus": 2, "gpuSeconds": 7200.0, "wallSeconds": 3600.0,
                                             "runningSince": half_an_hour_ago.replace("+00:00", "Z"),
                                             "attempts": [{"attempt": 1, "gpus": 2, "wallSeconds": 3600.0,
                                                           "gpuSeconds": 7200.0}]}})
    set_status(api, ns, "risk-c", {"phase": "Failed", "message": "InvalidData: row 7"})
    env = {"KUBECONFIG": str(api.kubeconfig)}

    res = legistra("get", "-n", ns, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "PHASE", "PROGRESS", "METRIC", "AGE"]
    assert lines[1].split()[:5] == ["risk-a", "risk-classification", "Running", "40%", "f1_macro=0.61"]
    assert lines[2].split()[:4] == ["risk-b", "risk-classification", "Pending", "-"]
    wide = legistra("get", "-n", ns, "-o", "wide", env=env).stdout.splitlines()
    assert wide[0].split()[-4:] == ["BACKEND", "JOB", "VERSION", "GPU-HOURS"]
    assert wide[1].split()[-4:-1] == ["trainjob", "risk-a", "-"] and 3.0 <= float(wide[1].split()[-1]) < 3.05
    assert wide[2].split()[-1] == "-"  # never ran
    every = legistra("get", "-A", env=env).stdout
    assert every.splitlines()[0].startswith("NAMESPACE") and [ns, "risk-b"] in [r.split()[:2] for r in every.splitlines()]
    items = json.loads(legistra("get", "-n", ns, "-o", "json", env=env).stdout)["items"]
    assert [i["metadata"]["name"] for i in items] == ["risk-a", "risk-b", "risk-c"]
    one = yaml.safe_load(legistra("get", "risk-a", "-n", ns, "-o", "yaml", env=env).stdout)
    assert one["status"]["phase"] == "Running"

    # kubectl finds `kubectl-legistra` on PATH: the same command as a plugin.
    plugin = subprocess.run([str(kubectl_binary()), "legistra", "get", "-n", ns], capture_output=True, text=True,
                            env={**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"})
    assert plugin.returncode == 0, plugin.stderr
    assert [line.split()[:5] for line in plugin.stdout.splitlines()] == [line.split()[:5] for line in lines]

    res = legistra("wait", "risk-a", "--for=Succeeded", "--timeout=3s", "-n", ns, env=env)
    assert res.returncode == 1 and "timed out after 3s waiting for risk-a to be Succeeded (it is Running)" in res.stderr
    timer = threading.Timer(1.0, set_status, (api, ns, "risk-a", {"phase": "Succeeded"}))
    timer.start()
    res = legistra("wait", "risk-a", "--for=phase=Succeeded", "--timeout=60s", "-n", ns, env=env)
    timer.join()
    assert res.returncode == 0 and "condition met: phase Succeeded" in res.stdout, res.stderr
    res = legistra("wait", "risk-c", "--timeout=10s", "-n", ns, env=env)
    assert res.returncode == 3 and "ended Failed: InvalidData: row 7" in res.stderr

    res = legistra("delete", "risk-b", "-n", ns, env=env)
    assert res.returncode == 0 and res.stdout.strip() == f"trainingrun.legistra.io/risk-b deleted from {ns}"
    assert api.kubectl("-n", ns, "get", "trainingrun", "risk-b", check=False).returncode != 0
    res = legistra("delete", "risk-b", "-n", ns, env=env)
    assert res.returncode == 1 and res.stderr.strip() == f"error: TrainingRun risk-b not found in {ns}"


@pytest.mark.apiserver
def test_render_applies_to_any_namespace(apiserver: ApiServer) -> None:
    """`legistra render f.yaml | kubectl apply -n team -f -`: the objects name no namespace of their own."""
    api = apiserver
    api.install_crds()
    ns = api.namespace("team")
    rendered = legistra("render", str(EXAMPLES / "risk-classification.yaml"))
    assert rendered.returncode == 0, rendered.stderr
    assert all("namespace" not in d["metadata"] for d in yaml.safe_load_all(rendered.stdout))
    out = api.kubectl("apply", "--validate=false", "-n", ns, "-f", "-", input=rendered.stdout).stdout
    assert out.count("created") == 3, out


@pytest.mark.apiserver
def test_status_watch_draws_a_progress_bar_on_a_terminal(apiserver: ApiServer) -> None:
    """On a terminal (a pseudo-terminal here) `status --watch` is one bar that moves with the run's steps, its
    phase and latest metric beside it, each new message above it, and the whole status at the end."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import threading

    from tests.conftest import VENV_BIN

    api = apiserver
    api.install_crds()
    ns = api.namespace("watch")
    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    doc["metadata"] = {"name": "risk-w", "namespace": ns}
    api.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(doc))
    set_status(api, ns, "risk-w", {"phase": "Running", "progress": {"step": 3, "totalSteps": 10, "percent": 30}})
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.Popen([str(VENV_BIN / "legistra"), "status", "risk-w", "-n", ns, "--watch"],
                            stdin=side, stdout=side, stderr=side, env={**os.environ, **api.env()})
    os.close(side)
    later = [(3.0, {"phase": "Running", "progress": {"step": 7, "totalSteps": 10, "percent": 70},
                    "keyMetric": "f1_macro=0.58", "message": "evaluating"}),
             (6.0, {"phase": "Succeeded", "progress": {"step": 10, "totalSteps": 10, "percent": 100},
                    "keyMetric": "f1_macro=0.64", "message": "registered clause-risk v1"})]
    timers = [threading.Timer(t, set_status, (api, ns, "risk-w", st)) for t, st in later]
    for t in timers:
        t.start()
    out = b""
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            out += chunk
    finally:
        for t in timers:
            t.join()
        os.close(main)
    assert proc.wait(30) == 0
    text = out.decode(errors="replace")
    assert text.splitlines()[0].strip() == f"{ns}/risk-w  risk-classification  Running"
    assert "3/10" in text and "7/10" in text and "10/10" in text  # one bar, redrawn in place
    assert "\r" in text and "f1_macro=0.58" in text
    assert "  evaluating" in text and "  registered clause-risk v1" in text
    assert text.rstrip().splitlines()[-1].strip() == "metric:   f1_macro=0.64"  # the full status block closes it


def test_a_rank_maps_to_the_pod_that_runs_it() -> None:
    from legistra.cli.logs import Replica, replica_of

    assert replica_of(0, 1, 8) == Replica("master", 0, 0)
    assert replica_of(7, 2, 8) == Replica("master", 0, 0)
    assert replica_of(8, 2, 8) == Replica("worker", 0, 1)
    assert replica_of(23, 3, 8) == Replica("worker", 1, 2)
    assert replica_of(1, 2, 0) == Replica("worker", 0, 1)  # CPU pods: one process each
    with pytest.raises(ValueError, match=r"--rank 16: this run has 16 ranks \(0-15\)"):
        replica_of(16, 2, 8)
