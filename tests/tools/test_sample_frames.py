"""End to end: a tiny latent base and its frame-conditioned fine-tune (configs/i2v.yaml's mechanism: init_from
the base run) written by tools/fit.py, then tools/sample.py --image / --extend / --interpolate on real png and
mp4 files, with the trained and the training-free methods, and one-line errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
VAE = ROOT / "data" / "vae" / "shapes-vae.ckpt"
CAPTION = "a red circle moving left"

pytestmark = pytest.mark.slow


def config(run: Path, data: Path, **model) -> dict:
    unet = {"in_channels": 4, "out_channels": 4, "model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
            "attention_levels": [1], "head_dim": 16, "context_dim": 32, "norm_groups": 4}
    unet.update(model.pop("unet", {}))
    return {
        "seed_everything": 0,
        "trainer": {"default_root_dir": str(run), "accelerator": "cpu", "devices": 1, "max_steps": 2,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
                    "enable_model_summary": False, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging",
                                   "init_args": {"decay": 0.9}},
                                  {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True}}]},
        "model": {"class_path": "latentvid.models.latent_diffusion.LatentDiffusion",
                  "init_args": {"warmup_steps": 1, "sample_steps": 3, "guidance_scale": 2.0,
                                "first_stage": {"class_path": "latentvid.models.autoencoder.PretrainedCausalVAE",
                                                "init_args": {"checkpoint": str(VAE)}},
                                "text_encoder": {"class_path": "latentvid.conditioning.text.OpenCLIPTextEncoder",
                                                 "init_args": {"random_width": 32, "random_layers": 1,
                                                               "random_heads": 2, "max_length": 16}},
                                "unet": {"class_path": "latentvid.nn.unet3d.UNet3D", "init_args": unet}, **model}},
        "data": {"class_path": "latentvid.data.datamodule.ShapesDataModule",
                 "init_args": {"root": str(data), "num_frames": 9, "size": 32, "batch_size": 4, "clips_per_combo": 1,
                               "image_ratio": 0.25}},
    }


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def fit(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    res = run(str(ROOT / "tools" / "fit.py"), "-c", str(path), cwd=path.parent)
    assert res.returncode == 0, res.stderr[-4000:]
    return Path(cfg["trainer"]["callbacks"][1]["init_args"]["dirpath"]) / "last.ckpt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The base checkpoint, its frame-conditioned fine-tune, and input files (png, mp4s) in one folder."""
    import numpy as np

    from latentvid.data.shapes import render_clip
    from latentvid.data.video import from_uint8, write_png, write_video

    tmp = tmp_path_factory.mktemp("frames")
    base = fit(config(tmp / "base", tmp / "shapes"), tmp / "base.yaml")
    i2v = fit(config(tmp / "i2v", tmp / "shapes", init_from=str(tmp / "base"), frame_masks={"first": 1.0},
                     unet={"frame_conditioning": True}), tmp / "i2v.yaml")
    clip = from_uint8(render_clip("red", "circle", "left", num_frames=9, size=32, rng=np.random.default_rng(0)))
    write_png(tmp / "first.png", clip[:, 0])
    write_png(tmp / "small.png", clip[:, 0, :16, :16])
    write_video(tmp / "clip9.mp4", clip, fps=8)
    write_video(tmp / "clip5.mp4", clip[:, ::2], fps=6)  # a rate other than the default 8: the tool reads it
    write_video(tmp / "clip4.mp4", clip[:, :4], fps=8)
    return {"root": tmp, "base": base, "i2v": i2v}


def sample(runs, ckpt: str, *args: str) -> subprocess.CompletedProcess:
    return run(str(ROOT / "tools" / "sample.py"), "--ckpt", str(runs[ckpt]), "--prompt", CAPTION, "--steps", "3",
               "--device", "cpu", *args, cwd=runs["root"])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a - b).pow(2).mean()))


def test_the_fine_tune_started_from_the_base(runs):
    base = torch.load(runs["base"], map_location="cpu", weights_only=True)
    i2v = torch.load(runs["i2v"], map_location="cpu", weights_only=True)
    assert "unet.frame_input.weight" in i2v["state_dict"] and "unet.frame_input.weight" not in base["state_dict"]
    assert i2v["hyper_parameters"]["init_from"] is None  # sampling it never needs the base run
    # the text tower is random and frozen: the fine-tune's (raw) weights are the base's EMA ones it started from
    for key in (k for k in base["state_dict"] if k.startswith("text_encoder.")):
        assert torch.equal(base["state_dict"][key], i2v["current_model_state"][key]), key


@pytest.mark.parametrize("ckpt,method", [("i2v", None), ("base", None), ("base", "replacement")])
def test_image_to_video_from_a_png(runs, ckpt, method):
    from latentvid.data.video import read_image, read_video

    out = runs["root"] / f"i2v-{ckpt}-{method}.mp4"
    extra = ("--frames-method", method) if method else ()
    res = sample(runs, ckpt, "--image", str(runs["root"] / "first.png"), "--out", str(out), *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    video = read_video(out)
    assert video.shape == (3, 9, 32, 32)
    image = torch.from_numpy(read_image(runs["root"] / "first.png").copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert psnr(video[:, 0], image) > 20.0  # the image is latent frame 0: the VAE's reconstruction of it


def test_extend_an_mp4(runs):
    from latentvid.data.video import read_video, video_info

    out = runs["root"] / "longer.mp4"
    res = sample(runs, "i2v", "--extend", str(runs["root"] / "clip9.mp4"), "--frames", "17", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    video, given = read_video(out), read_video(runs["root"] / "clip9.mp4")
    assert video.shape == (3, 17, 32, 32)
    assert psnr(video[:, :9], given) > 30.0  # the input frames as given (up to the mp4 encoding)
    assert video_info(out)["fps"] == 8.0
    for extra, rate in [((), 6.0), (("--fps", "10"), 10.0)]:  # the clip's rate unless --fps chooses
        res = sample(runs, "i2v", "--extend", str(runs["root"] / "clip5.mp4"), "--frames", "9", "--out", str(out),
                     *extra)
        assert res.returncode == 0 and video_info(out)["fps"] == rate, res.stderr[-3000:]
        assert ("at 6 fps, the clip's rate" in res.stderr) == (not extra)


@pytest.mark.parametrize("ckpt", ["i2v", "base"])
def test_interpolate_an_mp4(runs, ckpt):
    from latentvid.data.video import read_video, video_info

    out = runs["root"] / f"finer-{ckpt}.mp4"
    res = sample(runs, ckpt, "--interpolate", str(runs["root"] / "clip5.mp4"), "--factor", "2", "--out", str(out),
                 "--frames-weight", "3")
    assert res.returncode == 0, res.stderr[-3000:]
    video, given = read_video(out), read_video(runs["root"] / "clip5.mp4")
    assert video.shape == (3, 9, 32, 32)
    assert psnr(video[:, ::2], given) > 30.0
    assert video_info(out)["fps"] == 12.0  # 6 fps x 2: the result lasts as long as the given clip


@pytest.mark.parametrize("args,message", [
    (("--image", "missing.png"), "image file missing.png does not exist"),
    (("--image", "small.png"), "small.png is 16x16"),
    (("--image", "first.png", "--frames", "8"), "--frames = 8 does not fit the VAE"),
    (("--extend", "clip9.mp4"), "--extend needs --frames"),
    (("--extend", "clip9.mp4", "--frames", "17", "--overlap", "4"), "overlap = 4 does not fit"),
    (("--extend", "clip9.mp4", "--frames", "33", "--stride", "4"), "9 frames give 3 keyframes at stride 4"),
    (("--interpolate", "clip4.mp4"), r"interpolated length (4 - 1) x 2 + 1 = 7 does not fit"),
    (("--interpolate", "clip5.mp4", "--stride", "2"), "--stride set how --extend works"),
    (("--image", "first.png", "--frames-method", "trained"), "needs a frame-conditioned network"),
])
def test_bad_input_is_one_line_naming_the_value(runs, args, message):
    ckpt = "base" if "trained" in args else "i2v"
    res = sample(runs, ckpt, *args, "--out", str(runs["root"] / "bad.mp4"))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]  # (after the tiny model's random-text-tower warning)
    assert last.startswith("sample.py: ") and message in last, res.stderr[-2000:]
