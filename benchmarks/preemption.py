"""Checkpoints in object storage under preemption: the training stall per save, and the optimizer steps lost
when a run is stopped with SIGTERM (a save in the grace period) and with SIGKILL (a node lost).

The demo's MiniLM on the example clauses, 2 processes with ZeRO-2, a save every `save_steps`, checkpoints in a
moto S3 server (in this process). Each interruption lands at a random moment after a periodic save; the run is
then resumed by a fresh `legistra train` with empty local storage, as a new pod on another node would.
Steps lost = the last step the interrupted run logged minus the step the next run resumed from.
Last, two nodes without a shared volume: two torchrun agents with separate local storage, drained by SIGTERM
and resumed by two fresh ones (`two_nodes`).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from kit.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(r"\bstep (\d+)/\d+")


def _doc(name: str, uri: str, steps: int, save_steps: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "risk-classification.yaml").read_text())
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    data = ROOT / "examples" / "data"
    spec["data"].update(train=str(data / "risk_train.jsonl"), validation=str(data / "risk_validation.jsonl"),
                        maxLength=64)
    spec["training"].update(maxSteps=steps, saveSteps=save_steps, batchSize=4, saveTotalLimit=2, evaluation="no",
                            dataloaderWorkers=0, precision="fp32", loggingSteps=1)
    spec["deepspeed"] = {"zeroStage": 2}
    spec["checkpoints"] = {"uri": uri}
    spec["registry"] = {"modelName": name}
    return doc


class Run:
    """`legistra train` in the background, its logged steps followed as they come."""

    def __init__(self, run_file: Path, state: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "legistra"), "--state-dir", str(state), "train", str(run_file),
             "--nproc", "2", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.last_step = 0
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            m = STEP.search(line)
            if m and "[rank 0]" in line:
                self.last_step = max(self.last_step, int(m.group(1)))

    def finish(self) -> tuple[int, dict[str, Any] | None]:
        out = self.proc.communicate(timeout=900)[0]
        self._reader.join(timeout=10)
        result = json.loads(out[out.index("{"):]) if self.proc.returncode == 0 and "{" in out else None
        return self.proc.returncode, result


def run(work: Path, steps: int = 60, save_steps: int = 10, seed: int = 0) -> dict[str, Any]:
    import boto3
    from moto.server import ThreadedMotoServer

    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                           "AWS_ENDPOINT_URL_S3")})
    try:
        boto3.client("s3").create_bucket(Bucket="bench")
        out: dict[str, Any] = {"steps": steps, "save_steps": save_steps}
        for how, sig in (("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL)):
            name = f"preempt-{how}"
            run_file = work / f"{name}.yaml"
            run_file.write_text(yaml.safe_dump(_doc(name, "s3://bench/checkpoints", steps, save_steps)))
            first = Run(run_file, work / f"{how}-pod-1", env)
            target = rng.randint(2, steps // save_steps - 2) * save_steps + rng.randint(1, save_steps - 1)
            while first.proc.poll() is None and first.last_step < target:
                time.sleep(0.01)
            at = first.last_step
            if sig == signal.SIGTERM:
                first.proc.send_signal(signal.SIGTERM)  # to `legistra train`, which passes it on once
            else:
                os.killpg(first.proc.pid, signal.SIGKILL)  # everything at once, as a lost node
            rc, _ = first.finish()
            second = Run(run_file, work / f"{how}-pod-2", env)  # empty local storage
            _, result = second.finish()
            assert result is not None, "".join(second.stderr[-40:])
            resumed = int(str(result.get("resumedFrom") or "checkpoint-0").rsplit("-", 1)[-1])
            ck = result.get("checkpoints") or {}
            out[how] = {"signal_at_step": at, "exit_code": rc, "resumed_from": resumed,
                        "steps_lost": max(0, at - resumed), "final_step": result["globalStep"],
                        "stall_seconds": ck.get("stallSeconds"), "upload_seconds": ck.get("uploadSeconds"),
                        "uploaded_bytes": ck.get("uploadedBytes")}
            print(json.dumps({how: out[how]}), flush=True)
        out["two_nodes"] = two_nodes(work, env, "s3://bench/checkpoints", steps=30, save_steps=save_steps)
        print(json.dumps({"two_nodes": out["two_nodes"]}), flush=True)
        return out
    finally:
        server.stop()


def two_nodes(work: Path, env: dict[str, str], uri: str, steps: int, save_steps: int) -> dict[str, Any]:
    """Two nodes on this machine: two torchrun agents (one rank each, static rendezvous), each with its own
    local storage, as two pods of a PyTorchJob. Both get SIGTERM mid-run (a drain); then two fresh pods resume."""
    from legistra.api.validation import parse_training_run
    from legistra.contract import run_document
    from legistra.trainer.checkpoints import NODE_DONE, complete_steps, steps_in
    from legistra.trainer.train import RunSettings, remote_checkpoints

    run = parse_training_run(_doc("two-nodes", uri, steps, save_steps))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "two-nodes.json"
    config.write_text(json.dumps(run_document(run)))
    remote = remote_checkpoints(run, RunSettings(tracking_uri="", registry_uri=None, checkpoint_uri=uri))
    assert remote is not None

    def pods(attempt: int) -> list[subprocess.Popen[str]]:
        port, procs = free_port(), []
        for node in (0, 1):
            d = work / f"two-nodes-{attempt}-node{node}"
            d.mkdir(parents=True, exist_ok=True)
            node_env = {**env, "LEGISTRA_TERMINATION_LOG": str(d / "termination"), "LEGISTRA_PROGRESS": "log",
                        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'two-nodes-mlflow.db'}",
                        "LEGISTRA_REGISTRY_URI": str(work / "two-nodes-registry"), "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                   "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}",
                   "-m", "legistra.trainer", "--config", str(config), "--output-dir", str(d / "output"),
                   "--state-dir", str(d)]
            procs.append(subprocess.Popen(cmd, env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True))
        return procs

    first = pods(1)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not complete_steps(remote.keys()):
        time.sleep(0.1)
    time.sleep(0.5)
    for proc in first:
        proc.send_signal(signal.SIGTERM)  # the kubelet signals each pod's first process
    codes = [proc.wait(timeout=600) for proc in first]
    keys = remote.keys()
    by_step = steps_in(keys)
    stopped = complete_steps(keys)[-1]
    markers = sorted(n for n in by_step[stopped] if n.startswith(NODE_DONE))
    second = pods(2)
    errors = [proc.communicate(timeout=900)[1] for proc in second]
    assert all(proc.returncode == 0 for proc in second), errors[0][-3000:] + errors[1][-3000:]
    result = json.loads((work / "two-nodes-2-node0" / "output" / "result.json").read_text())
    return {"exit_codes": codes, "stopped_at": stopped, "node_markers": markers,
            "files_at_stop": sorted(n for n in by_step[stopped] if not n.startswith(("_", "global_step"))),
            "shards_at_stop": sorted(n.split("/", 1)[1] for n in by_step[stopped] if n.startswith("global_step")),
            "resumed_from": str(result.get("resumedFrom", "")).rsplit("/", 1)[-1],
            "final_step": result["globalStep"]}
