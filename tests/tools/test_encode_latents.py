"""tools/encode_latents.py: encode a tiny shapes folder, compare with the VAE, resume, adapters; a
bucketed data config: each clip at its bucket's shape, trained by LatentDataModule(buckets=True)."""

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


# ---- a bucketed data config -------------------------------------------------------------------------


def test_bucketed_config_encodes_each_clip_at_its_bucket_s_shape(vae_ckpt, tmp_path: Path) -> None:
    import numpy as np

    from latentvid.data.bucket_batches import bucket_clip
    from latentvid.data.buckets import assign
    from latentvid.data.latents import LatentDataModule
    from latentvid.data.sources import Raw
    from latentvid.data.video import write_video

    ckpt, vae = vae_ckpt  # spatial factor 2, temporal factor 2
    folder = tmp_path / "videos"
    folder.mkdir()
    shapes, rows = {}, []
    for i, ((h, w), n) in enumerate([(hw, n) for n in (3, 5, 9) for hw in ((36, 64), (64, 36), (48, 48))]):
        frames = np.random.default_rng(i).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        write_video(folder / f"v{i}.mp4", frames, fps=8)
        rows.append({"path": f"v{i}.mp4", "caption": f"clip {i}", "key": f"v{i}"})
        shapes[f"v{i}"] = (h, w, n)
    (folder / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"class_path": "latentvid.data.video_text.VideoTextDataModule",
            "init_args": {"video": {"class_path": "latentvid.data.folder.VideoFolder",
                                    "init_args": {"root": str(folder), "index": "index.jsonl", "key_column": "key"}},
                          "clip": {"num_frames": 5, "size": 16, "fps": 8}, "batch_size": 2, "num_workers": 0,
                          "buckets": {"sizes": [16], "aspect_ratios": ["1:1", "16:9", "9:16"], "frames": [3, 5],
                                      "multiple": 4, "spatial_factor": 2, "temporal_factor": 2}}}
    config = tmp_path / "data.yaml"
    config.write_text(json.dumps(data))  # JSON is YAML
    out = tmp_path / "latents"
    args = ["--vae", str(ckpt), "--data", str(config), "--out", str(out), "--batch-size", "2", "--device", "cpu"]
    summary = encode_latents.main(args)
    dm = encode_latents.load_data_config(config)
    buckets = dm.bucket_list
    assert [b.name for b in buckets] == ["16x16x3", "16x16x5", "12x20x3", "12x20x5", "20x12x3", "20x12x5"]
    assert summary["encoded"] == summary["samples"] == 9 and set(summary["per_bucket"].values()) == {1, 2}

    # each clip's latents have its bucket's shape and are the VAE's of the clip read at that shape
    index = {r["key"]: r for r in _index(out)}
    for key, (h, w, n) in shapes.items():
        b = buckets[assign(buckets, h, w, n)]
        assert index[key]["bucket"] == b.name and b.frames == min(n, 5)
        assert index[key]["latent_shape"] == [4, 1 + (b.frames - 1) // 2, b.height // 2, b.width // 2], key
    key = "v7"  # 64 x 36, 9 frames: 20 x 12 x 5
    item = dm.video.decode(Raw("v7", 7), bucket_clip(dm.clip.deterministic(), buckets[5]))
    with torch.no_grad():
        expected = vae.encode(item["video"][None])[0]
    torch.testing.assert_close(torch.load(out / index[key]["path"], weights_only=True), expected, rtol=1e-5,
                               atol=1e-5)
    assert encode_latents.main(args)["encoded"] == 0  # resumes: nothing left to encode

    # LatentDataModule(buckets=True) trains on it: one stored shape per batch, every shape drawn
    latents = LatentDataModule(root=str(out), batch_size=2, buckets=True)
    batches = list(latents.train_dataloader())
    stored = {tuple(r["latent_shape"]) for r in index.values()}
    assert len(stored) == 6 and {tuple(b["latents"].shape[1:]) for b in batches} == stored
    for batch in batches:
        assert {tuple(index[k]["latent_shape"]) for k in batch["key"]} == {tuple(batch["latents"].shape[1:])}

    # without buckets the config has nothing to say; the folder is how to encode at one size
    del data["init_args"]["buckets"]
    config.write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"has no buckets: .* give the data folder as --data"):
        encode_latents.main(["--vae", str(ckpt), "--data", str(config), "--out", str(tmp_path / "other")])
