"""The GPU kit: the wheels that the GPU machine's image lacks, and a rehearsal on CPU that proves they suffice.

The GPU machine is bare, reaches no package registry and is lent for minutes, so nothing may be found
missing there. `make gpu-kit` (`python -m benchmarks.gpu_kit build`) downloads, for CPython 3.12 on
manylinux x86-64, exactly the distributions named in `gpu/kit.txt` at the versions this virtualenv runs
(the code the suite tests), and builds a wheel here for any that PyPI ships only as source (deepspeed).
`benchmarks/gpu.sh` installs them on the GPU machine with `--no-deps` beside the image's own packages.

`python -m benchmarks.gpu_kit rehearse` checks, without a GPU:
- every wheel installs on CPython 3.12 manylinux x86-64 from the kit alone (pip's own resolver, dry run);
- every requirement of every kit wheel is met by the image (`gpu/image-packages.txt`) or the kit;
- the kit replaces nothing the image has (never torch) and stays under 50 MiB;
- the GPU run's own commands (tests/test_gpu.py, the trainer benchmark, `gpu.sh --dry-run`) run in an
  environment that holds only the image's packages and the kit, with the image's own versions of the
  pure-Python packages that it pins differently from here (transformers, huggingface-hub).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent / "gpu"
ROOT = HERE.parent.parent
IMAGE_PACKAGES = HERE / "image-packages.txt"
KIT_LIST = HERE / "kit.txt"
KIT = ROOT / ".gpu-kit"
WHEELS = KIT / "wheels"
MANIFEST = WHEELS / "manifest.json"
MAX_BYTES = 50 * 2**20
PYTHON = "3.12"
# pip matches manylinux tags exactly: the ones a current wheel may carry for a glibc-2.28+ x86-64 image.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64")
# The GPU image's interpreter, as packaging's markers see it.
TARGET_ENV = {"python_version": PYTHON, "python_full_version": "3.12.3", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
              "os_name": "posix", "platform_machine": "x86_64", "extra": ""}
# Pure-Python image packages the rehearsal installs at the image's version where this virtualenv has another,
# so an API our code uses that the GPU's older or newer release lacks fails here first.
PIN_TO_IMAGE = ("transformers", "huggingface-hub")


def read_pins(path: Path) -> dict[str, str | None]:
    """`name` or `name==version` per line, `#` comments; names canonical."""
    pins: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version or None
    return pins


def image_packages() -> dict[str, str | None]:
    return read_pins(IMAGE_PACKAGES)


def kit_names() -> list[str]:
    return list(read_pins(KIT_LIST))


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    path: Path

    def requires(self) -> list[Requirement]:
        with zipfile.ZipFile(self.path) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(meta).decode()
        return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
                if line.startswith("Requires-Dist:")]


def wheels(folder: Path = WHEELS) -> list[Wheel]:
    out = []
    for path in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        out.append(Wheel(str(name), str(version), path))
    return out


def requirement_gaps(kit: Iterable[Wheel], image: dict[str, str | None]) -> list[str]:
    """Each requirement of a kit wheel (on the GPU's interpreter, no extras) that neither the image nor the kit
    meets; an image package listed without a version is taken to meet any version."""
    have: dict[str, str | None] = dict(image)
    kit = list(kit)
    have.update({w.name: w.version for w in kit})
    gaps = []
    for w in kit:
        for req in w.requires():
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue
            name = canonicalize_name(req.name)
            if name not in have:
                gaps.append(f"{w.name} {w.version} needs {req}: in neither the image nor the kit")
            elif have[name] is not None and not req.specifier.contains(Version(str(have[name])), prereleases=True):
                where = "kit" if name in {k.name for k in kit} else "image"
                gaps.append(f"{w.name} {w.version} needs {req}: the {where} has {have[name]}")
    return gaps


def kit_problems(kit: list[Wheel], names: list[str], image: dict[str, str | None]) -> list[str]:
    """What is wrong with the kit as built, apart from its requirements: one line per problem."""
    problems = []
    got = {w.name for w in kit}
    problems += [f"{n}: named in {KIT_LIST.name} but no wheel in {WHEELS}" for n in names if n not in got]
    problems += [f"{w.path.name}: not named in {KIT_LIST.name}" for w in kit if w.name not in names]
    problems += [f"{w.name}: the image has it already; the kit must not replace it" for w in kit if w.name in image]
    size = sum(w.path.stat().st_size for w in kit)
    if size > MAX_BYTES:
        problems.append(f"the kit is {size / 2**20:.1f} MiB, over {MAX_BYTES // 2**20} MiB")
    return problems


def _pip(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, env=env)


def _target_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp", "--abi", "cp312",
            "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def build(names: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Fill .gpu-kit/wheels with the kit at this virtualenv's versions; a no-op when it is already that."""
    names = names or kit_names()
    pins = {n: md.version(n) for n in names}
    if MANIFEST.exists() and {n: e["version"] for n, e in json.loads(MANIFEST.read_text()).items()} == pins:
        return dict(json.loads(MANIFEST.read_text()))
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    for name, version in pins.items():
        got = _pip("download", "--no-deps", *_target_args(), "-d", str(WHEELS), f"{name}=={version}")
        if got.returncode != 0:
            # Only a source distribution on PyPI (deepspeed): build its wheel here, with no compiled ops, so it
            # is pure Python and JIT-builds any op on the GPU machine if one is ever asked for.
            built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                    "-w", str(WHEELS), f"{name}=={version}"], capture_output=True, text=True,
                                   env={**os.environ, "DS_BUILD_OPS": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
            if built.returncode != 0:
                raise SystemExit(f"gpu-kit: {name}=={version}: no cp312 manylinux wheel, and building one failed:\n"
                                 f"{got.stderr[-1500:]}\n{built.stderr[-1500:]}")
    manifest = {w.name: {"version": w.version, "file": w.path.name, "bytes": w.path.stat().st_size,
                         "sha256": hashlib.sha256(w.path.read_bytes()).hexdigest()} for w in wheels()}
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def check_installable(kit: list[Wheel]) -> list[str]:
    """pip's resolver, from the kit alone, for the GPU's interpreter and platform: every wheel is one it takes."""
    links = [a for folder in sorted({str(w.path.parent) for w in kit}) for a in ("--find-links", folder)]
    with tempfile.TemporaryDirectory() as target:
        got = _pip("install", "--dry-run", "--no-index", "--no-deps", *links, *_target_args(), "--target", target,
                   *[f"{w.name}=={w.version}" for w in kit])
    return [] if got.returncode == 0 else [f"pip cannot install the kit on CPython {PYTHON} x86-64: "
                                           + got.stderr.strip()[-1500:]]


# The environment of the rehearsal: this virtualenv's interpreter, with a site-packages that holds only the
# distributions that the GPU image has (as installed here) and the kit's, linked from this virtualenv.

def _top_levels(dist: md.Distribution) -> set[str]:
    tops = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".data") and parts[0] != "__pycache__":
            tops.add(parts[0])
    return tops


def make_image_env(folder: Path, kit: list[str], image: dict[str, str | None], cache: Path) -> Path:
    """A virtualenv at `folder` whose packages are the image's (those installed here) and the kit's; returns its
    python. Packages in PIN_TO_IMAGE are installed at the image's version when this virtualenv has another."""
    shutil.rmtree(folder, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next((folder / "lib").glob("python3*/site-packages"))
    allowed = set(image) | set(kit)
    pinned = {n: image[n] for n in PIN_TO_IMAGE if image.get(n) and _installed_version(n) != image[n]}
    here = Path(str(md.distribution("pip").locate_file("")))
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in allowed or name in pinned or name == "legistra-train":
            continue
        for top in _top_levels(dist):
            src, dst = here / top, site / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    if pinned:
        cache.mkdir(parents=True, exist_ok=True)
        reqs = [f"{n}=={v}" for n, v in pinned.items()]
        got = _pip("download", "--no-deps", "--only-binary=:all:", "-d", str(cache), *reqs)
        if got.returncode != 0 and not all(any(cache.glob(f"{n.replace('-', '_')}-{v}-*.whl")) for n, v in
                                           pinned.items()):
            raise SystemExit(f"rehearsal: cannot fetch the image's {', '.join(reqs)}:\n{got.stderr[-1500:]}")
        files = [str(next(cache.glob(f"{n.replace('-', '_')}-{v}-*.whl"))) for n, v in pinned.items()]
        got = _pip("install", "--no-deps", "--no-index", "--no-compile", "--target", str(site), *files)
        if got.returncode != 0:
            raise SystemExit(f"rehearsal: installing {', '.join(reqs)} failed:\n{got.stderr[-1500:]}")
    return folder / "bin" / "python"


def _installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def rehearsal_env(python: Path) -> dict[str, str]:
    """Environment for a command in the image env: our code from the checkout, nothing from this virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONPATH=str(ROOT), PATH=f"{python.parent}:{env.get('PATH', '')}", LEGISTRA_GPU_REHEARSAL="1",
               HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONNOUSERSITE="1",
               # DeepSpeed compiles its CPU shared-memory allreduce on first use, into a folder named only by Python
               # version and device (py311_cpu). Shared with the virtualenv, each environment's build replaced the
               # other's (other include paths), and every switch between them compiled again: ~1 CPU-minute each.
               TORCH_EXTENSIONS_DIR=str(KIT / "torch-extensions"))
    return env


def versions() -> dict[str, object]:
    """What the GPU run stands on: the GPU, torch/CUDA, and the version of each package the trainer imports."""
    import torch

    names = ["torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "tokenizers", "pyarrow",
             "numpy", "mlflow-skinny", "pydantic", *kit_names()]
    info: dict[str, object] = {"python": sys.version.split()[0], "torch_cuda": torch.version.cuda,
                               "cuda_available": torch.cuda.is_available(),
                               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                               "packages": {n: _installed_version(n) for n in dict.fromkeys(names)}}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        info.update(gpu_memory_gib=round(total / 2**30, 2), gpu_free_gib=round(free / 2**30, 2),
                    bf16=torch.cuda.is_bf16_supported())
    for mod in ("deepspeed", "datasets", "peft", "legistra.trainer.train"):
        __import__(mod)  # the imports the run needs, once, where a failure is cheapest
    return info


def rehearse(out: Path) -> list[str]:
    """The kit's checks, then gpu.sh's own rehearsal mode in the image environment; one line per problem."""
    kit, image = wheels(), image_packages()
    if not kit:
        return [f"no wheels in {WHEELS}: run make gpu-kit"]
    problems = kit_problems(kit, kit_names(), image) + requirement_gaps(kit, image) + check_installable(kit)
    python = make_image_env(KIT / "image-env", [w.name for w in kit], image, KIT / "image-wheels")
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out), "--rehearse"],
                          env=rehearsal_env(python), cwd=ROOT, capture_output=True, text=True)
    log = (out / "gpu.log").read_text() if (out / "gpu.log").exists() else done.stderr
    steps = json.loads((out / "steps.json").read_text()) if (out / "steps.json").exists() else []
    if done.returncode != 0 or not steps:
        problems.append(f"gpu.sh --rehearse exited {done.returncode}: {done.stderr[-1500:]}")
    for s in steps:
        if s["rc"] != 0:
            problems.append(f"gpu.sh step {s['step']} ended with {s['rc']} in the image environment:\n{log[-3000:]}")
    return problems + _outputs_problems(out)


def _outputs_problems(out: Path) -> list[str]:
    """What gpu.sh must bring back: the versions, the ceilings, a test report with tests run (not skipped), a
    profile, benchmark rows."""
    import xml.etree.ElementTree as ET

    problems = []
    if not (out / "versions.json").exists():
        problems.append("gpu.sh wrote no versions.json")
    suites = ET.parse(out / "test_gpu.xml").getroot() if (out / "test_gpu.xml").exists() else None
    suite = suites.find("testsuite") if suites is not None and suites.tag == "testsuites" else suites
    if suite is None or int(suite.get("tests", 0)) == 0 or int(suite.get("skipped", 0)) > 0 \
            or int(suite.get("failures", 0)) + int(suite.get("errors", 0)) > 0:
        counts = dict(suite.attrib) if suite is not None else "no report"
        problems.append(f"tests/test_gpu.py did not run and pass in the image environment: {counts}")
    ceilings = json.loads((out / "ceilings.json").read_text()) if (out / "ceilings.json").exists() else {}
    if not ceilings.get("matmul", {}).get("tflops", 0) > 0 or not ceilings.get("copy", {}).get("tb_per_s", 0) > 0:
        problems.append(f"gpu.sh measured no ceilings: {ceilings}")
    profile = out / "profile-summarization-ours.profile.json"
    shares = json.loads(profile.read_text()).get("shares", {}) if profile.exists() else {}
    if not shares or not (out / "profile-summarization-ours.profile.txt").exists():
        problems.append("gpu.sh brought back no profile of our trainer")
    results = sorted(out.glob("trainer-*.json"))
    rows = json.loads(results[-1].read_text())["results"] if results else []
    if not rows or any("error" in r for r in rows):
        problems.append(f"the trainer benchmark brought back no clean rows: {rows}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_kit")
    ap.add_argument("command", choices=["build", "check", "rehearse", "versions"])
    ap.add_argument("--out", type=Path, default=None,
                    help="rehearse: the folder gpu.sh writes (.gpu-kit/rehearsal); versions: the JSON file")
    a = ap.parse_args()
    if a.command == "build":
        manifest = build()
        size = sum(int(str(e["bytes"])) for e in manifest.values())
        print(f"gpu-kit: {len(manifest)} wheels, {size / 2**20:.1f} MiB in {WHEELS}")
    elif a.command == "check":
        kit, image = wheels(), image_packages()
        problems = kit_problems(kit, kit_names(), image) + requirement_gaps(kit, image) + check_installable(kit)
        print("\n".join(problems) or f"gpu-kit: {len(kit)} wheels install on CPython {PYTHON} and meet every need")
        raise SystemExit(1 if problems else 0)
    elif a.command == "rehearse":
        out = a.out or KIT / "rehearsal"
        shutil.rmtree(out, ignore_errors=True)
        problems = rehearse(out)
        print("\n".join(problems) or f"gpu-kit rehearsal passed; gpu.sh wrote {out}")
        raise SystemExit(1 if problems else 0)
    else:
        # To a file: deepspeed prints its accelerator banner on stdout when imported.
        text = json.dumps(versions(), indent=2)
        if a.out:
            a.out.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
