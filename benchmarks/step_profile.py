"""Where a training step's time goes: torch.profiler over a few steps after the warm-up, as an op table and as
shares of the device's time (matrix products, attention, optimizer, communication, copies, the rest).

On a GPU the shares are of kernel time, and `device_busy` is kernel time over the profiled steps' wall time:
far under 1 means the GPU waits on the host (data loading, Python, launches), so a faster kernel would not
help; near 1 with matmul first means the work itself is the cost. On a CPU (the rehearsal) the shares are of
the ops' own CPU time and `device_busy` is not computed. Run through the trainer benchmark:

    python -m benchmarks.trainer_throughput --one summarization ours --device gpu \
        --out OUT/profile-summarization-ours.json --profile 5
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Substrings of kernel names (GPU) or op names (CPU), first match wins; lower case.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("communication", ("nccl", "c10d", "all_reduce", "allreduce", "all_gather", "reduce_scatter")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "scaled_dot_product", "softmax")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "optimizer")),
    ("matmul", ("gemm", "xmma", "cutlass", "cublas", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear",
                "matmul", "nvjet")),
    ("copy", ("memcpy", "memset", "aten::copy_", "aten::to", "aten::contiguous")),
)


def category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def shares(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Fraction of the total time per category, from (name, self time) rows; largest first."""
    totals: dict[str, float] = {}
    for name, t in rows:
        cat = category(name)
        totals[cat] = totals.get(cat, 0.0) + t
    whole = sum(totals.values())
    if whole <= 0:
        return {}
    return dict(sorted(((c, t / whole) for c, t in totals.items()), key=lambda kv: -kv[1]))


def own_times(averages: Any, cuda: bool) -> list[tuple[str, float]]:
    """(name, microseconds) per event: on a GPU the kernels' own device time, kernels only (a CPU op's self
    device time is its kernels' again); on a CPU every op's own CPU time."""
    if not cuda:
        return [(e.key, float(e.self_cpu_time_total)) for e in averages]
    from torch.autograd import DeviceType

    return [(e.key, float(e.self_device_time_total)) for e in averages if e.device_type == DeviceType.CUDA]


def summarise(averages: Any, wall_s: float, steps: int, cuda: bool) -> dict[str, Any]:
    rows = own_times(averages, cuda)
    busy_us = sum(t for _, t in rows)
    top = sorted(rows, key=lambda r: -r[1])[:10]
    return {
        "steps": steps, "wall_seconds": wall_s, "measured_on": "device" if cuda else "cpu",
        "device_busy": (busy_us / 1e6) / wall_s if cuda and wall_s > 0 else None,
        "shares": shares(rows),
        "top": [{"name": n, "seconds": t / 1e6, "category": category(n)} for n, t in top],
    }


def profiler_callback(stem: Path, start_step: int, steps: int, cuda: bool) -> Any:
    """A TrainerCallback that profiles steps start_step+1 .. start_step+steps and writes `<stem>.profile.txt`
    (the op table) and `<stem>.profile.json` (summarise)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    class Profiled(TrainerCallback):
        prof: Any = None
        started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == start_step and self.prof is None:
                self.prof = profile(activities=activities, record_shapes=False)
                self.prof.__enter__()
                self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.prof is None or state.global_step != start_step + steps:
                return
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.started
            self.prof.__exit__(None, None, None)
            averages = self.prof.key_averages()
            sort = "self_device_time_total" if cuda else "self_cpu_time_total"
            stem.with_suffix(".profile.txt").write_text(averages.table(sort_by=sort, row_limit=30))
            summary = summarise(averages, wall, steps, cuda)
            stem.with_suffix(".profile.json").write_text(json.dumps(summary, indent=2))
            print(f"profile of {steps} steps: " + ", ".join(f"{c} {s:.0%}" for c, s in summary["shares"].items())
                  + (f"; device busy {summary['device_busy']:.0%}" if summary["device_busy"] is not None else ""))

    return Profiled()
