"""Tests of latentvid/data/latents.py (pre-encoded latent folders) and of LatentDiffusion training
from them (the ``latents`` branch of ``LatentDiffusion.diffusion_loss``)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from latentvid.conditioning.text import OpenCLIPTextEncoder
from latentvid.data.latents import LatentDataModule, LatentDataset
from latentvid.data.shapes import render_clip, video_caption
from latentvid.data.video import from_uint8
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.nn.unet3d import UNet3D
from latentvid.nn.vae3d import CausalVAE3D

C, LT, LH = 4, 3, 4  # latents (4, 3, 4, 4): 9 frames of 16 x 16 through sf = 4, tf = 4
NUM_VIDEOS, NUM_IMAGES = 6, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


def write_latent_folder(root: Path, num_videos: int = NUM_VIDEOS, num_images: int = NUM_IMAGES,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """A latent folder in the documented layout, written by hand; returns key -> stored tensor."""
    g = torch.Generator().manual_seed(seed)
    (root / "latents").mkdir(parents=True)
    meta = {"format": "latentvid-latents", "version": 1, "num_frames": 9, "height": 16, "width": 16,
            "latent_channels": C, "latent_frames": LT, "spatial_factor": 4, "temporal_factor": 4}
    (root / "meta.json").write_text(json.dumps(meta))
    rows, tensors = [], {}
    for i in range(num_videos + num_images):
        image = i >= num_videos
        key = f"{'image' if image else 'clip'}_{i:02d}"
        z = torch.randn(C, LT, LH, LH, generator=g)
        torch.save(z, root / "latents" / f"{key}.pt")
        tensors[key] = z
        rows.append({"key": key, "path": f"latents/{key}.pt", "caption": f"caption {i}", "fps": 0.0 if image else 8.0,
                     "num_frames": 1 if image else 9, "latent_shape": [C, LT, LH, LH],
                     "frame_mask": [True] + [not image] * 8, "latent_mask": [True] + [not image] * (LT - 1),
                     "image": image})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tensors


def test_dataset_serves_the_stored_latents(tmp_path: Path) -> None:
    tensors = write_latent_folder(tmp_path)
    ds = LatentDataset(str(tmp_path))
    assert len(ds) == NUM_VIDEOS + NUM_IMAGES and ds.latent_shape == (C, LT, LH, LH)
    item = ds[0]
    assert set(item) == {"latents", "frame_mask", "fps", "caption", "key"}
    torch.testing.assert_close(item["latents"], tensors["clip_00"])
    assert item["frame_mask"].tolist() == [True] * LT and item["fps"].item() == 8.0
    still = ds[NUM_VIDEOS]
    assert still["frame_mask"].tolist() == [True, False, False] and still["caption"] == f"caption {NUM_VIDEOS}"
    assert ds.is_image(NUM_VIDEOS) and not ds.is_image(0)


def test_datamodule_batches_and_image_ratio(tmp_path: Path) -> None:
    write_latent_folder(tmp_path / "train")
    write_latent_folder(tmp_path / "val", num_videos=3, num_images=0, seed=1)
    dm = LatentDataModule(root=str(tmp_path / "train"), batch_size=4, image_ratio=1.0, val_root=str(tmp_path / "val"))
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (4, C, LT, LH, LH) and batch["frame_mask"].shape == (4, LT)
    assert batch["frame_mask"].dtype == torch.bool and len(batch["caption"]) == 4
    assert all(k.startswith("image") for k in batch["key"]), "image_ratio=1 draws stills only"
    dm0 = LatentDataModule(root=str(tmp_path / "train"), batch_size=4, image_ratio=0.0)
    keys = [k for b in dm0.train_dataloader() for k in b["key"]]
    assert keys and all(k.startswith("clip") for k in keys)
    val = list(dm.val_dataloader())
    assert [k for b in val for k in b["key"]] == ["clip_00", "clip_01", "clip_02"]
    assert LatentDataModule(root=str(tmp_path / "train")).val_dataloader() == []


def test_bad_folders_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing.*tools/encode_latents\.py"):
        LatentDataset(str(tmp_path / "nothing"))
    root = tmp_path / "broken"
    write_latent_folder(root)
    lines = (root / "index.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    del row["caption"]
    lines[2] = json.dumps(row)
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"index\.jsonl:3: missing key\(s\) \['caption'\]"):
        LatentDataset(str(root))
    root2 = tmp_path / "wrong_shape"
    write_latent_folder(root2)
    torch.save(torch.zeros(C, LT, 2, 2), root2 / "latents" / "clip_01.pt")
    with pytest.raises(ValueError, match=r"clip_01\.pt.*\(4, 3, 4, 4\)"):
        LatentDataset(str(root2))[1]


# ---- training the diffusion model from latents ----------------------------------------------------------


def tiny_vae() -> CausalVAE3D:
    torch.manual_seed(0)
    return CausalVAE3D(base_channels=8, channel_mult=(1, 2, 2), temporal_downsample=(True, True, False),
                       latent_channels=C).eval()


def tiny_diffusion(first_stage: CausalVAE3D, **kwargs) -> LatentDiffusion:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16)
    unet = UNet3D(in_channels=C, out_channels=C, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(1,), head_dim=16, context_dim=32, norm_groups=4)
    return LatentDiffusion(unet, text, first_stage=first_stage, **kwargs)


def test_latent_batches_give_the_same_loss_as_encoding_online() -> None:
    import numpy as np

    vae = tiny_vae()
    model = tiny_diffusion(vae, caption_dropout=0.0)
    rng = np.random.default_rng(0)
    combos = [("red", "circle", "left"), ("blue", "square", "up"), ("green", "triangle", "right")]
    video = torch.stack([from_uint8(render_clip(*c, num_frames=9, size=16, rng=rng)) for c in combos])
    frame_mask = torch.ones(3, 9, dtype=torch.bool)
    frame_mask[2, 1:] = False  # a still
    base = {"caption": [video_caption(*c) for c in combos], "fps": torch.tensor([8.0, 8.0, 0.0])}
    online = {**base, "video": video, "frame_mask": frame_mask}
    with torch.no_grad():
        pre = {**base, "latents": vae.encode(video), "frame_mask": vae.latent_mask(frame_mask)}
    assert pre["frame_mask"].tolist()[2] == [True, False, False]
    t = torch.tensor([0.2, 0.5, 0.8])

    def loss(batch: dict) -> torch.Tensor:
        # no generator: the online path then encodes the posterior mean, as the pre-encoded latents are
        torch.manual_seed(7)
        return model.diffusion_loss(batch, t=t)

    torch.testing.assert_close(loss(pre), loss(online))
    assert not torch.allclose(loss({**pre, "latents": pre["latents"] * 1.5}), loss(online))
    with pytest.raises(ValueError, match="latent"):
        loss({**pre, "latents": pre["latents"][:, :2]})


def test_latent_datamodule_trains_latent_diffusion(tmp_path: Path) -> None:
    write_latent_folder(tmp_path / "train")
    write_latent_folder(tmp_path / "val", num_videos=2, num_images=0, seed=1)
    model = tiny_diffusion(tiny_vae(), lr=1e-3, warmup_steps=1)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    dm = LatentDataModule(root=str(tmp_path / "train"), batch_size=4, image_ratio=0.25,
                          val_root=str(tmp_path / "val"))
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, val_check_interval=3,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    changed = [k for k, v in model.unet.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "the U-Net's parameters were updated"
