"""tools/benchmark.py dit --tiny: both networks measured in one run, at the same shape, the JSON
checked against recounts (parameters rebuilt from the recorded configs, ratios from the rows)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "dit.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "dit", "--tiny", "--device", "cpu",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours / diffusers" in proc.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_run_compares_equal_shapes(report):
    from diffusers import WanTransformer3DModel

    from latentvid.nn.dit import DiT3D

    wan_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in report["configs"]["diffusers"].items()}
    ours_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in report["configs"]["ours"].items()}
    assert report["rows"]["diffusers"]["params"] == sum(p.numel() for p in WanTransformer3DModel(**wan_cfg).parameters())
    assert report["rows"]["ours"]["params"] == sum(p.numel() for p in DiT3D(**ours_cfg).parameters())
    # same width, depth, heads, MLP width, patch and text width
    assert ours_cfg["dim"] == wan_cfg["num_attention_heads"] * wan_cfg["attention_head_dim"]
    assert ours_cfg["depth"] == wan_cfg["num_layers"] and ours_cfg["head_dim"] == wan_cfg["attention_head_dim"]
    assert round(ours_cfg["dim"] * ours_cfg["mlp_ratio"]) == wan_cfg["ffn_dim"]
    assert ours_cfg["patch_size"] == wan_cfg["patch_size"] and ours_cfg["context_dim"] == wan_cfg["text_dim"]


@pytest.mark.slow
def test_tiny_run_rows_and_ratios_are_consistent(report):
    rows = report["rows"]
    assert set(rows) == {"diffusers", "ours", "diffusers_ckpt", "ours_ckpt"} and report["mode"] == "tiny"
    for r in rows.values():
        assert r["train_step_s"] > 0 and r["sample_step_s"] > 0 and r["peak_gib"] is None  # no CUDA memory on CPU
        assert math.isclose(r["videos_per_s"], report["batch"] / r["train_step_s"])
    ratios = report["ratios"]
    assert math.isclose(ratios["train_videos_per_s"], rows["ours"]["videos_per_s"] / rows["diffusers"]["videos_per_s"])
    assert math.isclose(ratios["sample_step_time"], rows["ours"]["sample_step_s"] / rows["diffusers"]["sample_step_s"])
    assert ratios["peak_memory_ckpt"] is None
