"""tools/encode_latents.py: encode a tiny shapes folder, compare with the VAE, resume, adapters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from latentvid.data.datasets import ImageTextDataset, VideoTextDataset
from latentvid.data.latents import LatentDataset
from latentvid.data.shapes import generate_shapes_dataset
from latentvid.nn.vae3d import CausalVAE3D

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import encode_latents  # noqa: E402

T, SIZE = 5, 16
VAE_ARGS = {"base_channels": 8, "channel_mult": [1, 2], "temporal_downsample": [True, False], "latent_channels": 4}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, seed=0, clips_per_combo=1, num_frames=T, size=SIZE, images_per_combo=1,
                            heldout_clips_per_combo=1)
    return root


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CausalVAE3D]:
    """A checkpoint in the layout AutoencoderModule + LightningCLI write: the VAE's config under
    hyper_parameters['vae'], its weights as vae.* in state_dict (scale / shift included)."""
    torch.manual_seed(0)
    vae = CausalVAE3D(**VAE_ARGS, scale=0.7, shift=0.1).eval()
    path = tmp_path_factory.mktemp("ckpt") / "vae.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "latentvid.models.autoencoder.AutoencoderModule",
                                     "vae": {"class_path": "latentvid.nn.vae3d.CausalVAE3D", "init_args": VAE_ARGS}},
                "state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()}}, path)
    return path, vae


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines() if line.strip()]


def test_round_trip_matches_the_vae_and_resumes(data: Path, vae_ckpt, tmp_path: Path) -> None:
    ckpt, vae = vae_ckpt
    out = tmp_path / "latents"
    args = ["--vae", str(ckpt), "--data", str(data), "--out", str(out), "--batch-size", "16", "--device", "cpu"]
    summary = encode_latents.main(args)

    videos = VideoTextDataset(str(data), "videos.jsonl", T)
    images = ImageTextDataset(str(data), "images.jsonl", T)
    rows = {r["key"]: r for r in _index(out)}
    assert set(rows) == {r["key"] for r in videos.rows} | {r["key"] for r in images.rows}
    assert summary["encoded"] == len(rows) == len(videos) + len(images)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["num_frames"], meta["latent_frames"], meta["latent_channels"]) == (T, 3, 4)
    assert (out / "eval_prompts.txt").read_text() == (data / "eval_prompts.txt").read_text()

    # stored latents = the VAE's scaled posterior mean of the same clip
    for ds, i in ((videos, 0), (videos, 17), (images, 3)):
        item = ds[i]
        with torch.no_grad():
            expected = vae.encode(item["video"][None])[0]  # (C, t, h, w), mode, scaled
        row = rows[item["key"]]
        stored = torch.load(out / row["path"], weights_only=True)
        torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-5)
        assert row["latent_shape"] == [4, 3, SIZE // 2, SIZE // 2] and row["caption"] == item["caption"]
        assert row["frame_mask"] == item["frame_mask"].tolist()
    still = rows[images.rows[0]["key"]]
    assert still["latent_mask"] == [True, False, False] and still["image"] and still["fps"] == 0.0
    assert rows[videos.rows[0]["key"]]["latent_mask"] == [True, True, True]
    assert len(LatentDataset(str(out))) == len(rows)

    # resume: only the missing sample is encoded again, the others are left untouched
    victim = videos.rows[5]["key"]
    (out / rows[victim]["path"]).unlink()
    kept = out / rows[videos.rows[6]["key"]]["path"]
    mtime = kept.stat().st_mtime_ns
    again = encode_latents.main(args)
    assert again["encoded"] == 1 and again["skipped"] == len(rows) - 1
    assert kept.stat().st_mtime_ns == mtime
    assert {r["key"] for r in _index(out)} == set(rows) and (out / rows[victim]["path"]).is_file()
    assert encode_latents.main(args)["encoded"] == 0


def test_other_settings_need_overwrite(data: Path, vae_ckpt, tmp_path: Path) -> None:
    ckpt, _ = vae_ckpt
    out = tmp_path / "latents"
    base = ["--vae", str(ckpt), "--data", str(data), "--out", str(out), "--index", "heldout.jsonl"]
    encode_latents.main(base)
    with pytest.raises(SystemExit, match="--overwrite"):
        encode_latents.main([*base, "--size", "8"])
    summary = encode_latents.main([*base, "--size", "8", "--overwrite"])
    assert summary["height"] == 8 and all(r["latent_shape"][-1] == 4 for r in _index(out))


def test_bad_inputs_exit_with_a_message(data: Path, tmp_path: Path, vae_ckpt) -> None:
    """main() turns bad input into a one-line SystemExit message (no traceback on the command line)."""
    out = ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"no\.ckpt.*configs/vae\.yaml"):
        encode_latents.main(["--vae", str(tmp_path / "no.ckpt"), "--data", str(data), *out])
    with pytest.raises(SystemExit, match="num_frames=4"):
        encode_latents.main(["--vae", str(vae_ckpt[0]), "--data", str(data), *out, "--frames", "4"])
    with pytest.raises(SystemExit, match="missing.jsonl"):
        encode_latents.main(["--vae", str(vae_ckpt[0]), "--data", str(data), *out, "--index", "missing.jsonl"])


def test_diffusers_image_vae_folder(data: Path, tmp_path: Path) -> None:
    """A tiny random AutoencoderKL saved with save_pretrained is used frame by frame."""
    from diffusers import AutoencoderKL

    from latentvid.nn.diffusers_vae import DiffusersImageVAE

    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                          layers_per_block=1, sample_size=SIZE, scaling_factor=0.5)
    model.save_pretrained(tmp_path / "sd" / "vae")
    out = tmp_path / "latents"
    encode_latents.main(["--vae", str(tmp_path / "sd"), "--data", str(data), "--out", str(out),
                         "--index", "heldout.jsonl"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["first_stage"] == "DiffusersImageVAE" and meta["temporal_factor"] == 1
    item = VideoTextDataset(str(data), "heldout.jsonl", T)[0]
    row = next(r for r in _index(out) if r["key"] == item["key"])
    expected = DiffusersImageVAE(str(tmp_path / "sd")).encode(item["video"][None])[0]
    torch.testing.assert_close(torch.load(out / row["path"], weights_only=True), expected, rtol=1e-5, atol=1e-5)
    assert row["latent_shape"] == [4, T, SIZE // 2, SIZE // 2]
