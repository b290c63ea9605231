"""`make bench`: run the benchmarks, write JSON results (with the machine) and the report."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results"
WORK = Path(tempfile.gettempdir()) / "legistra-bench"  # generated data and scratch runs (GBs), never committed


def machine() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "commit": _commit(),
    }
    try:
        import deepspeed
        import peft

        info.update(deepspeed=deepspeed.__version__, peft=peft.__version__)
    except ImportError:
        pass
    return info


def _commit() -> str | None:
    """The code measured: the checkout's commit, marked when the tree had changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--runs", type=int, default=10_000, help="TrainingRuns for the operator benchmark (emulator)")
    ap.add_argument("--apiserver-runs", type=int, default=1000,
                    help="TrainingRuns for the operator benchmark against the real API server (envtest)")
    ap.add_argument("--fault-runs", type=int, default=50, help="TrainingRuns per fault campaign")
    ap.add_argument("--kills", type=int, default=20, help="operator SIGKILLs in the kill campaign")
    ap.add_argument("--paced-rate", type=float, default=200.0,
                    help="runs per second for the operator benchmark's paced run (the other is a burst); 200: "
                         "10,000 runs arrive in 50 s")
    ap.add_argument("--only", choices=["trainer", "operator", "faults", "data", "preemption"], default=None)
    ap.add_argument("--data-rows", type=int, nargs="+", default=[300_000, 3_000_000],
                    help="row counts for the data benchmark")
    ap.add_argument("--before-tree", type=Path, default=None,
                    help="an older checkout for the data benchmark's before figures (git worktree add ...)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    import torch

    a.out.mkdir(parents=True, exist_ok=True)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    tag = f"{device}-{dt.date.today().isoformat()}"
    if a.only in (None, "trainer"):
        from benchmarks.trainer_throughput import run as run_trainer

        workloads = os.environ.get("LEGISTRA_BENCH_WORKLOADS", "summarization,classification").split(",")
        info = machine()

        def save(rows: list[dict[str, Any]]) -> None:
            # Rewritten after every configuration: a run stopped at its time budget keeps what it measured.
            doc = {"machine": info, "device": device, "results": rows, "ratios": ratios(rows)}
            (a.out / f"trainer-{tag}.json").write_text(json.dumps(doc, indent=2))

        rows = run_trainer(device, a.out, workloads, on_row=save)
        print(json.dumps(ratios(rows), indent=2))
    if a.only in (None, "operator"):
        from benchmarks.operator_scale import run as run_operator

        # One backend after the other, never side by side: they share the two cores.
        scale = [run_operator(a.runs, WORK / "operator-emulator", backend="emulator"),
                 run_operator(a.runs, WORK / "operator-emulator-paced", backend="emulator", rate=a.paced_rate),
                 run_operator(a.apiserver_runs, WORK / "operator-apiserver", backend="apiserver")]
        (a.out / f"operator-{tag}.json").write_text(json.dumps({"machine": machine(), "results": scale}, indent=2))
        print(json.dumps(scale, indent=2))
    if a.only in (None, "faults"):
        from benchmarks.faults import run as run_faults

        campaigns = run_faults(WORK / "faults", a.fault_runs, a.kills)
        faults_doc = {"machine": machine(), "results": campaigns}
        (a.out / f"faults-{dt.date.today().isoformat()}.json").write_text(json.dumps(faults_doc, indent=2))
        print(json.dumps(campaigns, indent=2))
    if a.only in (None, "data"):
        from benchmarks.data_scale import run as run_data

        data_rows = run_data(a.data_rows, WORK / "data", before_tree=a.before_tree, before_rows=300_000)
        doc = {"machine": machine(), "results": data_rows}
        (a.out / f"data-{dt.date.today().isoformat()}.json").write_text(json.dumps(doc, indent=2))
    if a.only in (None, "preemption"):
        from benchmarks.preemption import run as run_preemption

        doc = {"machine": machine(), "results": run_preemption(WORK / "preemption")}
        (a.out / f"preemption-{dt.date.today().isoformat()}.json").write_text(json.dumps(doc, indent=2))
    if a.out == RESULTS:  # the committed report describes the committed results only
        from benchmarks.report import write_report

        write_report(a.out, HERE / "README.md")


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload: our best configuration (by tokens/s) against the baseline, and which one it was. Only rows
    that trained on as many samples as the baseline compete (eval loss compares after the same tokens); the best
    MFU is over all of ours (`ours-auto` at its large batch included)."""
    out: dict[str, Any] = {}
    for w in sorted({r["workload"] for r in rows}):
        ok = [r for r in rows if r["workload"] == w and "error" not in r]
        base = next((r for r in ok if r["config"] == "baseline"), None)
        mine = [r for r in ok if r["config"] != "baseline"]
        same = [r for r in mine if base is not None and r.get("samples_trained") == base.get("samples_trained")]
        if base is None or not same:  # a partial run: no pair to compare yet
            continue
        ours = max(same, key=lambda r: r["tokens_per_second"])
        mfus = [r["mfu"] for r in mine if r.get("mfu") is not None]
        out[w] = {"config": ours["config"],
                  "tokens_per_second_ratio": ours["tokens_per_second"] / base["tokens_per_second"],
                  "samples_per_second_ratio": ours["samples_per_second"] / base["samples_per_second"],
                  "eval_loss_baseline": base["eval_loss"], "eval_loss_ours": ours["eval_loss"],
                  "mfu_ours": ours.get("mfu"), "mfu_best": max(mfus) if mfus else None}
    return out


if __name__ == "__main__":
    main()
