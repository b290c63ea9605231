"""Data at scale: synthetic long-tailed clause data made ready to train (read, checked, tokenized), per rank.

Each configuration starts `ranks` processes at once on one machine, as torchrun starts the ranks of a node;
each runs what a rank runs before its first step (load_data, the label space, encode_cached) and reports its
wall time and memory. A cold run starts from an empty cache; the warm run repeats it on the filled one.
"Before" runs the same steps with another checkout (`--before-tree`) of the same API (`load_data(spec, cache)`,
`encode_cached`); the figures against the list-based API that came before it are in benchmarks/README.md.

Memory per rank: `peak_rss_mb` is the kernel's high-water mark of resident memory, which also counts the
pages of memory-mapped files the rank touched (shared by every process of the node, and reclaimable);
`peak_anon_mb` is the private memory alone (sampled every 20 ms), the part that multiplies with the ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (  # noqa: SIM905 (a sentence reads better than a list of 56 strings)
    "the party parties shall indemnify defend hold harmless licensee licensor agreement term terminate "
    "termination notice days written breach material confidential information obligations governing law "
    "jurisdiction courts liability limited damages consequential incidental warranty disclaims assign "
    "transfer consent payment fees invoice audit records compliance subcontractor affiliate successor "
    "exclusive non-exclusive perpetual royalty-free worldwide intellectual property rights provided "
    "however notwithstanding"
).split()
LABELS = [f"risk-{i:02d}" for i in range(12)]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def generate(path: Path, rows: int, seed: int = 0) -> Path:
    """Clauses with log-normal word counts (median ~60 words, a tail past 1,000) and Zipf-distributed labels."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    words = np.array(WORDS, dtype=object)
    weights = 1 / np.arange(1, len(LABELS) + 1)
    tmp = path.with_suffix(".part")
    with tmp.open("w", encoding="utf-8") as fh:
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            lens = np.clip(rng.lognormal(4.1, 0.7, n).astype(np.int64), 3, 2_000)
            idx = rng.integers(0, len(words), int(lens.sum()))
            labels = rng.choice(len(LABELS), n, p=weights / weights.sum())
            ends = np.cumsum(lens)
            for i in range(n):
                text = " ".join(words[idx[ends[i] - lens[i]: ends[i]]])
                fh.write(json.dumps({"id": start + i, "text": text, "label": LABELS[labels[i]]}) + "\n")
    os.replace(tmp, path)
    return path


class AnonPeak:
    """The peak of RssAnon, sampled from /proc/self/status in a thread."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._read())
            self._stop.wait(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak_kb, self._read()) / 1024


def worker(data: Path, cache: Path, max_length: int) -> dict[str, Any]:
    """One rank's start-up, with whichever `legistra` is on the path (this tree's, or another checkout's)."""
    from transformers import AutoTokenizer

    from legistra.api.spec import TrainingRunSpec
    from legistra.trainer import data as data_mod
    from legistra.trainer.modeling import resolve_model
    from legistra.trainer.tasks import handler_for
    from legistra.trainer.train import encode_cached

    anon = AnonPeak()
    t0 = time.monotonic()
    spec = TrainingRunSpec.model_validate({
        "task": "risk-classification", "model": {"name": MINILM},
        "data": {"train": str(data), "validationSplit": 0.01, "maxLength": max_length},
        "registry": {"modelName": "bench"},
    })
    loaded = data_mod.load_data(spec, cache)
    t_load = time.monotonic()
    handler = handler_for(spec)
    handler.fit_labels(loaded.train, loaded.validation)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec.model, cache))
    t_labels = time.monotonic()
    train_ds, _, _ = encode_cached(handler, loaded, tokenizer, cache)
    examples = len(train_ds)
    t_end = time.monotonic()
    return {
        "examples": examples,
        "seconds": t_end - t0, "load_and_check_s": t_load - t0, "labels_s": t_labels - t_load,
        "tokenize_s": t_end - t_labels,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_anon_mb": anon.stop(),
    }


def ranks_at_once(ranks: int, data: Path, cache: Path, max_length: int, tree: Path | None) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(data), str(cache), str(max_length)]
    started = time.monotonic()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(ranks)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.monotonic() - started
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank failed: {[p.returncode for p in procs]}")
    per_rank = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    return {"ranks": ranks, "wall_s": wall, "per_rank": per_rank,
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in per_rank),
            "max_peak_anon_mb": max(r["peak_anon_mb"] for r in per_rank)}


def run(row_counts: list[int], work: Path, ranks: tuple[int, ...] = (1, 4), before_tree: Path | None = None,
        before_rows: int | None = None, max_length: int = 512) -> list[dict[str, Any]]:
    import shutil

    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in row_counts:
        data = generate(work / f"clauses-{n}.jsonl", n)
        trees: list[tuple[str, Path | None]] = [("after", None)]
        if before_tree is not None and n <= (before_rows or n):
            trees.insert(0, ("before", before_tree))
        for label, tree in trees:
            for r in ranks:
                cache = work / f"cache-{label}-{n}-{r}"
                shutil.rmtree(cache, ignore_errors=True)
                cold = ranks_at_once(r, data, cache, max_length, tree)
                warm = ranks_at_once(r, data, cache, max_length, tree)
                results.append({"rows": n, "bytes": data.stat().st_size, "code": label, "ranks": r,
                                "cold": cold, "warm": warm})
                print(json.dumps({"rows": n, "code": label, "ranks": r, "cold_s": round(cold["wall_s"], 1),
                                  "warm_s": round(warm["wall_s"], 1), "rss_mb": round(cold["max_peak_rss_mb"]),
                                  "anon_mb": round(cold["max_peak_anon_mb"])}), flush=True)
                shutil.rmtree(cache, ignore_errors=True)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))))
        sys.exit(0)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.data_scale")
    ap.add_argument("--rows", type=int, nargs="+", default=[300_000, 3_000_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/legistra-data-bench"))
    ap.add_argument("--before-tree", type=Path, default=None, help="another checkout (same API) to compare with")
    ap.add_argument("--before-rows", type=int, default=300_000, help="largest row count for the older code")
    ap.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    a = ap.parse_args()
    res = run(a.rows, a.work, before_tree=a.before_tree, before_rows=a.before_rows)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2))
