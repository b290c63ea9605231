"""The GPU kit: its checks as decisions, and the whole rehearsal on CPU (what must hold before device time is spent)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from benchmarks import gpu_kit
from benchmarks.gpu_kit import Wheel, kit_problems, requirement_gaps

ROOT = Path(__file__).resolve().parent.parent


def wheel(folder: Path, name: str, version: str, *requires: str, tag: str = "py3-none-any") -> Wheel:
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    meta = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                      *(f"Requires-Dist: {r}" for r in requires)])
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", meta)
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", "")
    return Wheel(name, version, path)


def test_a_requirement_met_by_neither_the_image_nor_the_kit_is_named(tmp_path: Path) -> None:
    image: dict[str, str | None] = {"numpy": "2.5.2", "torch": "2.11.0", "packaging": None}
    kit = [
        wheel(tmp_path, "nltk", "3.10.4", "defusedxml", "numpy>=1.20", "packaging>=99",
              "colorama; sys_platform == 'win32'", "pytest; extra == 'test'", "tomli; python_version < '3.11'"),
        wheel(tmp_path, "deepspeed", "0.19.8", "torch>=2.12", "hjson"),
        wheel(tmp_path, "hjson", "3.1.0"),
    ]
    assert requirement_gaps(kit, image) == [
        "nltk 3.10.4 needs defusedxml: in neither the image nor the kit",
        "deepspeed 0.19.8 needs torch>=2.12: the image has 2.11.0",
    ]  # a version-less image package meets any version; other platforms, extras and old Pythons do not count
    assert requirement_gaps([*kit[1:], wheel(tmp_path, "defusedxml", "0.7.1")], image)[0].startswith("deepspeed")


def test_a_kit_that_replaces_the_image_or_misses_a_wheel_is_refused(tmp_path: Path) -> None:
    image: dict[str, str | None] = {"torch": "2.11.0"}
    kit = [wheel(tmp_path, "torch", "2.13.0", tag="cp312-cp312-manylinux_2_28_x86_64"),
           wheel(tmp_path, "hjson", "3.1.0")]
    problems = kit_problems(kit, ["hjson", "datasets"], image)
    assert "torch: the image has it already; the kit must not replace it" in problems
    assert any(p.startswith("datasets: named in kit.txt but no wheel") for p in problems)
    assert any(p.startswith("torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl: not named") for p in problems)
    big = tmp_path / "big"
    big.mkdir()
    huge = wheel(big, "hjson", "3.1.0")
    with open(huge.path, "ab") as f:
        f.truncate(gpu_kit.MAX_BYTES + 1)
    assert kit_problems([huge], ["hjson"], image) == ["the kit is 50.0 MiB, over 50 MiB"]


def test_a_wheel_for_another_python_is_refused_by_pips_resolver(tmp_path: Path) -> None:
    good = wheel(tmp_path, "hjson", "3.1.0")
    assert gpu_kit.check_installable([good]) == []
    bad = wheel(tmp_path, "fastlib", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    problems = gpu_kit.check_installable([good, bad])
    assert len(problems) == 1 and "fastlib" in problems[0]


@pytest.mark.slow
def test_the_gpu_run_rehearses_on_cpu_with_only_the_image_and_the_kit(tmp_path: Path) -> None:
    """`make gpu-kit` then gpu.sh's rehearsal: tests/test_gpu.py and the benchmark run in an environment that
    holds only the GPU image's packages (transformers at the image's version) and the kit."""
    build = subprocess.run([sys.executable, "-m", "benchmarks.gpu_kit", "build"], cwd=ROOT, capture_output=True,
                           text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    manifest = json.loads(gpu_kit.MANIFEST.read_text())
    assert "deepspeed" in manifest and "torch" not in manifest
    assert sum(e["bytes"] for e in manifest.values()) <= gpu_kit.MAX_BYTES
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_kit", "rehearse", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    versions = json.loads((out / "versions.json").read_text())
    assert versions["packages"]["transformers"] == gpu_kit.image_packages()["transformers"]
    assert versions["packages"]["deepspeed"] == manifest["deepspeed"]["version"]
    bench = json.loads(next(out.glob("trainer-cpu-*.json")).read_text())
    assert {(r["workload"], r["config"]) for r in bench["results"]} == {("summarization", "baseline"),
                                                                        ("summarization", "ours")}
    assert all(r["tokens_per_second"] > 0 and r["estimated_gpu_memory_gb"] > 0 for r in bench["results"])
    assert "summarization" in bench["ratios"]
    steps = json.loads((out / "steps.json").read_text())
    assert [s["step"] for s in steps] == ["versions", "ceilings", "tests", "profile", "bench"]
    assert all(s["rc"] == 0 for s in steps), steps
    profile = json.loads((out / "profile-summarization-ours.profile.json").read_text())
    assert profile["steps"] == 2 and abs(sum(profile["shares"].values()) - 1) < 1e-6 and "matmul" in profile["shares"]
    assert json.loads((out / "ceilings.json").read_text())["matmul"]["tflops"] > 0
    # The image env really lacks what the kit does not carry: mlflow is not importable there.
    python = gpu_kit.KIT / "image-env" / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import mlflow"], capture_output=True, text=True,
                           env=gpu_kit.rehearsal_env(python))
    assert probe.returncode != 0 and "No module named 'mlflow'" in probe.stderr
