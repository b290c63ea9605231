"""What the process learns from its environment (torchrun / PyTorchJob) and how it logs."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from legistra.contract import ENV_PROGRESS


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int = 1  # processes on this node (torchrun's --nproc-per-node)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this rank if its launcher dies, so a killed torchrun leaves no orphan ranks
    (torchrun starts each rank in a session of its own, out of reach of a signal to the launcher's group).

    `parent_pid` is read as early as possible at start-up: if the launcher died before the request was
    made, the rank exits now instead of waiting forever at the rendezvous.
    """
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent_pid:
        os._exit(137)


def exit_now(code: int) -> None:
    """End the rank with `code` once its work is written, without the interpreter's teardown.

    A process group that DeepSpeed or ZeRO-3 parameters still hold keeps gloo's worker threads alive after
    `destroy_process_group`. When such a thread drops the last reference to a Python tensor (an async
    all-gather a barrier waited on) while the main thread is already in `Py_FinalizeEx`, CPython ends it with
    `pthread_exit`, whose unwinding crosses a noexcept destructor: "terminate called without an active
    exception", SIGABRT, a finished training reported as failed (and a deterministic exit 2 turned into a
    retryable -6). Seen in a core dump of a ZeRO-3 rank (about 1 run in 12 on 2 busy cores). Everything a run
    keeps is written and closed before this (MLflow run ended, result.json, registry); only the buffers of
    the standard streams and of logging are left, flushed here.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing more can reach it anyway
    os._exit(code)


def setup_logging(dist: DistInfo) -> None:
    """Rank 0 logs at INFO; the other ranks only report warnings and errors, tagged with their rank."""
    level = logging.INFO if dist.is_main else logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if dist.world_size > 1:
        fmt = f"%(asctime)s [rank {dist.rank}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    for noisy in ("urllib3", "botocore", "boto3", "s3transfer", "filelock", "httpx", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import transformers

        transformers.utils.logging.set_verbosity(logging.WARNING)
        import datasets

        datasets.utils.logging.set_verbosity(logging.WARNING)
        if not dist.is_main:
            datasets.utils.disable_progress_bars()
    except ImportError:
        pass


def show_progress_bar() -> bool:
    """tqdm on a terminal; one log line per logging interval in pods, where bars garble the log."""
    forced = os.environ.get(ENV_PROGRESS)
    if forced is not None:
        return forced == "bar"
    return sys.stderr.isatty()
