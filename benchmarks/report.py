"""benchmarks/README.md and the throughput plot, from the JSON results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INTRO = """# Benchmarks

`make bench` runs every benchmark and rewrites this page from `results/*.json` (each result carries the
machine, date and library versions it ran on). `make test` runs a small smoke version of the trainer, operator
and data benchmarks so the code cannot rot (the preemption benchmark's path is the end-to-end test
`tests/test_checkpoints.py`); no speed target lives in a unit test.

## Trainer throughput

Side by side in one run, same machine, same synthetic data with long-tailed (log-normal) lengths: **(a)
baseline** — what a user writes from the seed guide: Hugging Face Trainer + PEFT LoRA (r=16), fp16 (fp32 on a
CPU), batch 8, every sequence padded to the maximum length; **(b) ours** — the arguments and collators of
`legistra.trainer` (`build_training_args`, the task handlers): length-grouped batches with dynamic padding to
a multiple of 8, bf16 where the GPU has it, fused AdamW, data-loader workers, SDPA attention; on a GPU also
**ours-compile**, the same with `training.compile` (torch.compile), and the ratio table takes the faster of
the two. Each configuration runs in its own process; on a CPU, where short runs are noisy, three times,
interleaved, and the median counts (every repeat is in the JSON). Workloads on a GPU: a BART-large-sized
summarizer (~400M parameters, 1024 input / 128 target tokens) and a BERT-base-sized classifier (512 tokens),
random weights from their configs (same FLOPs); on a CPU, tiny versions of both, where only the ratio means
anything. Throughput counts **non-padding tokens** (inputs, summed over the measured steps after warm-up).

Model FLOPs per real token for LoRA: `4·N_frozen + 6·N_lora + 12·L·s·d` (frozen weights: forward plus the
activation gradient only; adapters: forward plus both gradients; attention over the attended length s).
Encoder-decoder: encoder weights over encoder tokens, decoder weights (and the LM head) over decoder
tokens. MFU divides by the dense bf16/fp16 peak (H100 SXM 989.4 TFLOP/s; PCIe 756). Gradient-checkpoint
recomputation would count toward HFU only (`benchmarks/flops.py`).
"""

OPERATOR = """
## Operator scale

`benchmarks/operator_scale.py`, two API servers one after the other: the tests' API emulator (kmock's
`KubernetesEmulator` over HTTP, in the benchmark's process) and the real kube-apiserver v1.20 + etcd of
`../shared/envtest` (on the same two cores, TLS, the admin's client certificate). `legistra operator` runs as a
separate process; PyTorchJobs are never started: N TrainingRuns created by 8 client threads as fast as the
server takes them (a burst); then every job flipped to Running. The emulator runs it twice: as that burst,
and paced (`--paced-rate`, 200 per second by default: creations and then flips at a steady rate; 10,000 runs
then arrive in 50 s, the rate a 60-second target for 10,000 implies, with room). Latency is
from a run's create call returning to its PyTorchJob's first event on a watch stream (as `kubectl get -w` sees
it; watching adds no polling load).
Requests and writes per run are the operator's own: on the emulator counted by client; on the real server
its `apiserver_request_total` counters (resource requests, watches excluded) less the benchmark's own creates
and patches.

The test harness's emulator forgets each request once answered (kmock matches every request against its
whole history, which turned the emulator quadratic) and looks named objects up by name first; the
operator keeps a kopf worker per busy object for 0.2 s after its last event instead of kopf's 5 s, with up to
256 workers: an idle worker holds its slot, and the linger, not the CPU, used to bound a burst (the figures
before and after are in docs/operator.md).
"""

FAULTS = """
## Fault campaigns

`benchmarks/faults.py`, against the real API server (envtest). A stand-in training-operator drives each
PyTorchJob Created -> Running -> Succeeded after 1 s, fails every fifth run's first attempt (so retries happen
under the faults: `maxAttempts: 3`, `retryDelaySeconds: 1`) and plays the garbage collector's part in
foreground deletion. Two watches straight to the API server record every version of every run and every job
ever created; the verdict is computed from that record alone: jobs created twice for one attempt, attempts
beyond what the failures called for, statuses that moved backwards (a lower attempt, an earlier phase within
an attempt, anything after Succeeded, a lower observedGeneration) or lost a field they had (phase, attempt),
runs not Succeeded at the end. **SIGKILL**: runs created in waves, the operator killed at a random moment
(0.3-3 s) after each wave and restarted at once. **Proxy**: the operator behind a proxy of ours that answers a
share of requests with 500 (before the server saw it, or after it applied it), 429 (Retry-After: 1) or, on
writes, 409, and cuts every watch stream after 1-5 s (the operator resumes it); the same campaign without
faults is the baseline for the extra requests. `make test` runs small versions of both (tests/test_faults.py).
"""

DATA = """
## Data at scale

`benchmarks/data_scale.py`: synthetic clause data (jsonl; log-normal word counts, median ~60 words with a
tail past 1,000; Zipf-distributed labels over 12 classes), made ready to train as a rank does before its first
step: read, checked, held out (1%), label space, tokenized with the demo's MiniLM tokenizer (512 tokens).
`ranks` processes start at once, as torchrun starts the ranks of a node. Cold: empty cache; warm: the same
again. "before" is the previous code (rows as Python lists, tokenized in one call, the first process saving
and the others loading its copy), run from a `git worktree` of it.

Memory: *RSS* is the kernel's peak resident set, which also counts the pages of memory-mapped Arrow files a
rank touched (page cache shared by every process of the node, reclaimable); *private* is the peak of
`RssAnon`, the memory that multiplies with the ranks.
"""

PREEMPTION = """
## Preemption and object-storage checkpoints

`benchmarks/preemption.py`: the demo's MiniLM on the example clauses, 2 processes with ZeRO-2, a save every 10
steps to a moto S3 server; the run is stopped at a random step after a periodic save, with SIGTERM (to
`legistra train`, which passes it on as the kubelet would) or SIGKILL (the whole process group: a lost node),
then resumed by a fresh `legistra train` with empty local storage. Steps lost = last step logged before the
signal minus the step the next run resumed from. Stall = how long training stood still per save (the local
save plus any wait for the previous upload); the upload itself runs beside training.
"""

REPRO = """
## Reproduce

```bash
make bench                                   # all three, CPU or GPU, results in benchmarks/results/
.venv/bin/python -m benchmarks --only trainer
.venv/bin/python -m benchmarks --only operator --runs 10000 --apiserver-runs 1000 --paced-rate 200
.venv/bin/python -m benchmarks --only faults --fault-runs 50 --kills 20
git worktree add /tmp/before <commit since fd358a6>  # optional: the data benchmark's before figures
.venv/bin/python -m benchmarks --only data --before-tree /tmp/before
.venv/bin/python -m benchmarks --only preemption
```

## On a GPU

The GPU machine is bare (the image's Python 3.12 with torch, transformers, peft, accelerate, no deepspeed,
datasets or pydantic) and reaches no registry. `make gpu-kit` puts the missing wheels (`benchmarks/gpu/kit.txt`,
built for CPython 3.12 manylinux x86-64, ~8 MiB, deepspeed built here as a pure-Python wheel) in
`.gpu-kit/wheels`; `make test` rehearses the whole GPU run on CPU in an environment holding only the image's
packages (`benchmarks/gpu/image-packages.txt`, transformers at the image's version) and the kit. There, one
command, with `.gpu-kit` carried along:

```bash
bash benchmarks/gpu.sh "$OUT"     # kit, versions + GPU, ceilings, tests/test_gpu.py, a profile, trainer benchmark
```

Each step has a time budget and the whole stops within 6 minutes (`LEGISTRA_GPU_BUDGET_S`, default 360), so a
run and a rerun fit in 15 minutes of device time; `steps.json`, `gpu.log`, `versions.json`, `pip-list.txt`,
`ceilings.json` (the card's measured matmul rate and copy bandwidth), `test_gpu.xml`,
`profile-summarization-ours.profile.{txt,json}` (torch.profiler: the op table and the shares of device time) and
`trainer-gpu-<date>.json` (rewritten after every configuration) come back in `$OUT`. Copy the trainer JSON to
`benchmarks/results/` and regenerate this report (`python -m benchmarks.report`); update `image-packages.txt`
from `pip-list.txt` where it differs. `benchmarks/gpu/NOTES.md` has the counts and predictions made before the
first call and the plan for the second (`LEGISTRA_GPU_STEPS`, `LEGISTRA_BENCH_CONFIGS`, the opt-in `ours-auto`).
"""


def _head(*columns: str) -> list[str]:
    """A Markdown table's header and rule; a leading '#' marks a right-aligned (numeric) column."""
    names = [c.removeprefix("#") for c in columns]
    rule = ["---:" if c.startswith("#") else "---" for c in columns]
    return ["| " + " | ".join(names) + " |", "| " + " | ".join(rule) + " |"]


def _latest(results: Path, prefix: str) -> dict[str, Any] | None:
    files = sorted(results.glob(f"{prefix}-*.json"))
    return json.loads(files[-1].read_text()) if files else None


def plot(trainer: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in trainer["results"] if "error" not in r]
    workloads = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 3.6))
    for ax, w in zip(axes if len(workloads) > 1 else [axes], workloads):
        pts = [r for r in rows if r["workload"] == w]
        ax.bar([r["config"] for r in pts], [r["tokens_per_second"] for r in pts],
               color=["#999999" if r["config"] == "baseline" else "#2b7bba" for r in pts])
        ax.set_title(f"{w} ({trainer['device']})")
        ax.set_ylabel("non-padding tokens / s")
        for i, r in enumerate(pts):
            ax.text(i, r["tokens_per_second"], f"{r['tokens_per_second']:,.0f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: Path, readme: Path) -> None:
    parts = [INTRO]
    trainer = _latest(results, "trainer")
    if trainer:
        m = trainer["machine"]
        parts.append(f"Last run: {m['date']}, {trainer['device']} ({m.get('gpu') or m['host_cpu']}, "
                     f"{m['cores']} cores), torch {m['torch']}, transformers {m['transformers']}.\n")
        parts += _head("workload", "config", "#tokens/s", "#samples/s", "#eval loss", "#peak GPU GB",
                       "#plan's estimate GB", "#peak RSS GB", "#model TFLOP/s", "#MFU")
        for r in trainer["results"]:
            if "error" in r:
                parts.append(f"| {r['workload']} | {r['config']} | failed: {' '.join(r['error'])[:80]} |")
                continue
            gpu = f"{r['peak_gpu_memory_gb']:.1f}" if r.get("peak_gpu_memory_gb") is not None else "-"
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a (CPU)"
            est = f"{r['estimated_gpu_memory_gb']:.1f}" if r.get("estimated_gpu_memory_gb") is not None else "-"
            if r.get("memory_estimate_error") is not None:
                est += f" ({100 * r['memory_estimate_error']:+.0f}%)"
            parts.append(f"| {r['workload']} | {r['config']} | {r['tokens_per_second']:,.0f} | "
                         f"{r['samples_per_second']:.1f} | {r['eval_loss']:.4f} | {gpu} | {est} | "
                         f"{r['peak_rss_gb']:.2f} | "
                         f"{r['model_tflops']:.3f} | {mfu} |")
        parts.append("")
        parts += _head("workload", "best of ours", "#(b)/(a) tokens/s", "#(b)/(a) samples/s", "target on one H100")
        for w, q in trainer["ratios"].items():
            parts.append(f"| {w} | {q.get('config', 'ours')} | {q['tokens_per_second_ratio']:.2f}x | "
                         f"{q['samples_per_second_ratio']:.2f}x | "
                         f">= 3x tokens/s at equal eval loss{'; MFU >= 40%' if w == 'summarization' else ''} |")
        png = readme.parent / "throughput.png"
        plot(trainer, png)
        parts.append("\n![throughput per configuration](throughput.png)\n")
    parts.append(OPERATOR)
    op = _latest(results, "operator")
    if op:
        scale = op["results"] if isinstance(op["results"], list) else [{"backend": "emulator", **op["results"]}]
        parts.append(f"Last run: {op['machine']['date']}, {scale[0].get('cores')} cores.\n")
        def paced(r: dict[str, Any]) -> float | None:
            return r["phase1_create"].get("paced_rate")  # None: a burst (and every result before the paced run)

        def label(r: dict[str, Any]) -> str:
            return f"#{r['backend']}" + (f", paced {paced(r):.0f}/s" if paced(r) else ", burst")

        parts += _head("measure", *[label(r) for r in scale], "target (2 cores)")

        def row(what: str, cell: Any, target: str = "") -> None:
            parts.append(f"| {what} | " + " | ".join(cell(r) for r in scale) + f" | {target} |")

        row("runs reconciled (job + Pending status)", lambda r: f"{r['phase1_create']['reconciled']:,}/"
            f"{r['phase1_create']['runs']:,} in {r['phase1_create']['all_reconciled_seconds']:.1f} s",
            "10,000 within 60 s (emulator)")
        row("create -> job latency p50 / p99", lambda r: f"{r['phase1_create']['p50_latency_s']:.2f} s / "
            f"{r['phase1_create']['p99_latency_s']:.2f} s", "p99 < 5 s")
        row("API writes per run to Pending", lambda r: f"{r['phase1_create']['api_writes_per_run']:.2f}", "<= 4")
        row("API requests per run (all)", lambda r: f"{r['phase1_create']['api_requests_per_run']:.2f}")
        row("job transitions mirrored", lambda r: f"{r['phase2_transitions']['mirrored']:,}/"
            f"{r['phase2_transitions']['transitions']:,} in {r['phase2_transitions']['all_mirrored_seconds']:.1f} s")
        row("job -> run status latency p50 / p99", lambda r: f"{r['phase2_transitions']['p50_latency_s']:.2f} s / "
            f"{r['phase2_transitions']['p99_latency_s']:.2f} s" if "p99_latency_s" in r["phase2_transitions"] else "-")
        row("operator peak RSS", lambda r: f"{r['operator_peak_rss_mb']:.0f} MB", "< 300 MB")
        row("operator RSS once all reconciled (peak so far)", lambda r: f"{r['operator_rss_reconciled_mb']:.0f} MB "
            f"({r['operator_peak_rss_phase1_mb']:.0f} MB)" if "operator_peak_rss_phase1_mb" in r else "-")
        row("operator code", lambda r: str(r.get("operator_commit") or op["machine"].get("commit") or "?"))
        def cpu(r: dict[str, Any]) -> str:
            server = r.get("emulator_cpu_seconds")  # None: kube-apiserver and etcd, not counted
            emulator = "-" if server is None else f"{server:.0f} s"
            client = r.get("client_cpu_seconds", r.get("emulator_and_client_cpu_seconds", 0.0))  # older results
            return f"{r['operator_cpu_seconds']:.0f} s / {emulator} / {client:.0f} s of {r['wall_seconds']:.0f} s wall"

        row("CPU: operator / emulator / benchmark client", cpu)
        row("machine speed before the run (fixed single-core workload; lower is faster)",
            lambda r: f"{r['calibration_ms']:.0f} ms" if "calibration_ms" in r else "-")
        emu = next((r for r in scale if r["backend"] == "emulator" and not paced(r)), None)
        paced_run = next((r for r in scale if paced(r)), None)
        if emu is not None and emu.get("emulator_cpu_seconds") is not None:
            p1, p2 = emu["phase1_create"], emu["phase2_transitions"]
            per_run_ms = 1000 * emu["operator_cpu_seconds"] / (p1["runs"] + p2["transitions"])
            rate = p1["runs"] / p1["create_seconds"]
            kept_up = p1["runs"] / p1["all_reconciled_seconds"]
            busy = (emu["operator_cpu_seconds"] + emu["emulator_cpu_seconds"] + emu["client_cpu_seconds"]) \
                / emu["wall_seconds"]
            needed = p1["runs"] / 60
            parts.append(
                f"\n**Where the time goes.** The client created runs at {rate:.0f} per second; the operator "
                f"reconciled {kept_up:.0f} per second, so a backlog built up in kopf's per-object queues (every "
                "queued event is a parsed body: the peak RSS above grows with it, and so does the latency). With "
                "runs arriving faster than they are reconciled, the p50/p99 measure that queue (how long the later "
                "runs of the burst waited), not one reconcile; p99 under 5 s in this burst needs the operator to "
                f"keep pace with the arrivals. The operator spent {emu['operator_cpu_seconds']:.0f} CPU-seconds "
                f"(~{per_run_ms:.1f} ms per create or transition, on one core: kopf's per-event processing, then its "
                f"own {p1['api_requests_per_run']:.0f} requests per run through aiohttp), the emulator "
                f"{emu['emulator_cpu_seconds']:.0f}, the client {emu['client_cpu_seconds']:.0f}: together "
                f"{busy:.2f} of the {emu['cores']} cores for the whole run. All reconciled within 60 s needs "
                f"{needed:.0f} runs per second, "
                + ("which the operator managed" if kept_up >= needed else
                   f"{needed / kept_up:.2f}x what the operator managed")
                + " while sharing the two cores with the emulator and the client (in a cluster the API server's CPU "
                "is not the operator's). On the real API server kube-apiserver and etcd take the place of the "
                "emulator. These machines are shared and their speed drifts by 20% and more between runs of the same "
                "code: the machine-speed row times one fixed single-core workload just before each run, "
                "and two runs compare only where it is close.\n")
            if "operator_peak_rss_phase1_mb" in emu:
                first, final = emu["operator_peak_rss_phase1_mb"], emu["operator_peak_rss_mb"]
                later = (f"the final peak of {final:.0f} MB came with the second burst, every job's status "
                         "flipped as fast as the client could: each job event waits in kopf's queue as a parsed "
                         "PyTorchJob, pod template included" if final > first + 5 else
                         "the second burst, every job's status flipped, added nothing to that peak")
                parts.append(
                    f"\n**Memory.** At the end of the creation burst the operator's peak was {first:.0f} MB "
                    f"({emu['operator_rss_reconciled_mb']:.0f} MB resident once all were reconciled); {later}.\n")
        if paced_run is not None:
            p1 = paced_run["phase1_create"]
            behind = p1["all_reconciled_seconds"] - p1["create_seconds"]
            pace = ("which the operator keeps up with: its p50/p99 are then its own delay from a run's creation to "
                    "its job, without a queue in front of it" if behind < 5 else
                    f"faster than the operator here (it finished {behind:.0f} s after the last creation): the p99 "
                    "still includes a queue")
            parts.append(
                f"\n**At a steady rate.** The paced column creates the same {p1['runs']:,} runs at "
                f"{p1['paced_rate']:.0f} per second, {pace} (p50/p99 {p1['p50_latency_s']:.2f} s / "
                f"{p1['p99_latency_s']:.2f} s).\n")
    parts.append(FAULTS)
    faults = _latest(results, "faults")
    if faults:
        r = faults["results"]
        parts.append(f"Last run: {faults['machine']['date']}, {faults['machine']['cores']} cores.\n")
        parts += _head("campaign", "#runs", "#faults", "#duplicate jobs", "#extra attempts", "#regressed / lost",
                       "#not converged", "#converged in", "#operator requests")
        k = r["sigkill"]
        parts.append(f"| SIGKILL | {k['runs']} | {k['kills']} kills | {k['duplicate_jobs']} | {k['extra_attempts']} "
                     f"| {k['regressed_statuses']} / {k['lost_statuses']} | {k['not_converged']} | "
                     f"{k['converged_seconds_after_last_kill']:.1f} s after the last kill | |")
        for name in ("proxy_baseline", "proxy_faults"):
            x = r[name]
            injected = f"{x['injected_total']} injected, {x['watches_cut']} watches cut"
            parts.append(f"| proxy, {100 * x['fault_rate']:.0f}% | {x['runs']} | {injected} | {x['duplicate_jobs']} | "
                         f"{x['extra_attempts']} | {x['regressed_statuses']} / {x['lost_statuses']} | "
                         f"{x['not_converged']} | {x['converged_seconds']:.1f} s | {x['requests_total']:,} |")
        f = r["proxy_faults"]
        parts.append(f"\nTargets: 0 duplicate jobs, 0 lost or regressed statuses, 0 runs that never converge. "
                     f"Under {100 * f['fault_rate']:.0f}% faults the operator made {f['extra_requests']:,} more "
                     f"requests than without ({f['extra_requests_ratio']:.2f}x; injected: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(f["injected"].items())) + ").\n")
    parts.append(DATA)
    data = _latest(results, "data")
    if data:
        m = data["machine"]
        parts.append(f"Last run: {m['date']}, {m['host_cpu']}, {m['cores']} cores.\n")
        parts += _head("#rows", "#jsonl", "code", "#ranks", "#cold: ready in", "#read + check", "#tokenize",
                       "#warm: ready in", "#peak RSS / rank", "#peak private / rank")
        for r in data["results"]:
            cold, warm = r["cold"], r["warm"]
            builder = max(cold["per_rank"], key=lambda x: x["tokenize_s"])  # the rank that did the work
            parts.append(
                f"| {r['rows']:,} | {r['bytes'] / 2**20:,.0f} MiB | {r['code']} | {r['ranks']} | "
                f"{cold['wall_s']:.0f} s | {builder['load_and_check_s']:.0f} s | {builder['tokenize_s']:.0f} s | "
                f"{warm['wall_s']:.1f} s | {cold['max_peak_rss_mb']:,.0f} MB | {cold['max_peak_anon_mb']:,.0f} MB |")
        parts.append("\nTargets (2 cores): 3,000,000 rows ready in under 3 minutes with peak RSS under 1 GB per "
                     "rank; warm under 20 s.\n")
        biggest = max((r for r in data["results"] if r["code"] == "after"), key=lambda r: r["rows"], default=None)
        if biggest is not None:
            w = max(biggest["cold"]["per_rank"], key=lambda x: x["tokenize_s"])
            share = w["tokenize_s"] / max(w["seconds"], 1e-9)
            parts.append(
                f"**Where the time goes.** At {biggest['rows']:,} rows, tokenization is {100 * share:.0f}% of the "
                f"cold start ({w['tokenize_s']:.0f} s of {w['seconds']:.0f} s; reading and checking "
                f"{w['load_and_check_s']:.0f} s), and 90% of tokenization is the Rust tokenizer's batch call itself, "
                "which already uses both cores (cProfile of `encode_split` over 50,000 rows: `encode_batch_fast` "
                "12.5 s of 13.8 s; ids to Python lists 0.8 s; Arrow conversion 0.3 s). On this machine the 3-minute "
                "target needs about 2.5x the "
                "tokenizer's throughput; a GPU node's dozens of cores give it, or tokenization can move into the "
                "data loader's workers during the first epoch (not done: the length-grouped sampler needs every "
                "length up front). The older code held every tokenized row as Python lists: 8.9 GB at 300,000 rows, "
                "so it could not be run at 3,000,000 here.\n")
    parts.append(PREEMPTION)
    pre = _latest(results, "preemption")
    if pre:
        r = pre["results"]
        parts.append(f"Last run: {pre['machine']['date']}, {pre['machine']['cores']} cores.\n")
        parts += _head("stop", "#at step", "#resumed from", "#steps lost", "stall per save",
                       "upload per save (background)")
        for how in ("sigterm", "sigkill"):
            x = r[how]
            stall = ", ".join(f"{v:.2f}" for v in x["stall_seconds"] or []) + " s"
            upload = ", ".join(f"{v:.2f}" for v in x["upload_seconds"] or []) + " s"
            parts.append(f"| {how.upper()} | {x['signal_at_step']} | {x['resumed_from']} | {x['steps_lost']} | "
                         f"{stall} | {upload} |")
        parts.append("\nTargets: 0 steps lost on SIGTERM when the grace period covers one save; at most one save "
                     "interval on SIGKILL (plus the steps of an upload still in flight when the node dies).\n")
        two = r.get("two_nodes")
        if two:
            parts.append(
                f"**Two nodes, no shared volume.** Two torchrun agents on this machine (static rendezvous, one rank "
                f"each, separate local storage), both sent SIGTERM after the first save: they stopped together at "
                f"step {two['stopped_at']} (torchrun exit codes {two['exit_codes']}; the ranks said Preempted); "
                f"the checkpoint held every rank's files ({', '.join(two['shards_at_stop'])} in its `global_step` "
                f"folder; no node sees another's local storage, so each uploaded its own) and both node markers "
                f"({', '.join(two['node_markers'])}) before the first rank wrote `_COMPLETE`. Two fresh pods with "
                f"empty storage resumed from {two['resumed_from']} and "
                f"finished at step {two['final_step']}.\n")
    parts.append(REPRO)
    readme.write_text("\n".join(parts), encoding="utf-8")


if __name__ == "__main__":  # regenerate the report from the committed results (after copying in a GPU run's)
    here = Path(__file__).parent
    write_report(here / "results", here / "README.md")
