"""Docs that run: every shell command in README.md and docs/*.md is executed as written, or its block opens with
a visible marker line `# Not run by the docs test: <why>`.

Commands run in order, one bash each, in a scratch folder that holds the repository's examples, manifests and
chart (so local state lands there), with `.venv/bin` first on PATH and KUBECONFIG pointing at the real API
server. One adaptation, and only one: `kubectl apply`/`create` get `--validate=false`, because kubectl 1.37
validates client-side against this v1.20 server's OpenAPI, which predates CEL (`x-kubernetes-validations`).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kit.apiserver import ApiServer, kubectl_binary
from tests.conftest import ROOT, VENV_BIN

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"^#\s*Not run by the docs test:\s*(.+)$", re.IGNORECASE)
LINKED = ("examples", "manifests", "helm", "docs")

# What this test did, for the session summary (conftest prints it).
SUMMARY: list[str] = []
SUMMARY_FILE = Path(tempfile.gettempdir()) / "legistra-docs-commands-summary.txt"


@dataclass
class Block:
    doc: str
    line: int
    commands: list[str]
    skip_reason: str | None


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start, body = m.group(1), i + 1, []
        i += 1
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if lang not in SHELL:
            continue
        reason = next((mm.group(1) for mm in (MARKER.match(b.strip()) for b in body[:1]) if mm), None)
        out.append(Block(path.relative_to(ROOT).as_posix(), start + 1, commands_of(body), reason))
    return out


def commands_of(body: list[str]) -> list[str]:
    """Shell lines joined over trailing backslashes; comment-only and empty lines dropped."""
    cmds: list[str] = []
    current = ""
    for raw in body:
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        cmds.append((current + line).strip())
        current = ""
    return cmds


ALL = [b for doc in DOCS for b in blocks(doc)]


def test_every_shell_block_runs_or_says_why_not() -> None:
    assert ALL, "no shell blocks found"
    for b in ALL:
        assert b.commands, f"{b.doc}:{b.line}: an empty shell block"
        if b.skip_reason is not None:
            assert len(b.skip_reason) > 15, f"{b.doc}:{b.line}: say why the block cannot run here"


def kubectl_shim(folder: Path) -> None:
    """`kubectl` on PATH = the pinned one, with --validate=false added to apply/create (see the module doc)."""
    shim = folder / "kubectl"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        f'real="{kubectl_binary()}"\n'
        'for a in "$@"; do case "$a" in apply|create) exec "$real" "$@" --validate=false;; esac; done\n'
        'exec "$real" "$@"\n')
    shim.chmod(0o755)


@pytest.fixture()
def own_apiserver() -> Iterator[ApiServer]:
    """A server of its own (5 s): the docs begin with `kubectl create namespace`, which only a cluster that has
    never seen them accepts, whatever other tests ran before on the session's server."""
    from kit import apiserver as envtest

    yield from envtest.start()


@pytest.mark.apiserver
@pytest.mark.slow
def test_docs_commands_run_as_written(own_apiserver: ApiServer, tmp_path: Path) -> None:
    apiserver = own_apiserver
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    shim = tmp_path / "bin"
    shim.mkdir()
    kubectl_shim(shim)
    env = {**apiserver.env(), "PATH": f"{shim}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    for var in ("MLFLOW_TRACKING_URI", "LEGISTRA_REGISTRY_URI", "AWS_ENDPOINT_URL_S3"):
        env.pop(var, None)  # the docs' commands start from a user's plain shell
    ran: list[str] = []
    skipped: list[str] = []
    for b in ALL:
        if b.skip_reason is not None:
            skipped.append(f"{b.doc}:{b.line} ({len(b.commands)} commands): {b.skip_reason}")
            continue
        for cmd in b.commands:
            res = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True,
                                 timeout=600)
            assert res.returncode == 0, (f"{b.doc}:{b.line}: `{cmd}` exited {res.returncode}\n"
                                         f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
            ran.append(f"{b.doc}:{b.line}: {cmd}")
    n_skipped = sum(int(s.split("(")[1].split()[0]) for s in skipped)
    SUMMARY.append(f"docs commands: ran {len(ran)}, marked not runnable here {n_skipped} "
                   f"(in {len(skipped)} blocks)")
    SUMMARY.extend(f"  ran     {r}" for r in ran)
    SUMMARY.extend(f"  not run {s}" for s in skipped)
    # Under pytest-xdist this runs in a worker; the session's summary is printed by the controller.
    SUMMARY_FILE.write_text("\n".join(SUMMARY) + "\n")
    assert len(ran) >= 15, ran
