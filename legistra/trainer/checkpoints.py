"""Checkpoints in object storage, and a save when the pod is told to stop.

With `spec.checkpoints.uri`, every save the Trainer writes to node-local storage is uploaded in the background
(training goes on) to `<uri>/<namespace>/<run>/<uid>/checkpoint-<step>/`: the first rank of each node uploads
what its node wrote (under ZeRO, its ranks' shards) and then leaves a per-node marker; the first rank of the
job waits for every node's marker and writes `_COMPLETE` last. Only a checkpoint with `_COMPLETE` counts: at
start-up the first rank of each node downloads the newest complete one (its ranks' files only), so a new job
on other nodes, with empty local storage, resumes where the last one saved. Remote retention follows
`saveTotalLimit`.

On SIGTERM (eviction, preemption, node drain, suspend) or a first Ctrl-C, every rank agrees at the end of the
current step (an all-reduce of the flag), the Trainer saves, the uploads finish, and the trainer exits with
the Preempted termination message; the operator retries such a run without counting the attempt.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from legistra import s3
from legistra.trainer.runtime import DistInfo

log = logging.getLogger("legistra.trainer")

COMPLETE = "_COMPLETE"  # written last, by the job's first rank, once every node has uploaded
NODE_DONE = "_UPLOADED_NODE_"  # + node index: that node's files are all there
RESULT = "result.json"  # the finished run's result: a new pod of a finished run does not train again
STEP_DIR = re.compile(r"^checkpoint-(\d+)/")
# Files that belong to one rank: a node fetches only its own ranks' (ZeRO shards, RNG states).
RANK_FILE = re.compile(r"(?:zero_pp_rank_|rng_state_)(\d+)")
NODE_WAIT_SECONDS = 3600  # how long the first rank waits for the other nodes' uploads of one save


class Preempted(Exception):
    """Training stopped on a termination signal after saving (and uploading) a checkpoint at `step`."""

    def __init__(self, step: int) -> None:
        self.step = step
        super().__init__(f"stopped on a termination signal; checkpoint-{step} saved, the next attempt resumes there")


# -- Pure decisions over a listing of keys relative to the run's prefix -------------------------------------


def steps_in(keys: Iterable[str]) -> dict[int, set[str]]:
    """Step -> the names under its checkpoint folder."""
    out: dict[int, set[str]] = {}
    for key in keys:
        m = STEP_DIR.match(key)
        if m:
            out.setdefault(int(m.group(1)), set()).add(key[m.end():])
    return out


def complete_steps(keys: Iterable[str]) -> list[int]:
    return sorted(step for step, names in steps_in(keys).items() if COMPLETE in names)


def newest_complete(keys: Iterable[str]) -> int | None:
    done = complete_steps(keys)
    return done[-1] if done else None


def to_prune(keys: Iterable[str], keep: int | None) -> list[int]:
    """Steps to delete: complete ones beyond the newest `keep` (None: keep all), and incomplete ones older than
    the newest complete one (an upload that a kill interrupted). Newer incomplete ones may still be uploading."""
    by_step = steps_in(keys)
    done = sorted(s for s, names in by_step.items() if COMPLETE in names)
    if not done:
        return []
    drop = set(done[:-keep] if keep else [])
    drop |= {s for s, names in by_step.items() if COMPLETE not in names and s < done[-1]}
    return sorted(drop)


def local_steps(folder: Path) -> list[tuple[int, Path]]:
    """The checkpoint folders the Trainer wrote under `folder`, oldest first."""
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return sorted(found)


def node_needs(name: str, ranks: range) -> bool:
    """Whether a node holding `ranks` needs file `name` of a checkpoint (another rank's shard: no)."""
    m = RANK_FILE.search(Path(name).name)
    return m is None or int(m.group(1)) in ranks


def remote_prefix(uri: str, namespace: str | None, name: str, identity: str) -> str:
    return f"{uri.rstrip('/')}/{namespace or 'local'}/{name}/{identity}"


# -- The object-storage adapter -----------------------------------------------------------------------------


class RemoteCheckpoints:
    """One run's checkpoints under an s3:// prefix (credentials and endpoint from the environment)."""

    def __init__(self, prefix: str) -> None:
        self.uri = prefix.rstrip("/")
        self.bucket, key = s3.parse_s3_uri(self.uri)
        self.key = key.strip("/")
        self.client = s3.client()

    def keys(self) -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key + "/"):
            out += [o["Key"][len(self.key) + 1:] for o in page.get("Contents", [])]
        return out

    def _put(self, name: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.key}/{name}", Body=body)

    def upload_step(self, local: Path, step: int, node: int) -> int:
        """Every file of the local checkpoint folder, then this node's marker; returns the bytes sent."""
        sent = 0
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            self.client.upload_file(str(f), self.bucket, f"{self.key}/checkpoint-{step}/{f.relative_to(local)}")
            sent += f.stat().st_size
        self._put(f"checkpoint-{step}/{NODE_DONE}{node}", b"")
        return sent

    def nodes_done(self, step: int) -> int:
        return sum(1 for name in steps_in(self.keys()).get(step, set()) if name.startswith(NODE_DONE))

    def mark_complete(self, step: int) -> None:
        self._put(f"checkpoint-{step}/{COMPLETE}", json.dumps({"step": step, "at": time.time()}).encode())

    def delete_step(self, step: int, names: set[str] | None = None) -> None:
        """`names`: the step's objects when the caller has just listed them (saves a listing per step)."""
        names = steps_in(self.keys()).get(step, set()) if names is None else names
        # The marker first: a half-deleted checkpoint is then an incomplete one, never a complete one.
        ordered = sorted(names, key=lambda n: n != COMPLETE)
        for name in ordered:
            self.client.delete_object(Bucket=self.bucket, Key=f"{self.key}/checkpoint-{step}/{name}")

    def prune(self, keep: int | None) -> None:
        """Delete what `to_prune` names, from one listing."""
        keys = self.keys()
        by_step = steps_in(keys)
        for step in to_prune(keys, keep):
            self.delete_step(step, by_step[step])

    def download_step(self, step: int, target: Path, ranks: range, names: set[str] | None = None) -> Path:
        """The checkpoint's files this node needs, into `target/checkpoint-<step>` (written under a temporary
        name first: a download cut short never looks like a checkpoint)."""
        final = target / f"checkpoint-{step}"
        tmp = target / f".download-{step}"
        names = steps_in(self.keys()).get(step, set()) if names is None else names
        for name in sorted(names):
            if name.startswith((COMPLETE, NODE_DONE)) or not node_needs(name, ranks):
                continue
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, f"{self.key}/checkpoint-{step}/{name}", str(dest))
        tmp.rename(final)
        return final

    def put_result(self, path: Path) -> None:
        self._put(RESULT, path.read_bytes())

    def get_result(self) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=f"{self.key}/{RESULT}")["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None


def restore(remote: RemoteCheckpoints, local: Path, dist: DistInfo) -> int | None:
    """Before training: bring the newest complete remote checkpoint to this node unless it is already there.
    The node's first rank downloads; the others wait on a file lock. Returns the step, or None."""
    from filelock import FileLock

    local.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local / ".restore.lock")):
        keys = remote.keys()
        by_step = steps_in(keys)
        step = newest_complete(keys)
        if step is None:
            return None
        if (local / f"checkpoint-{step}").is_dir():
            return step
        here = local_steps(local)
        if here and here[-1][0] > step:
            return here[-1][0]  # this node's own storage survived and holds a newer save
        per_node = max(1, dist.local_world_size)
        node = dist.rank // per_node
        started = time.monotonic()
        remote.download_step(step, local, range(node * per_node, (node + 1) * per_node), by_step[step])
        log.info("downloaded checkpoint-%d from %s in %.1fs", step, remote.uri, time.monotonic() - started)
        return step


# -- Callbacks ------------------------------------------------------------------------------------------------


@dataclass
class SaveTimes:
    """Per save: how long training stood still (the local save, plus waiting for the previous upload)."""

    stalls: list[float] = field(default_factory=list)
    uploads: list[float] = field(default_factory=list)
    bytes_sent: int = 0


class CheckpointSync(TrainerCallback):
    """Uploads every save in the background (see the module's docstring). All ranks take part: the barrier in
    `on_save` makes sure every rank of every node has written its files before its node uploads them."""

    def __init__(self, remote: RemoteCheckpoints, dist: DistInfo, nodes: int, keep: int | None) -> None:
        self.remote, self.dist, self.nodes, self.keep = remote, dist, nodes, keep
        self.times = SaveTimes()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._save_started: float | None = None

    @property
    def uploads_here(self) -> bool:
        return self.dist.local_rank == 0

    def wait(self) -> None:
        """Wait for the upload in flight; an upload that failed fails the run (its checkpoint would not count)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"checkpoint upload to {self.remote.uri} failed: {error}") from error

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kw: Any) -> None:
        if control.should_save:
            self._save_started = time.monotonic()
            # The Trainer rotates local checkpoints while saving: the previous upload must be done first.
            self.wait()

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.barrier()
        step = int(state.global_step)
        local = Path(str(args.output_dir)) / f"checkpoint-{step}"
        if self.uploads_here and local.is_dir():
            self._thread = threading.Thread(target=self._upload, args=(local, step), daemon=True,
                                            name=f"upload-checkpoint-{step}")
            self._thread.start()
        if self._save_started is not None:
            self.times.stalls.append(time.monotonic() - self._save_started)
            self._save_started = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kw: Any) -> None:
        self.wait()

    def _upload(self, local: Path, step: int) -> None:
        try:
            started = time.monotonic()
            node = self.dist.rank // max(1, self.dist.local_world_size)
            self.times.bytes_sent += self.remote.upload_step(local, step, node)
            if self.dist.is_main:
                deadline = time.monotonic() + NODE_WAIT_SECONDS
                while self.remote.nodes_done(step) < self.nodes:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"not every node uploaded checkpoint-{step} within {NODE_WAIT_SECONDS}s")
                    time.sleep(1.0)
                self.remote.mark_complete(step)
                self.remote.prune(self.keep)
            elif self.keep:
                # The Trainer rotates local checkpoints on the first node only; the others keep theirs in check.
                for _, stale in local_steps(local.parent)[:-self.keep]:
                    shutil.rmtree(stale, ignore_errors=True)
            self.times.uploads.append(time.monotonic() - started)
            log.info("checkpoint-%d uploaded to %s in %.1fs", step, self.remote.uri, self.times.uploads[-1])
        except BaseException as exc:  # reported on the training thread, at the next save or at the end
            self._error = exc


class StopOnSignal(TrainerCallback):
    """SIGTERM (or a first SIGINT) asks for one last save: the ranks agree at the end of the step in flight."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
        self.requested = True
        log.warning("%s received: saving a checkpoint after this step, then stopping",
                    signal.Signals(signum).name)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kw: Any) -> None:
        import torch
        import torch.distributed as tdist

        flag = self.requested
        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            t = torch.tensor([1.0 if flag else 0.0])
            if tdist.get_backend() == "nccl":
                t = t.cuda()
            tdist.all_reduce(t, op=tdist.ReduceOp.MAX)  # every rank stops at the same step
            flag = bool(t.item() > 0)
        if flag:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = int(state.global_step)
