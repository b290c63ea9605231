"""The machine's two ceilings, measured where the trainer benchmark runs: a large matrix product (the rate the
tensor cores reach through PyTorch) and a large device-to-device copy (bytes read plus bytes written).

MFU against the datasheet says how far the trainer is from the vendor's number; against the measured matrix
rate, how far it is from what this card and this PyTorch can do at all (on an H100 here: 769 to 798 of the
datasheet's 989 TFLOP/s, KINDS.md). Random data, never zeros (a product of zeros ran 13% faster on an H200).
Times are device events around each repeat after a warm-up; the median counts.

    python -m benchmarks.ceilings --out OUT/ceilings.json      (gpu.sh's "ceilings" step)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

# (matrix side, copy bytes, repeats): a size that fills an H100 (8192^3 bf16, 1 GiB copied), and a small one that
# only proves the code path on the CPU rehearsal.
GPU = (8192, 2**30, 10)
CPU = (512, 2**24, 3)


def _timed(fn: Any, repeats: int, cuda: bool) -> float:
    """Median seconds of `fn` over `repeats`, after three warm-up calls."""
    import torch

    for _ in range(3):
        fn()
    seconds: list[float] = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def measure() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    side, nbytes, repeats = GPU if cuda else CPU
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    product = torch.empty(side, side, device=device, dtype=dtype)
    matmul_s = _timed(lambda: torch.matmul(a, b, out=product), repeats, cuda)
    if not bool(torch.isfinite(product).all()):
        raise RuntimeError("the matrix product has non-finite values: the ceiling would be meaningless")
    src = torch.randn(nbytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_s = _timed(lambda: dst.copy_(src), repeats, cuda)
    if not torch.equal(dst, src):
        raise RuntimeError("the copy did not copy")
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "matmul": {"side": side, "dtype": str(dtype).removeprefix("torch."), "seconds": matmul_s,
                   "tflops": 2 * side**3 / matmul_s / 1e12},
        "copy": {"bytes": nbytes, "seconds": copy_s, "tb_per_s": 2 * nbytes / copy_s / 1e12},  # read + write
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ceilings")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    found = measure()
    a.out.write_text(json.dumps(found, indent=2))
    print(f"{found['device']}: matmul {found['matmul']['tflops']:.1f} TFLOP/s ({found['matmul']['dtype']}, "
          f"{found['matmul']['side']}^3), copy {found['copy']['tb_per_s']:.3f} TB/s")


if __name__ == "__main__":
    main()
