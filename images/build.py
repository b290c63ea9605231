"""`make images`: build the operator and trainer images from images/*.Dockerfile as shipped.

Whichever engine the machine has is used: docker or podman when its daemon or service answers (`<engine> info`: a
binary alone is not an engine), else buildah (daemonless: `--isolation chroot`, the vfs storage driver), installed
from Debian when missing and allowed. Every base image is a build argument. A base that cannot be pulled (no
registry reachable) is replaced by a stand-in of the same layout built from Debian's archive with mmdebstrap and
stored under the same name, so the Dockerfiles build exactly as they ship.

Images are tagged `<repo>/legistra-<name>:<version>` and `:<version>-<sha>`.

    python images/build.py [--only operator|trainer] [--torch cpu|index] [--repo R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from legistra import __version__  # noqa: E402
from legistra.version import git_sha  # noqa: E402

PYTHON_IMAGE = "docker.io/library/python:3.11.11-slim-bookworm"
DEBIAN_SUITE = "bookworm"  # what PYTHON_IMAGE is built on, and so its stand-in
REPO = "ghcr.io/legistra"
WHEELS = ROOT / "images" / "wheels"  # build-context wheels for the trainer image (see --torch)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


class BuildError(RuntimeError):
    """A step of the build failed; the message says which and why."""


def run(cmd: list[str], *, quiet: bool = False, check: bool = True, timeout: float | None = None,
        ) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, text=True, timeout=timeout, capture_output=quiet, check=False)
    if check and out.returncode != 0:
        detail = (out.stderr or "").strip().splitlines()[-5:] if quiet else []
        raise BuildError(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed (exit {out.returncode})"
                         + (": " + " | ".join(detail) if detail else ""))
    return out


@dataclass
class Engine:
    """A container engine and the arguments it needs here."""

    name: str
    global_args: list[str] = field(default_factory=list)

    def cmd(self, *args: str) -> list[str]:
        return [self.name, *self.global_args, *args]

    def build_cmd(self) -> list[str]:
        if self.name == "buildah":
            return self.cmd("bud", "--isolation", "chroot", "--layers")
        return self.cmd("build")

    def has_image(self, ref: str) -> bool:
        args = ("inspect", "--type", "image", ref) if self.name == "buildah" else ("image", "inspect", ref)
        return run(self.cmd(*args), quiet=True, check=False).returncode == 0

    def pull(self, ref: str) -> bool:
        return run(self.cmd("pull", ref), quiet=True, check=False, timeout=600).returncode == 0

    def import_rootfs(self, tarball: Path, ref: str) -> None:
        """A root file system as an image named `ref`, with the environment PYTHON_IMAGE sets."""
        env = ["PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
        if self.name == "buildah":
            ctr = run(self.cmd("from", "scratch"), quiet=True).stdout.strip()
            try:
                run(self.cmd("add", ctr, str(tarball), "/"))
                run(self.cmd("config", *[a for e in env for a in ("--env", e)], "--cmd", "python3", ctr))
                run(self.cmd("commit", "--rm", ctr, ref))
            except BuildError:
                run(self.cmd("rm", ctr), quiet=True, check=False)
                raise
        else:
            run(self.cmd("import", *[a for e in env for a in ("--change", f"ENV {e}")],
                         "--change", 'CMD ["python3"]', str(tarball), ref))


def answers(cmd: list[str]) -> bool:
    """Whether an engine answers (`docker info` fails without a daemon, `podman info` without its storage)."""
    if shutil.which(cmd[0]) is None:
        return False
    try:
        return run(cmd, quiet=True, check=False, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def apt_install(allowed: bool, *packages: str) -> bool:
    """Install Debian packages when allowed and possible (root, apt-get); whether it did."""
    if not (allowed and os.geteuid() == 0 and shutil.which("apt-get")):
        return False
    run(["apt-get", "install", "-y", "-q", *packages])
    return True


def find_engine(install: bool) -> Engine:
    """The first engine that answers: docker, podman, buildah (installed from Debian if allowed)."""
    if answers(["docker", "info"]):
        return Engine("docker")
    if answers(["podman", "info"]):
        return Engine("podman")
    buildah = Engine("buildah", ["--storage-driver", "vfs"])
    if answers(buildah.cmd("info")):
        return buildah
    if apt_install(install, "buildah", "mmdebstrap") and answers(buildah.cmd("info")):
        return buildah
    raise BuildError("no container engine answers: start docker's daemon, or install podman or buildah "
                     "(apt-get install buildah mmdebstrap; `make images` does so when run as root)")


def python_standin(engine: Engine, ref: str, install: bool) -> None:
    """Build `ref` from Debian's archive: Debian's Python 3.11 with pip where the official image has them
    (/usr/local/bin/python, pip), pip allowed to install (no EXTERNALLY-MANAGED), the login tools the Dockerfiles
    use (useradd), and the build machine's CA bundle (so that a proxy this machine trusts is trusted inside)."""
    if shutil.which("mmdebstrap") is None and not apt_install(install, "mmdebstrap"):
        raise BuildError(f"{ref} cannot be pulled and mmdebstrap is missing to build its stand-in "
                         "(apt-get install mmdebstrap)")
    hooks = [
        'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        'mkdir -p "$1"/usr/local/bin',
        'ln -sf /usr/bin/python3 "$1"/usr/local/bin/python',
        'ln -sf /usr/bin/python3 "$1"/usr/local/bin/python3',
        'ln -sf /usr/bin/pip3 "$1"/usr/local/bin/pip',
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
    ]
    if HOST_CA.exists():
        hooks.append(f'cp {HOST_CA} "$1"/etc/ssl/certs/ca-certificates.crt')
    with tempfile.TemporaryDirectory(prefix="legistra-standin-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        run(["mmdebstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates,passwd",
             *[f"--customize-hook={h}" for h in hooks], DEBIAN_SUITE, str(tarball)])
        engine.import_rootfs(tarball, ref)


def ensure_base(engine: Engine, ref: str, install: bool) -> str:
    """`ref` present in the engine: already there, pulled, or its stand-in built. Says which."""
    if engine.has_image(ref):
        return "present"
    if engine.pull(ref):
        return "pulled"
    print(f"{ref} cannot be pulled here: building its stand-in from Debian's archive", flush=True)
    python_standin(engine, ref, install)
    return "stand-in"


def trainer_wheels(torch: str) -> None:
    """images/wheels, the trainer image's local wheels: for `--torch cpu`, the CPU torch that pip's find-links
    folder holds on these machines and a DeepSpeed wheel built against it (DeepSpeed ships an sdist whose build
    imports torch, which would pull the CUDA build). Empty for `--torch index` (CUDA torch from the index)."""
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    (WHEELS / ".keep").write_text("")
    if torch == "index":
        return
    from importlib.metadata import version

    links = os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()
    torch_version = version("torch").split("+")[0]
    found = [w for d in links for w in Path(d).glob(f"torch-{torch_version}+cpu-*.whl")]
    if not found:
        raise BuildError(f"no CPU wheel of torch {torch_version} in {links} (pip's find-links)")
    shutil.copy2(found[0], WHEELS / found[0].name)
    deepspeed = version("deepspeed")
    built = sorted((ROOT / ".gpu-kit" / "wheels").glob(f"deepspeed-{deepspeed}-*.whl"))  # `make gpu-kit` made one
    if built:
        shutil.copy2(built[0], WHEELS / built[0].name)
    else:
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir",
             str(WHEELS), f"deepspeed=={deepspeed}"])


def build(engine: Engine, name: str, repo: str, args: dict[str, str]) -> list[str]:
    sha = git_sha() or "unknown"
    tags = [f"{repo}/legistra-{name}:{__version__}", f"{repo}/legistra-{name}:{__version__}-{sha}"]
    build_args = {"VERSION": __version__, "GIT_SHA": sha, **args}
    cmd = [*engine.build_cmd(), "-f", str(ROOT / "images" / f"{name}.Dockerfile")]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    for tag in tags:
        cmd += ["-t", tag]
    run([*cmd, str(ROOT)])
    return tags


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="images/build.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("operator", "trainer"), help="build one image")
    p.add_argument("--torch", choices=("cpu", "index"), default="index",
                   help="trainer image: torch from the package index (CUDA, the default) or this machine's CPU wheel")
    p.add_argument("--repo", default=os.environ.get("LEGISTRA_IMAGE_REPO", REPO))
    p.add_argument("--python-image", default=PYTHON_IMAGE, help="the base of both images")
    p.add_argument("--no-install", action="store_true", help="never install buildah or mmdebstrap")
    a = p.parse_args(argv)
    try:
        engine = find_engine(install=not a.no_install)
        print(f"engine: {engine.name}", flush=True)
        base = ensure_base(engine, a.python_image, install=not a.no_install)
        print(f"base {a.python_image}: {base}", flush=True)
        built = []
        for name in ("operator", "trainer"):
            if a.only not in (None, name):
                continue
            if name == "trainer":
                trainer_wheels(a.torch)
            built += build(engine, name, a.repo, {"PYTHON_IMAGE": a.python_image})
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("built: " + ", ".join(built))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
