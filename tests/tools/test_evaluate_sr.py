"""tools/evaluate.py --sr-ckpt: an SR checkpoint written by the real CLI, scored on degraded clips
against the originals beside the plain baseline (checked against a numpy PSNR of our own)."""

import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from latentvid.data.shapes import generate_shapes_dataset
from latentvid.data.video import read_video

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOMLY INITIALISED")


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("tools/evaluate.py", "evaluate_tool_sr")


@pytest.fixture(scope="module")
def ssr_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny SSR (16 px output) trained for one step by latentvid fit, and its data folder."""
    from latentvid.cli import main

    tmp = tmp_path_factory.mktemp("ssr")
    data = tmp / "shapes"
    generate_shapes_dataset(data, clips_per_combo=1, num_frames=2, size=16, images_per_combo=1,
                            heldout_clips_per_combo=1)
    unet = {"in_channels": 6, "out_channels": 3, "model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
            "attention_levels": [], "head_dim": 8, "context_dim": None, "temporal_attention": False,
            "fps_conditioning": False, "num_extra_conditions": 1, "norm_groups": 4}
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 1, "limit_val_batches": 0, "logger": False,
                    "default_root_dir": str(tmp),  # where the CLI saves config.yaml
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "latentvid.models.super_resolution.SpatialSuperResolution",
                  "init_args": {"text_encoder": None, "sample_steps": 2, "clip_sample": 1.0, "residual_scale": 4.0,
                                "unet": {"class_path": "latentvid.nn.unet3d.UNet3D", "init_args": unet}}},
        "data": {"class_path": "latentvid.data.datamodule.ShapesDataModule",
                 "init_args": {"root": str(data), "num_frames": 2, "size": 16, "batch_size": 2, "clips_per_combo": 1,
                               "image_ratio": 0.0}},
    }
    (tmp / "ssr.yaml").write_text(yaml.safe_dump(config))
    with mock.patch.object(sys, "argv", ["latentvid"]):  # pytest's own arguments are not the CLI's
        main(["fit", "-c", str(tmp / "ssr.yaml")])
    return tmp / "ckpt" / "last.ckpt", data


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over clips of the PSNR (dB) of [0, 1] pixels; a, b (N, 3, T, H, W) in [-1, 1]."""
    a, b = np.clip((a + 1) / 2, 0, 1), np.clip((b + 1) / 2, 0, 1)
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3, 4))  # (N,)
    return float((10 * np.log10(1.0 / mse)).mean())


def test_sr_checkpoint_is_scored_against_bicubic(tool, ssr_ckpt, tmp_path):
    ckpt, data = ssr_ckpt
    out = tmp_path / "sr.json"
    report = tool.main(["--sr-ckpt", str(ckpt), "--real", str(data / "heldout.jsonl"), "--steps", "2",
                        "--batch-size", "4", "--limit", "5", "--save-videos", str(tmp_path / "videos"),
                        "--out", str(out), "--device", "cpu"])
    m = report["metrics"]
    assert {"psnr", "psnr_bicubic", "ssim", "ssim_bicubic", "psnr_gain_over_bicubic"} <= set(m)
    assert m["psnr"]["n"] == 5
    assert m["psnr_gain_over_bicubic"]["value"] == pytest.approx(m["psnr"]["value"] - m["psnr_bicubic"]["value"])
    # the baseline, recomputed here: anti-aliased 2x downsampling (PIL-equivalent), bicubic back up
    rows = [json.loads(line) for line in (data / "heldout.jsonl").read_text().splitlines()][:5]
    truth = torch.stack([read_video(data / r["path"]) for r in rows])  # (5, 3, T, 16, 16)
    b, c, t, h, w = truth.shape
    frames = truth.transpose(1, 2).reshape(b * t, c, h, w)
    low = torch.nn.functional.interpolate(frames, size=(8, 8), mode="bilinear", antialias=True)
    bic = torch.nn.functional.interpolate(low, size=(16, 16), mode="bicubic").clamp(-1, 1)
    bic = bic.reshape(b, t, c, h, w).transpose(1, 2)
    assert m["psnr_bicubic"]["value"] == pytest.approx(numpy_psnr(bic.numpy(), truth.numpy()), abs=1e-3)
    assert json.loads(out.read_text())["metrics"]["psnr"]["value"] == pytest.approx(m["psnr"]["value"])
    assert len(list((tmp_path / "videos" / "sr").glob("*.mp4"))) == 5
    assert len(list((tmp_path / "videos" / "bicubic").glob("*.mp4"))) == 5


def test_sr_mode_errors_are_one_line(tool, ssr_ckpt, tmp_path, capsys):
    ckpt, data = ssr_ckpt
    with pytest.raises(SystemExit) as err:
        tool.main(["--sr-ckpt", str(ckpt), "--metrics", "fvd", "--real", str(data / "heldout.jsonl")])
    assert "--sr-ckpt scores psnr and ssim" in str(err.value)
    with pytest.raises(SystemExit) as err:
        tool.main(["--sr-ckpt", str(ckpt)])
    assert "needs --real" in str(err.value)
    with pytest.raises(SystemExit) as err:
        tool.main(["--sr-ckpt", str(tmp_path / "none.ckpt"), "--real", str(data / "heldout.jsonl")])
    assert "none.ckpt" in str(err.value)
