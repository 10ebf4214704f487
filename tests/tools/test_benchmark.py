"""tools/benchmark.py unet: the --tiny comparison run as a subprocess, its JSON checked against
independent recounts (parameters rebuilt from the written configs, FLOPs linear in the batch and
between forward-only and forward + backward, ratios recomputed from the rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK = ROOT / "tools" / "benchmark.py"


@pytest.fixture(scope="module")
def bench(load_script):
    """benchmarks/unet.py as a module (the folder is not a package)."""
    return load_script("benchmarks/unet.py", "latentvid_benchmark_unet")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "unet.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARK), "unet", "--tiny", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_tiny_run_measures_both_models_with_matched_parameters(tiny_report, bench):
    report, stdout = tiny_report
    from diffusers import UNet3DConditionModel

    from latentvid.nn.unet3d import UNet3D

    for key in ("device", "torch", "diffusers", "date", "peak", "models", "train", "sample", "summary"):
        assert key in report, key
    assert report["mode"] == "tiny" and report["peak"]["tflops"] > 0
    # parameter counts: rebuild both networks from the configs the JSON records
    ref_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in report["models"]["diffusers"]["config"].items()}
    ours_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in report["models"]["ours"]["config"].items()}
    n_ref, n_ours = count(UNet3DConditionModel(**ref_cfg)), count(UNet3D(**ours_cfg))
    assert (report["models"]["diffusers"]["params"], report["models"]["ours"]["params"]) == (n_ref, n_ours)
    assert abs(n_ours / n_ref - 1) <= report["param_tolerance"] == 0.05
    # same channel widths, depth, head size and text width as the reference
    widths = [ours_cfg["model_channels"] * m for m in ours_cfg["channel_mult"]]
    assert widths == list(ref_cfg["block_out_channels"]) and ours_cfg["head_dim"] == ref_cfg["attention_head_dim"]
    assert ours_cfg["context_dim"] == ref_cfg["cross_attention_dim"] == report["context_shape"][1]

    rows = {(r["variant"], r["batch"]): r for r in report["train"]}
    for model in ("diffusers", "ours"):
        for batch in (1, 4):
            r = rows[(model, batch)]
            assert r["step_s"] > 0 and r["counted_flops"] > 0 and r["peak_mem_gib"] is None  # CPU: no CUDA peak
            assert r["videos_per_s"] == pytest.approx(batch / r["step_s"])
            assert r["tflops"] == pytest.approx(r["model_flops"] / r["step_s"] / 1e12)
            assert r["mfu"] == pytest.approx(r["tflops"] / report["peak"]["tflops"])
        # FLOPs of a step are linear in the batch
        assert rows[(model, 4)]["model_flops"] == pytest.approx(4 * rows[(model, 1)]["model_flops"], rel=1e-3)
    # checkpointing really recomputed: more FLOPs counted for the same model FLOPs
    assert rows[("ours-ckpt", 4)]["counted_flops"] > 1.2 * rows[("ours", 4)]["counted_flops"]
    assert rows[("ours-ckpt", 4)]["model_flops"] == rows[("ours", 4)]["model_flops"]
    assert "gradient checkpointing" in rows[("diffusers-ckpt", 1)]["error"]  # ModelScope's U-Net refuses it
    samples = {r["variant"]: r for r in report["sample"]}
    assert samples["diffusers"]["ms_per_step"] > 0 and samples["ours"]["ms_per_step"] > 0
    assert samples["ours"]["batch"] == 2  # conditional + unconditional in one forward
    # ratios are ours / diffusers from the rows
    ratio = report["summary"]["train"]["ours"]["4"]["videos_per_s"]
    assert ratio == pytest.approx(rows[("ours", 4)]["videos_per_s"] / rows[("diffusers", 4)]["videos_per_s"])
    assert report["summary"]["sample_ms_per_step"]["ours"] == pytest.approx(
        samples["ours"]["ms_per_step"] / samples["diffusers"]["ms_per_step"])
    assert "x videos/s" in stdout and "ours-ckpt" in stdout and "refused" in stdout


@pytest.mark.slow
def test_train_flops_are_forward_plus_backward_of_the_same_network(tiny_report, bench):
    """Independent count: a training step is 3x the forward FLOPs of matmuls and convolutions (backward
    for inputs and weights; less for the first layer, whose input needs no gradient) and 3.5x those
    of attention (its backward recomputes the scores): between 2 and 3.5x in all."""
    report, _ = tiny_report
    bench.register_cpu_attention_flops()  # as the benchmark does: CPU SDPA kernels counted too
    shape = bench.Shape(*report["shape"].values())
    z, logsnr, context, _ = bench.inputs_for(shape, 1, torch.device("cpu"), 0)
    for kind, build in (("diffusers", lambda: bench.build_diffusers(bench.TINY)),
                        ("ours", lambda: bench.UNet3D(**bench.matched_config(bench.TINY)[0]))):
        model = build()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            bench.make_forward(kind)(model, z, logsnr, context)
        train = next(r for r in report["train"] if r["variant"] == kind and r["batch"] == 1)["model_flops"]
        assert 2.0 < train / counter.get_total_flops() <= 3.5, kind


def test_matched_config_mirrors_modelscope_within_five_percent(bench):
    """The full-size pair, counted on the meta device: 1.41 B parameters, ours within 5 %."""
    cfg, ours, ref = bench.matched_config(bench.MODELSCOPE)
    assert ref == pytest.approx(1.411e9, rel=1e-3)  # the ModelScope U-Net's size
    assert abs(ours / ref - 1) <= 0.05
    assert cfg["model_channels"] == 320 and cfg["channel_mult"] == (1, 2, 4, 4) and cfg["num_res_blocks"] == 2
    assert cfg["head_dim"] == 64 and cfg["context_dim"] == 1024 and cfg["in_channels"] == cfg["out_channels"] == 4


def test_summary_targets_from_a_hand_made_report(bench):
    def row(variant, batch, vps, mem, flops=1e12):
        return dict(variant=variant, batch=batch, videos_per_s=vps, peak_mem_gib=mem, model_flops=flops)

    report = dict(
        train=[row("diffusers", 4, 9.0, 60.0), row("ours", 4, 20.0, 40.0, 0.7e12), row("ours-ckpt", 4, 12.0, 25.0),
               dict(variant="diffusers-ckpt", batch=4, error="refused")],
        sample=[dict(variant="diffusers", ms_per_step=70.0), dict(variant="ours", ms_per_step=30.0)],
    )
    s = bench.summarise(report)
    assert s["train"]["ours"]["4"]["videos_per_s"] == pytest.approx(20 / 9)
    assert s["train"]["ours"]["4"]["model_flops"] == pytest.approx(0.7)
    t = s["targets"]
    assert t["train_>=2x"] is True and t["ckpt_peak_mem_ratio"] == pytest.approx(25 / 60)
    assert t["ckpt_mem<=0.5x_and_speed>=1.2x"] is True  # 0.42x memory at 1.33x speed
    assert t["sample_ms_ratio"] == pytest.approx(30 / 70) and t["sample_<=0.5x"] is True
    report["train"][2]["videos_per_s"] = 10.0  # 1.11x: too slow with checkpointing
    assert bench.summarise(report)["targets"]["ckpt_mem<=0.5x_and_speed>=1.2x"] is False


def test_profile_categories(bench):
    assert bench.categorise("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert bench.categorise("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm>") == "matmul"
    assert bench.categorise("sm90_xmma_fprop_implicit_gemm_bf16") == "conv"
    assert bench.categorise("aten::native_group_norm") == "norm"
    assert bench.categorise("aten::copy_") == "copy/layout"
    assert bench.categorise("triton_poi_fused_add_silu_0") == "fused (compiled)"
    assert bench.categorise("void at::native::vectorized_elementwise_kernel<4, silu>") == "elementwise"
    assert bench.categorise("aten::transpose") == "views/alloc (host)"
    assert bench.categorise("aten::addmm") == bench.categorise("aten::mm") == "matmul"
    assert bench.categorise("aten::scatter") == "other"  # not a cat


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, str(BENCHMARK), "unet", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for option in ("--tiny", "--batch-sizes", "--variants", "--compile", "--profile", "--out"):
        assert option in proc.stdout
