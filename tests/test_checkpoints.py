"""Checkpoints in object storage: the decisions, the S3 adapter against moto, and a preempted run end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from legistra.trainer.checkpoints import (
    COMPLETE,
    NODE_DONE,
    RemoteCheckpoints,
    complete_steps,
    newest_complete,
    node_needs,
    remote_prefix,
    restore,
    to_prune,
)
from legistra.trainer.runtime import DistInfo
from tests.conftest import VENV_BIN, base_run, legistra, write_run


def listing(*steps: tuple[int, bool]) -> list[str]:
    keys = ["result.json"]
    for step, complete in steps:
        keys += [f"checkpoint-{step}/adapter_model.safetensors", f"checkpoint-{step}/{NODE_DONE}0"]
        if complete:
            keys.append(f"checkpoint-{step}/{COMPLETE}")
    return keys


def test_only_checkpoints_with_their_marker_count() -> None:
    keys = listing((10, True), (20, True), (30, False))
    assert complete_steps(keys) == [10, 20]
    assert newest_complete(keys) == 20
    assert newest_complete(listing((10, False))) is None
    assert newest_complete([]) is None


@pytest.mark.parametrize(
    ("steps", "keep", "pruned"),
    [
        (((10, True), (20, True), (30, True)), 2, [10]),
        (((10, True), (20, True), (30, True)), 1, [10, 20]),
        (((10, True), (20, True), (30, True)), None, []),  # no saveTotalLimit: keep all
        (((10, True), (20, False), (30, True)), 5, [20]),  # an interrupted upload older than a complete one
        (((10, True), (20, True), (30, False)), 1, [10]),  # newer and incomplete: may still be uploading
        (((10, False),), 1, []),  # nothing complete yet: delete nothing
    ],
)
def test_retention_keeps_save_total_limit_complete_checkpoints(
        steps: tuple[tuple[int, bool], ...], keep: int | None, pruned: list[int]) -> None:
    assert to_prune(listing(*steps), keep) == pruned


def test_a_node_fetches_only_its_own_ranks_files() -> None:
    node1 = range(2, 4)  # ranks 2 and 3
    assert node_needs("global_step10/zero_pp_rank_2_mp_rank_00_optim_states.pt", node1)
    assert node_needs("global_step10/bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt", node1)
    assert not node_needs("global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt", node1)
    assert node_needs("rng_state_3.pth", node1) and not node_needs("rng_state_1.pth", node1)
    for shared in ("trainer_state.json", "adapter_model.safetensors", "global_step10/mp_rank_00_model_states.pt",
                   "latest", "scheduler.pt"):
        assert node_needs(shared, node1)
    assert remote_prefix("s3://b/ckpt/", "team", "run", "uid-1") == "s3://b/ckpt/team/run/uid-1"


def test_restore_takes_the_newest_complete_checkpoint_and_prunes_nothing_it_needs(
        tmp_path: Path, bucket: str) -> None:
    remote = RemoteCheckpoints(f"s3://{bucket}/ckpt/ns/run/uid")
    for step in (10, 20, 30):
        local = tmp_path / "written" / f"checkpoint-{step}"
        (local / f"global_step{step}").mkdir(parents=True)
        (local / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        for rank in (0, 1, 2, 3):
            (local / f"rng_state_{rank}.pth").write_bytes(b"r")
        remote.upload_step(local, step, node=0)
        if step != 30:  # checkpoint-30 never got its marker: a kill during its upload
            remote.mark_complete(step)
    assert remote.nodes_done(30) == 1

    node1 = DistInfo(rank=2, world_size=4, local_rank=0, local_world_size=2)
    target = tmp_path / "fresh"
    assert restore(remote, target, node1) == 20
    got = sorted(p.name for p in (target / "checkpoint-20").iterdir())
    assert got == ["global_step20", "rng_state_2.pth", "rng_state_3.pth", "trainer_state.json"] or \
        got == ["rng_state_2.pth", "rng_state_3.pth", "trainer_state.json"]  # empty folders are not objects
    assert not list(target.glob(".download-*")) and not (target / "checkpoint-30").exists()
    assert restore(remote, target, node1) == 20  # already here: nothing downloaded again

    for old in to_prune(remote.keys(), 1):
        remote.delete_step(old)
    assert complete_steps(remote.keys()) == [20]
    assert remote.get_result() is None


def _remote_keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    out: list[str] = []
    for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
    return out


def _adapter(result: dict[str, Any], state: Path, name: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    from legistra.registry.registry import Registry

    Registry.open(str(state / "registry")).download(name, result["model"]["version"], state / "adapter")
    return load_file(str(state / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_sigterm_saves_and_a_fresh_pod_resumes_from_object_storage(
        tmp_path: Path, tiny_models: dict[str, Path], bucket: str) -> None:
    """2 ranks, ZeRO-2. A SIGTERM mid-epoch saves and uploads at the step in flight; a run with empty local
    storage resumes there from S3, ends at the same step count with the adapter of an uninterrupted run."""
    uri = f"s3://{bucket}/checkpoints"

    def doc(name: str) -> dict[str, Any]:
        return base_run("risk-classification", tiny_models["bert"], name,
                        training={"maxSteps": 30, "saveSteps": 10, "batchSize": 2, "saveTotalLimit": 2,
                                  "evaluation": "no"},
                        data={"maxSamples": 200}, deepspeed={"zeroStage": 2}, checkpoints={"uri": uri})

    def train(name: str, state: Path) -> dict[str, Any]:
        res = legistra("--state-dir", str(state), "train", str(write_run(tmp_path / f"{name}.yaml", doc(name))),
                       "--nproc", "2", "--json")
        assert res.returncode == 0, res.stderr[-4000:]
        out: dict[str, Any] = json.loads(res.stdout[res.stdout.index("{"):])
        return out

    reference = train("steady", tmp_path / "steady")

    run_file = write_run(tmp_path / "preempted.yaml", doc("preempted"))
    proc = subprocess.Popen([str(VENV_BIN / "legistra"), "--state-dir", str(tmp_path / "pod-1"), "train",
                             str(run_file), "--nproc", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        keys = _remote_keys(bucket, "checkpoints/local/preempted/")
        if any(k.endswith(f"checkpoint-10/{COMPLETE}") for k in keys):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("checkpoint-10 never completed in S3")
    os.kill(proc.pid, signal.SIGTERM)  # as the kubelet signals a pod's first process
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped: stopped on a termination signal; checkpoint-" in stderr
    stopped_at = newest_complete([k.split("/", 1)[1] for k in _remote_keys(bucket, "checkpoints/local/preempted/")
                                  if "/" in k])
    assert stopped_at is not None and 10 < stopped_at < 30, stopped_at  # mid-epoch, past the periodic save

    # A new pod on another node: empty local storage; it resumes from S3 where the last one stopped.
    result = train("preempted", tmp_path / "pod-2")
    assert result["globalStep"] == 30
    assert result["resumedFrom"].endswith(f"checkpoint-{stopped_at}")
    assert result["checkpoints"]["uploadSeconds"] and len(result["checkpoints"]["stallSeconds"]) >= 1

    ours, theirs = _adapter(result, tmp_path / "pod-2", "preempted"), _adapter(reference, tmp_path / "steady",
                                                                               "steady")
    assert ours.keys() == theirs.keys()
    worst = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)
    assert worst < 1e-4, worst

    prefix_keys = [k.split("/", 1)[1] for k in _remote_keys(bucket, "checkpoints/local/preempted/") if "/" in k]
    # saveTotalLimit 2: exactly the two newest of every save remain (the periodic ones and the stop's; a loaded
    # machine may deliver the signal after step 20, and then the stop's own checkpoint is among them).
    assert complete_steps(prefix_keys) == sorted({10, 20, 30, stopped_at})[-2:]
    assert any(k.endswith("/result.json") for k in _remote_keys(bucket, "checkpoints/local/preempted/"))
    # A third pod of the finished run: it finds the result in S3 and neither trains nor registers again.
    again = legistra("--state-dir", str(tmp_path / "pod-3"), "train", str(run_file), "--json")
    assert again.returncode == 0 and "run already finished" in again.stderr
    assert json.loads(again.stdout[again.stdout.index("{"):])["model"] == result["model"]
    assert not (tmp_path / "pod-3" / "registry").exists() or not any((tmp_path / "pod-3" / "registry").iterdir())
