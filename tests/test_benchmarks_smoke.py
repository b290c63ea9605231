"""Small versions of the benchmarks, so their code cannot rot (no speed is asserted here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_trainer_throughput_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.__main__ import ratios
    from benchmarks.report import write_report
    from benchmarks.trainer_throughput import run

    # Summarization runs in the GPU kit's rehearsal (tests/test_gpu_kit.py); classification here.
    monkeypatch.setenv("LEGISTRA_BENCH_STEPS", "6")
    monkeypatch.setenv("LEGISTRA_BENCH_REPEATS", "1")
    seen: list[int] = []
    rows = run("cpu", tmp_path, ["classification"], on_row=lambda so_far: seen.append(len(so_far)))
    assert {(r["workload"], r["config"]) for r in rows} == {("classification", c) for c in ("baseline", "ours")}
    assert seen == [1, 2]  # the partial results are handed over after each configuration
    for r in rows:
        assert r["tokens_per_second"] > 0 and r["non_padding_tokens"] > 0 and r["model_flops_per_token"] > 0
        assert r["tokens_per_second_repeats"] == [r["tokens_per_second"]]
        assert r["mfu"] is None and r["memory_estimate_error"] is None  # no peak, no GPU memory on a CPU
        assert r["estimated_gpu_memory_gb"] > 0
    q = ratios(rows)
    assert set(q) == {"classification"}
    (tmp_path / "trainer-cpu-x.json").write_text(json.dumps({"machine": {"date": "d", "host_cpu": "x",
        "cores": os.cpu_count(), "torch": "t", "transformers": "t", "gpu": None}, "device": "cpu",
        "results": rows, "ratios": q}))
    write_report(tmp_path, tmp_path / "README.md")
    text = (tmp_path / "README.md").read_text()
    assert "| classification | ours |" in text and (tmp_path / "throughput.png").exists()


def test_repeats_keep_the_median_and_a_failed_one_is_reported() -> None:
    from benchmarks.trainer_throughput import _median

    rows = [{"config": "ours", "tokens_per_second": t} for t in (30.0, 10.0, 20.0)]
    assert _median(rows)["tokens_per_second"] == 20.0
    assert _median(rows)["tokens_per_second_repeats"] == [10.0, 20.0, 30.0]
    failed = {"workload": "w", "config": "ours", "error": ["CUDA out of memory"]}
    assert _median([failed, rows[0]])["tokens_per_second"] == 30.0  # one good repeat is enough
    assert _median([failed]) == failed


def test_operator_scale_smoke(tmp_path: Path) -> None:
    from benchmarks.operator_scale import run

    res = run(15, tmp_path / "op", timeout=120, rate=20.0)
    p1 = res["phase1_create"]
    assert p1["reconciled"] == 15 and res["phase2_transitions"]["mirrored"] == 15
    assert p1["create_seconds"] >= 14 / 20 and p1["paced_rate"] == 20.0  # the last run waited for its slot
    assert p1["api_writes_per_run"] == 4.0  # ConfigMap, PVC, PyTorchJob, one status patch
    assert res["operator_peak_rss_mb"] > 0


@pytest.mark.apiserver
def test_operator_scale_smoke_on_the_real_api_server(tmp_path: Path, apiserver: Any) -> None:
    from benchmarks.operator_scale import run

    res = run(15, tmp_path / "op", timeout=120, backend="apiserver", api=apiserver)
    p1 = res["phase1_create"]
    assert res["backend"] == "apiserver"
    assert p1["reconciled"] == 15 and res["phase2_transitions"]["mirrored"] == 15
    # Counted by the API server itself: ConfigMap, PVC, PyTorchJob, one status patch per run.
    assert p1["api_writes_per_run"] == 4.0
    assert 4.0 < p1["api_requests_per_run"] < 8.0


def test_lora_flops_formula() -> None:
    from benchmarks.flops import StackFlops, peak_for, token_flops, utilisation

    model, hardware = token_flops(StackFlops(frozen_params=100, lora_params=10, layers=0, width=0), attended=0)
    assert model == 4 * 100 + 6 * 10 and hardware == model
    _, with_recompute = token_flops(StackFlops(100, 10, 0, 0), 0, recompute=True)
    assert with_recompute == model + 2 * 100 + 2 * 10
    attn, _ = token_flops(StackFlops(0, 0, layers=2, width=8), attended=16)
    assert attn == 12 * 2 * 16 * 8
    assert peak_for("NVIDIA H100 80GB HBM3") == 989.4e12 and peak_for("NVIDIA H100 PCIe") == 756e12
    assert peak_for("cpu") is None and utilisation(1.0, None) is None
    assert utilisation(494.7e12, 989.4e12) == pytest.approx(0.5)


def test_gpu_runs_also_try_torch_compile_and_the_ratio_takes_our_best() -> None:
    from benchmarks.__main__ import ratios
    from benchmarks.trainer_throughput import configs

    assert configs("cpu") == ("baseline", "ours")
    assert configs("gpu") == ("baseline", "ours", "ours-compile")

    def row(config: str, tps: float, loss: float) -> dict[str, object]:
        return {"workload": "summarization", "config": config, "tokens_per_second": tps,
                "samples_per_second": tps / 100, "eval_loss": loss, "mfu": tps / 1e6}

    q = ratios([row("baseline", 100, 2.0), row("ours", 250, 1.9), row("ours-compile", 320, 1.95)])["summarization"]
    assert q["config"] == "ours-compile" and q["tokens_per_second_ratio"] == pytest.approx(3.2)
    assert q["eval_loss_ours"] == 1.95 and q["mfu_ours"] == pytest.approx(320 / 1e6)
    q = ratios([row("baseline", 100, 2.0), row("ours", 250, 1.9), row("ours-compile", 200, 1.9)])["summarization"]
    assert q["config"] == "ours" and q["tokens_per_second_ratio"] == pytest.approx(2.5)
    # ours-auto trained on more samples at its large batch: its MFU counts, its tokens/s does not compete.
    same = {"samples_trained": 480}
    q = ratios([{**row("baseline", 100, 2.0), **same}, {**row("ours", 250, 1.9), **same},
                {**row("ours-auto", 900, 1.5), "samples_trained": 3000}])["summarization"]
    assert q["config"] == "ours" and q["mfu_ours"] == pytest.approx(250 / 1e6)
    assert q["mfu_best"] == pytest.approx(900 / 1e6)


def test_a_second_gpu_call_reruns_only_the_configurations_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.trainer_throughput import configs

    monkeypatch.setenv("LEGISTRA_BENCH_CONFIGS", "ours-compile,baseline")
    assert configs("gpu") == ("ours-compile", "baseline")
    with pytest.raises(SystemExit, match="ours-compile not among baseline, ours, ours-auto on a cpu"):
        configs("cpu")
    monkeypatch.setenv("LEGISTRA_BENCH_CONFIGS", "")
    assert configs("gpu") == ("baseline", "ours", "ours-compile")  # ours-auto only when named


def test_a_profile_says_where_the_device_time_went() -> None:
    from benchmarks.step_profile import category, shares

    kernels = {  # kernel names as an H100's profiles show them, and CPU op names as the rehearsal's do
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1": "matmul",
        "nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTT": "matmul",
        "aten::addmm": "matmul",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>": "attention",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
        "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "Memcpy DtoD (Device -> Device)": "copy",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>": "other",
    }
    assert {name: category(name) for name in kernels} == kernels
    got = shares([("nvjet_a", 6.0), ("flash_fwd", 3.0), ("elementwise", 1.0), ("cutlass_gemm", 2.0)])
    assert got == pytest.approx({"matmul": 8 / 12, "attention": 3 / 12, "other": 1 / 12})
    assert list(got) == ["matmul", "attention", "other"]  # largest first
    assert shares([]) == {} and shares([("idle", 0.0)]) == {}


def test_the_ceilings_are_measured_on_random_data() -> None:
    from benchmarks.ceilings import CPU, measure

    found = measure()  # this machine has no GPU: the small sizes, float32
    assert found["device"] == "cpu" and found["matmul"]["side"] == CPU[0] and found["copy"]["bytes"] == CPU[1]
    assert found["matmul"]["tflops"] > 0 and found["copy"]["tb_per_s"] > 0


def test_data_scale_smoke(tmp_path: Path) -> None:
    import datetime as dt

    from benchmarks.data_scale import run
    from benchmarks.report import write_report

    rows = run([3000], tmp_path / "work", ranks=(1,), max_length=64)
    (r,) = rows
    assert (r["rows"], r["code"], r["ranks"]) == (3000, "after", 1)
    for phase in ("cold", "warm"):
        assert [x["examples"] for x in r[phase]["per_rank"]] == [2970]  # 1% held out
        assert all(x["examples"] > 0 and x["peak_anon_mb"] > 0 for x in r[phase]["per_rank"])
    results = tmp_path / "results"
    results.mkdir()
    (results / "data-x.json").write_text(json.dumps({"machine": {"date": dt.date.today().isoformat(),
                                                                 "host_cpu": "x", "cores": 2}, "results": rows}))
    write_report(results, tmp_path / "README.md")
    assert "| 3,000 | " in (tmp_path / "README.md").read_text()
