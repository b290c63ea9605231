"""Every install path as users copy it: kustomize builds with kustomize's default restrictions (the pinned real
kubectl), the results applied to a real kube-apiserver, the Helm chart's objects too, and the Argo CD / Flux
objects checked against their projects' schemas and pointing at paths that build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.apiserver import SHARED_CANDIDATES, ApiServer, kubectl_binary, missing
from tests.conftest import ROOT
from tests.test_shipping import CHART, k8s_valid, objects, render

MANIFESTS = ROOT / "manifests"
GITOPS = MANIFESTS / "gitops"
KUSTOMIZATIONS = sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def kustomize(folder: Path) -> list[dict[str, Any]]:
    res = subprocess.run([str(kubectl_binary()), "kustomize", str(folder)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, f"kubectl kustomize {folder.relative_to(ROOT)}:\n{res.stderr}"
    return objects(res.stdout)


def test_the_kustomization_folders_are_the_ones_the_docs_name() -> None:
    names = [str(p.relative_to(MANIFESTS)) for p in KUSTOMIZATIONS]
    assert names == ["base", "crds", "overlays/cluster-wide", "overlays/namespaced", "samples"]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_kustomization_builds_with_default_restrictions(folder: Path) -> None:
    docs = kustomize(folder)
    assert docs, f"{folder} built nothing"
    for d in docs:
        k8s_valid(d)


def test_crds_folder_lists_every_crd_and_the_generated_ones_are_current() -> None:
    from legistra.api.crd import all_crds
    from legistra.api.crd import render as render_crd

    folder = MANIFESTS / "crds"
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
    for name, crd in all_crds().items():
        assert (folder / name).read_text() == render_crd(crd), f"{name} is stale: run `make crds`"
    built = {d["metadata"]["name"] for d in kustomize(folder)}
    assert built == {"trainingruns.legistra.io", "trainingschedules.legistra.io", "kopfpeerings.kopf.dev",
                     "clusterkopfpeerings.kopf.dev"}


def test_overlays_differ_only_in_scope() -> None:
    cluster = {(d["kind"], d["metadata"]["name"]) for d in kustomize(MANIFESTS / "overlays/cluster-wide")}
    namespaced = {(d["kind"], d["metadata"]["name"]) for d in kustomize(MANIFESTS / "overlays/namespaced")}
    assert cluster - namespaced == {("ClusterRoleBinding", "legistra-operator")}
    assert namespaced - cluster == {("RoleBinding", "legistra-operator")}


# -- against a real API server ------------------------------------------------------------------------------


def applied(kubectl_out: str) -> int:
    """Objects `kubectl apply` reports as created, configured or unchanged."""
    return len(re.findall(r" (created|configured|unchanged)$", kubectl_out, flags=re.M))


def kept(written: Any, stored: Any) -> bool:
    """Whether everything `written` survives in `stored` (which may hold more: defaults)."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(k in stored and kept(v, stored[k]) for k, v in written.items())
    return bool(written == stored)


@pytest.mark.apiserver
def test_kubectl_apply_k_of_each_overlay_and_the_samples(apiserver: ApiServer) -> None:
    """The commands of docs/deploy.md as written (plus --validate=false: kubectl 1.37 validates client-side
    against this v1.20 server's older OpenAPI, which predates CEL's `x-kubernetes-validations`)."""
    api = apiserver
    # The session's API server is shared (the docs test may have installed these already): count outcomes.
    out = api.kubectl("apply", "-k", "manifests/overlays/cluster-wide", "--validate=false").stdout
    assert applied(out) == len(kustomize(MANIFESTS / "overlays/cluster-wide")), out
    api.wait_established("trainingruns.legistra.io", "trainingschedules.legistra.io")
    api.ensure_namespace("legal-ml")
    api.kubectl("apply", "-k", "manifests/overlays/namespaced", "--validate=false")
    out = api.kubectl("apply", "-k", "manifests/samples", "--validate=false").stdout
    assert applied(out) == 4, out
    runs = api.get("trainingruns", "-n", "legal-ml")["items"]
    assert sorted(r["metadata"]["name"] for r in runs) == sorted(
        d["metadata"]["name"] for d in kustomize(MANIFESTS / "samples") if d["kind"] == "TrainingRun")
    for run in runs:  # the server kept every field as written (nothing pruned) and filled in the CRD's defaults
        sample = next(d for d in kustomize(MANIFESTS / "samples") if d["metadata"]["name"] == run["metadata"]["name"])
        assert kept(sample["spec"], run["spec"]), (sample["spec"], run["spec"])
        assert run["spec"]["training"]["compile"] is False  # a schema default, filled in by the server
    assert api.get("trainingschedules", "-n", "legal-ml")["items"][0]["metadata"]["name"] == "clause-risk-weekly"
    binding = api.get("rolebinding", "legistra-operator", "-n", "legal-ml")
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "legistra-operator",
                                      "namespace": "legistra-system"}
    deployment = api.get("deployment", "legistra-operator", "-n", "legistra-system")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["operator", "--namespace", "legal-ml"]  # the namespaced overlay applied last
    # Applying again changes nothing: what GitOps controllers do on every sync.
    again = api.kubectl("apply", "-k", "manifests/overlays/cluster-wide", "--validate=false").stdout
    assert "created" not in again and "legistra-operator unchanged" in again


@pytest.mark.apiserver
def test_large_reference_crds_cannot_be_applied_client_side(apiserver: ApiServer) -> None:
    """The PyTorchJob CRD is over kubectl's 256 KiB last-applied limit: client-side apply fails, as
    docs/deploy.md warns. Clusters from 1.22 on take `--server-side`; this v1.20 server's server-side apply
    refuses CRDs with CEL rules, so here the CRD is created instead (what a POST-based installer does)."""
    shared = next((p for p in SHARED_CANDIDATES if (p / "reference").is_dir()), None)
    if shared is None:
        missing("no shared/reference beside or inside the checkout")
    assert shared is not None
    crd = shared / "reference" / "kubeflow.org_pytorchjobs.yaml"
    assert crd.stat().st_size > 256 * 1024
    client_side = apiserver.kubectl("apply", "--validate=false", "-f", str(crd), check=False)
    assert client_side.returncode != 0 and "Too long" in client_side.stderr, client_side.stderr
    if apiserver.kubectl("get", "crd", "pytorchjobs.kubeflow.org", check=False).returncode != 0:
        apiserver.kubectl("create", "--validate=false", "-f", str(crd))  # the session's server is shared
    apiserver.wait_established("pytorchjobs.kubeflow.org")


@pytest.mark.apiserver
@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["legal-ml", "contracts"], "replicaCount": 1}],
                         ids=["cluster-wide", "namespaced"])
def test_helm_chart_objects_apply_to_a_real_api_server(apiserver: ApiServer, values: dict[str, Any]) -> None:
    api = apiserver
    for ns in ("legistra-system", *values.get("watchNamespaces", [])):
        api.ensure_namespace(ns)
    crds = [d for p in sorted((CHART / "crds").glob("*.yaml")) for d in objects(p.read_text())]
    api.apply(crds)
    rendered = render(values)
    for d in rendered:  # what `helm install -n legistra-system` does for objects that name no namespace
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            d["metadata"].setdefault("namespace", "legistra-system")
    out = api.apply(rendered)
    assert applied(out) == len(rendered), out
    for d in rendered:
        ns = d["metadata"].get("namespace")
        found = api.get(d["kind"].lower(), d["metadata"]["name"], *(["-n", ns] if ns else []))
        assert found["metadata"]["name"] == d["metadata"]["name"]


# -- GitOps objects: their projects' schemas, and paths that build --------------------------------------------


def gitops_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(GITOPS.rglob("*.yaml")) for d in objects(p.read_text())
            if d["kind"] in ("Application", "GitRepository", "Kustomization")]


def schema_verdicts(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each object checked by tests/gitops/validate.mjs with the kubernetes-models packages, whose schemas are
    generated from the Argo CD and Flux release CRDs (installed by `make test` from tests/gitops/package-lock.json)."""
    node = shutil.which("node")
    modules = ROOT / "tests" / "gitops" / "node_modules"
    if node is None or not modules.is_dir():
        missing(f"the GitOps schema check needs node and {modules} (`make test` runs `npm ci` there)")
    assert node is not None
    res = subprocess.run([node, str(ROOT / "tests" / "gitops" / "validate.mjs")], input=json.dumps(docs),
                         capture_output=True, text=True, timeout=120, cwd=ROOT / "tests" / "gitops")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_gitops_objects_validate_against_their_projects_schemas() -> None:
    docs = gitops_objects()
    assert sorted(d["kind"] for d in docs) == ["Application", "Application", "GitRepository", "Kustomization",
                                                "Kustomization"]
    verdicts = schema_verdicts(docs)
    assert len(verdicts) == len(docs)
    assert all(v["errors"] == [] for v in verdicts), verdicts
    # The check can fail: the same objects with one wrong type each are refused.
    broken = json.loads(json.dumps(docs))
    for d in broken:
        if d["kind"] == "Application":
            d["spec"]["syncPolicy"]["automated"]["prune"] = "yes"
        elif d["kind"] == "GitRepository":
            d["spec"]["ref"] = "main"
        else:
            d["spec"]["prune"] = "true"
    assert all(v["errors"] for v in schema_verdicts(broken))


def test_gitops_objects_point_at_paths_that_build() -> None:
    this_repo = "legistra-train.git"
    checked = 0
    for d in gitops_objects():
        if d["kind"] == "Kustomization":
            docs = kustomize(ROOT / d["spec"]["path"])
            assert docs
            checked += 1
        elif d["kind"] == "Application" and d["spec"]["source"]["repoURL"].endswith(this_repo):
            import helm_python as helm

            source = d["spec"]["source"]
            values = source.get("helm", {}).get("valuesObject", {})
            helm.Chart.load(str(ROOT / source["path"])).validate_schema(values)
            assert render(values)
            checked += 1
    assert checked == 3  # two Flux Kustomizations and the operator's Argo CD Application
