"""Override recipes (``-c configs/base.yaml -c configs/X.yaml``) resolve through the real CLI parser,
and set what their comments say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def resolved(*configs: str) -> dict:
    args = [a for c in configs for a in ("-c", str(ROOT / "configs" / c))]
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "fit.py"), *args, "--print_config"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return yaml.safe_load(out.stdout)


@pytest.mark.slow
def test_motion_gpu_overrides_base():
    """configs/motion-gpu.yaml is the harness run that learned the direction word on a GPU: plain v loss,
    frame positions, batch 256, lr 2e-3, 64 clips per combination, no stills; base's network otherwise."""
    cfg = resolved("base.yaml", "motion-gpu.yaml")
    model = cfg["model"]["init_args"]
    assert model["min_snr_gamma"] is None and model["snr_floor"] is None and model["target"] == "v"
    assert model["lr"] == 2e-3 and model["unet"]["init_args"]["position_embedding"] == "frame"
    assert model["unet"]["init_args"]["model_channels"] == 64  # base's U-Net otherwise
    assert cfg["trainer"]["accelerator"] == "gpu" and cfg["trainer"]["precision"] == "bf16-mixed"
    data = cfg["data"]["init_args"]
    assert (data["batch_size"], data["clips_per_combo"], data["image_ratio"]) == (256, 64, 0.0)
    assert data["root"] == "data/shapes-gpu"  # not base's 4-clips-per-combination folder
    callbacks = [c["class_path"].rsplit(".", 1)[1] for c in cfg["trainer"]["callbacks"]]
    assert callbacks.count("ModelCheckpoint") == 1 and "LogSampleVideos" in callbacks


@pytest.mark.slow
def test_flow_overrides_base():
    model = resolved("base.yaml", "flow.yaml")["model"]["init_args"]
    assert model["target"] == "flow" and model["min_snr_gamma"] is None and model["snr_floor"] is None
    assert model["schedule"]["class_path"].endswith("RectifiedFlowSchedule")
