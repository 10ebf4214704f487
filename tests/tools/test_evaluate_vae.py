"""tools/evaluate.py --vae-ckpt: a VAE checkpoint's reconstructions of held-out clips, scored against a
numpy PSNR of our own."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvid.data.shapes import generate_shapes_dataset
from latentvid.data.video import read_video
from latentvid.models.autoencoder import load_vae_from_checkpoint
from latentvid.nn.vae3d import CausalVAE3D

VAE = {"latent_channels": 4, "base_channels": 8, "channel_mult": [1, 2], "temporal_downsample": [True, False],
       "norm": "none", "block": "factorized"}


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("tools/evaluate.py", "evaluate_tool_vae")


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    """A random factorized VAE saved as AutoencoderModule checkpoints are (config + vae.* weights),
    and a folder of 5-frame clips (1 + 2 * 2: its temporal factor is 2)."""
    tmp = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    vae = CausalVAE3D(**VAE, scale=0.7, shift=0.1)
    ckpt = tmp / "vae.ckpt"
    torch.save({"hyper_parameters": {"vae": {"class_path": "latentvid.nn.vae3d.CausalVAE3D", "init_args": VAE}},
                "state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()}}, ckpt)
    data = tmp / "shapes"
    generate_shapes_dataset(data, clips_per_combo=1, num_frames=5, size=16, images_per_combo=1,
                            heldout_clips_per_combo=1)
    return ckpt, data


def test_psnr_per_clip_matches_numpy(tool, vae_ckpt, tmp_path: Path) -> None:
    ckpt, data = vae_ckpt
    out = tmp_path / "vae.json"
    report = tool.main(["--vae-ckpt", str(ckpt), "--real", str(data / "heldout.jsonl"), "--metrics", "psnr,ssim",
                        "--batch-size", "4", "--out", str(out), "--device", "cpu"])
    rows = [json.loads(line) for line in (data / "heldout.jsonl").read_text().splitlines()]
    vae = load_vae_from_checkpoint(str(ckpt))
    psnrs = []
    for row in rows:
        x = read_video(data / row["path"])[None]  # (1, 3, T, H, W)
        with torch.no_grad():
            y = vae.decode(vae.encode(x)).clamp(-1, 1)
        a, b = (x.numpy().astype(np.float64) + 1) / 2, (y.numpy().astype(np.float64) + 1) / 2
        psnrs.append(10 * np.log10(1.0 / np.mean((a - b) ** 2)))
    assert report["metrics"]["psnr"]["n"] == len(rows) == 6
    assert report["metrics"]["psnr"]["value"] == pytest.approx(float(np.mean(psnrs)), abs=1e-3)
    assert 0.0 < report["metrics"]["ssim"]["value"] < 1.0
    assert json.loads(out.read_text())["metrics"]["psnr"]["value"] == pytest.approx(report["metrics"]["psnr"]["value"])


def test_clip_length_that_does_not_fit_names_the_file(tool, vae_ckpt, tmp_path: Path) -> None:
    ckpt, _ = vae_ckpt
    data = tmp_path / "four"
    generate_shapes_dataset(data, clips_per_combo=1, num_frames=4, size=16, images_per_combo=1,
                            heldout_clips_per_combo=1)
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--vae-ckpt", str(ckpt), "--real", str(data / "heldout.jsonl"), "--metrics", "psnr",
                   "--out", str(tmp_path / "x.json"), "--device", "cpu"])
    message = str(exit_.value.code)  # sys.exit(text): the interpreter prints it as one line
    assert message.startswith("evaluate.py: error:") and "num_frames=4" in message and ".mp4" in message
