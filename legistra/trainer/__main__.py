"""In-pod entry point: `torchrun ... -m legistra.trainer --config /etc/legistra/run.json`.

Reads only the config file and the environment that torchrun / PyTorchJob provide.
"""

from __future__ import annotations

import os

PARENT_PID = os.getppid()  # first thing: see runtime.die_with_parent

import argparse  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

from legistra.trainer.runtime import die_with_parent  # noqa: E402

die_with_parent(PARENT_PID)

from legistra.api.validation import SpecError, load_training_run  # noqa: E402
from legistra.contract import (  # noqa: E402
    ENV_CACHE_DIR,
    ENV_CHECKPOINT_URI,
    ENV_OUTPUT_DIR,
    ENV_TERMINATION_LOG,
    EXIT_DETERMINISTIC,
    EXIT_PREEMPTED,
    PREEMPTED,
    checkpoint_uri,
    configured_uris,
    move_credentials,
    registry_uri,
    termination_message,
    tracking_uri,
)
from legistra.trainer.data import DataError  # noqa: E402
from legistra.trainer.modeling import ModelError  # noqa: E402


def fail(reason: str, exc: Exception) -> int:
    """A failure that a retry would repeat: one line on stderr and in the termination message, exit 2.
    Or a stop on SIGTERM after a saved checkpoint (Preempted): the next attempt resumes, exit 143."""
    print(f"{'stopped' if reason == PREEMPTED else 'error'}: {exc}", file=sys.stderr)
    path = os.environ.get(ENV_TERMINATION_LOG)
    if path:
        try:
            Path(path).write_text(termination_message(reason, str(exc)), encoding="utf-8")
        except OSError:
            pass  # no such file outside a pod; the message is on stderr anyway
    return EXIT_PREEMPTED if reason == PREEMPTED else EXIT_DETERMINISTIC


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m legistra.trainer", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="resolved TrainingRun as JSON")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(os.environ.get(ENV_OUTPUT_DIR, "/var/run/legistra")),
        help="checkpoints, model and result (a volume that survives pod restarts)",
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="local MLflow store / registry / caches")
    args = parser.parse_args(argv)

    from legistra.trainer.train import Diverged, RunPaths, RunSettings, run_training

    try:
        run = load_training_run(args.config)
    except (OSError, SpecError) as exc:
        return fail("TrainerError", exc)
    state = args.state_dir or args.output_dir
    paths = RunPaths(root=args.output_dir, cache=Path(os.environ.get(ENV_CACHE_DIR, state / "cache")))
    configured_tracking, configured_registry = configured_uris()
    settings = RunSettings(
        tracking_uri=move_credentials(str(tracking_uri(run.spec, configured_tracking, state)), os.environ),
        registry_uri=str(registry_uri(run.spec, configured_registry, state)),
        mlflow_artifact_root=os.environ.get("LEGISTRA_MLFLOW_ARTIFACT_ROOT"),
        checkpoint_uri=checkpoint_uri(run.spec, os.environ.get(ENV_CHECKPOINT_URI)),
    )
    from legistra.trainer.checkpoints import Preempted

    try:
        run_training(run, paths, settings)
    except Preempted as exc:
        return fail(PREEMPTED, exc)
    except DataError as exc:
        return fail("InvalidData", exc)
    except ModelError as exc:
        return fail("InvalidModel", exc)
    except Diverged as exc:
        return fail("Diverged", exc)
    except SpecError as exc:
        return fail("TrainerError", exc)
    return 0


def entry() -> None:
    """`main`, then `exit_now`: the exit code is the one main chose, never an abort of the teardown."""
    from legistra.trainer.runtime import exit_now

    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, a bad option; the codes Python itself would give
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    exit_now(code)


if __name__ == "__main__":
    entry()
