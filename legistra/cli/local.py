"""`legistra train FILE`: the same trainer command a PyTorchJob pod runs, launched here with torchrun."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

from legistra.api.spec import TrainingRun
from legistra.cli.specfile import load_or_report
from legistra.contract import (
    ENV_PROGRESS,
    ENV_REGISTRY_URI,
    ENV_TERMINATION_LOG,
    ENV_TRACKING_URI,
    EXIT_DETERMINISTIC,
    EXIT_PREEMPTED,
    PREEMPTED,
    RESULT_FILE,
    move_credentials,
    parse_termination_message,
    run_document,
    trainer_argv,
)


def absolutize_data(run: TrainingRun, base: Path) -> TrainingRun:
    """Relative data/model paths are relative to the TrainingRun file, as in kustomize."""
    def fix(loc: str | None) -> str | None:
        if loc is None or "://" in loc or Path(loc).is_absolute():
            return loc
        candidate = (base / loc).resolve()
        return str(candidate) if candidate.exists() else loc

    spec = run.spec.model_copy(deep=True)
    spec.data.train = fix(spec.data.train) or spec.data.train
    spec.data.validation = fix(spec.data.validation)
    spec.model.name = fix(spec.model.name) or spec.model.name
    return run.model_copy(update={"spec": spec})


def default_nproc(run: TrainingRun) -> int:
    import torch

    if not torch.cuda.is_available():
        return 1
    return max(1, min(torch.cuda.device_count(), run.spec.resources.nodes * run.spec.resources.gpus_per_node))


def format_result(result: dict[str, Any]) -> str:
    lines = ["", "Training run finished."]
    metrics = result.get("metrics", {})
    shown = {k: v for k, v in metrics.items() if k.startswith("eval_") and "/" not in k}
    if shown:
        lines.append("  metrics (validation):")
        for k, v in sorted(shown.items()):
            lines.append(f"    {k.removeprefix('eval_'):<26} {v:.4f}")
    base = result.get("baseline") or {}
    if base:
        lines.append("  baseline (majority class):")
        for k, v in sorted(base.items()):
            lines.append(f"    {k:<26} {v:.4f}")
        acc, base_acc = metrics.get("eval_accuracy"), base.get("majority_accuracy")
        if acc is not None and base_acc is not None:
            verdict = "beats" if acc > base_acc else "does NOT beat"
            lines.append(f"  model accuracy {acc:.4f} {verdict} the majority baseline {base_acc:.4f}")
    ml = result.get("mlflow", {})
    lines.append(f"  MLflow run:   {ml.get('runId')}  ({ml.get('trackingUri')})")
    if ml.get("error"):
        lines.append(f"  MLflow error: {ml['error']}")
    model = result.get("model", {})
    alias = f" @{model['alias']}" if model.get("alias") else ""
    lines.append(f"  model:        {model.get('name')} v{model.get('version')}{alias} -> {model.get('uri')}")
    if result.get("promotion"):
        lines.append(f"  promotion:    {result['promotion']['reason']}")
    if result.get("resumedFrom"):
        lines.append(f"  resumed from: {result['resumedFrom']}")
    return "\n".join(lines)


def check_data(run: TrainingRun, cache_dir: Path, out: TextIO = sys.stderr) -> int | None:
    """The data preflight (legistra.trainer.data.preflight): None when the data is fine, else the exit code
    after printing every bad row."""
    from legistra.trainer.data import DataError, preflight

    try:
        checked = preflight(run.spec, cache_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("the data must be fixed first; training would fail the same way", file=sys.stderr)
        return EXIT_DETERMINISTIC
    print("  data ok: " + ", ".join(f"{n} {role} rows checked" for role, n in checked.items()), file=out)
    return None


def launch(cmd: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """Run torchrun in a session of its own and pass it SIGINT / SIGTERM exactly once each time one arrives
    here, as the kubelet signals a pod's first process: the first asks the ranks to save and stop after the
    step in flight, a second one stops them at once. (A terminal's Ctrl-C would otherwise reach torchrun twice,
    once from the terminal and once from us, and the second signal cuts its graceful shutdown short.)
    Returns the exit code and whether the user interrupted it (SIGINT)."""
    import signal

    from legistra.trainer.runtime import die_with_parent

    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            preexec_fn=lambda: die_with_parent(os.getppid()))  # killed with this process
    got: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        got.append(signum)
        if signum == signal.SIGINT and len(got) == 1:
            print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)",
                  file=sys.stderr)
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return rc, signal.SIGINT in got


def trainer_environment(args: argparse.Namespace, state: Path, nproc: int, termination: Path) -> dict[str, str]:
    """The trainer processes' environment: this one, with the command line's tracking and registry, credentials
    moved out of the tracking URI, and per-process thread counts."""
    env = dict(os.environ)
    if args.tracking_uri:
        env[ENV_TRACKING_URI] = args.tracking_uri
    if env.get(ENV_TRACKING_URI):
        env[ENV_TRACKING_URI] = move_credentials(env[ENV_TRACKING_URI], env)
    if args.registry:
        env[ENV_REGISTRY_URI] = args.registry
    env.setdefault(ENV_PROGRESS, "bar" if sys.stderr.isatty() else "log")
    env.setdefault("LEGISTRA_MLFLOW_ARTIFACT_ROOT", str(state / "mlartifacts"))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env[ENV_TERMINATION_LOG] = str(termination)
    return env


def train_locally(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.file)
    if loaded is None:
        return 2
    run = absolutize_data(loaded, Path(args.file).resolve().parent)
    state = Path(args.state_dir).resolve()
    run_dir = state / "runs" / run.metadata.name
    config_path = run_dir / "run.json"
    doc = run_document(run)

    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if config_path.exists():
        previous = json.loads(config_path.read_text(encoding="utf-8"))
        if previous.get("spec") != doc["spec"]:
            print(
                f"error: {run_dir} holds an earlier attempt of '{run.metadata.name}' with a different spec; "
                "rename the run or pass --fresh to discard its checkpoints",
                file=sys.stderr,
            )
            return 2
        result_file = run_dir / RESULT_FILE
        if result_file.exists():
            print(f"'{run.metadata.name}' already finished; pass --fresh to train again.")
            result = json.loads(result_file.read_text(encoding="utf-8"))
            print(json.dumps(result, indent=2) if args.json else format_result(result))
            return 0
        print(f"resuming '{run.metadata.name}' from {run_dir}")
    from legistra.cli.plan import length_check

    too_long = length_check(run.spec, Path(args.file).resolve().parent)
    if too_long is not None:  # before torchrun, like the data check; the trainer checks again from the loaded model
        print(f"error: {too_long}", file=sys.stderr)
        print("this is not transient: fix the spec first", file=sys.stderr)
        return EXIT_DETERMINISTIC
    rc = check_data(run, state / "cache")  # before torchrun: one clean error, not a traceback per rank
    if rc is not None:
        return rc
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    termination = run_dir / "termination-log"  # where the trainer says why, when retrying would not help
    termination.unlink(missing_ok=True)

    nproc = args.nproc or default_nproc(run)
    env = trainer_environment(args, state, nproc, termination)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        *trainer_argv(str(config_path), str(run_dir), str(state)),
    ]
    print(f"training '{run.metadata.name}' ({run.spec.task}) with {nproc} process(es); state in {state}",
          file=sys.stderr)
    rc, interrupted = launch(cmd, env)
    if rc != 0:
        said = termination.read_text() if termination.exists() else None
        stopped = parse_termination_message(said, (PREEMPTED,))
        if stopped is not None:
            print(f"stopped: {stopped[1]}", file=sys.stderr)
            return 130 if interrupted else EXIT_PREEMPTED
        if interrupted:
            print("\ninterrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
            return 130
        declared = parse_termination_message(said)
        if declared is not None:
            print(f"error: {declared[0]}: {declared[1]}", file=sys.stderr)
            print("this is not transient: fix it and run with --fresh; resuming would fail the same way",
                  file=sys.stderr)
            return EXIT_DETERMINISTIC
        print(f"error: training failed (exit {rc}); run the same command again to resume", file=sys.stderr)
        return rc
    result = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0
