"""Tests of latentvid/nn/video_decoder.py (Video LDM's temporal decoder) against diffusers' AutoencoderKL."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import AutoencoderKL

from latentvid.data.shapes import generate_shapes_dataset
from latentvid.models.autoencoder import AutoencoderModule, PretrainedCausalVAE
from latentvid.nn.video_decoder import TemporalDecoderVAE


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


@pytest.fixture(scope="module")
def sd_dir(tiny_sd) -> Path:
    return tiny_sd("sd1")


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply an image function to every frame of (B, C, T, H, W)."""
    return torch.stack([fn(x[:, :, i]) for i in range(x.shape[2])], dim=2)


def _randomise_temporal(vae: TemporalDecoderVAE, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.temporal_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_at_initialisation_it_is_the_image_vae_per_frame(sd_dir: Path) -> None:
    ours = TemporalDecoderVAE(str(sd_dir)).eval()
    ref = AutoencoderKL.from_pretrained(str(sd_dir / "vae")).eval()
    x = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = ours.encode_posterior(x)
        mean = _per_frame(lambda f: ref.encode(f).latent_dist.mean, x)
        torch.testing.assert_close(posterior.mean, mean, atol=1e-5, rtol=0)
        z = ours.encode(x)  # scaled with the config's scaling_factor
        torch.testing.assert_close(z, mean * ref.config.scaling_factor, atol=1e-5, rtol=0)
        decoded = _per_frame(lambda f: ref.decode(f).sample, posterior.mean)
        torch.testing.assert_close(ours.decode_raw(posterior.mean), decoded, atol=1e-5, rtol=0)
    assert (ours.spatial_factor, ours.temporal_factor, ours.latent_channels) == (2, 1, 4)


def test_temporal_layers_are_causal_and_mix_frames(sd_dir: Path) -> None:
    vae = TemporalDecoderVAE(str(sd_dir)).eval()
    _randomise_temporal(vae)
    z = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = vae.decode_raw(z)
        z2 = z.clone()
        z2[:, :, 3:] = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
        y2 = vae.decode_raw(z2)
        torch.testing.assert_close(y2[:, :, :3], y[:, :, :3], atol=1e-6, rtol=0)  # the past ignores the future
        z3 = z.clone()
        z3[:, :, 1] += 1.0  # change one latent frame: later frames change too (time is mixed)
        y3 = vae.decode_raw(z3)
    assert (y3[:, :, 2:] - y[:, :, 2:]).abs().amax() > 1e-3
    torch.testing.assert_close(y3[:, :, :1], y[:, :, :1], atol=1e-6, rtol=0)


def test_only_temporal_layers_train_by_default(sd_dir: Path) -> None:
    vae = TemporalDecoderVAE(str(sd_dir))
    trainable = {n for n, p in vae.named_parameters() if p.requires_grad}
    temporal = {n for n, p in vae.named_parameters() if any(p is q for q in vae.temporal_parameters())}
    assert trainable == temporal and temporal
    everything = TemporalDecoderVAE(str(sd_dir), train_spatial_decoder=True)
    names = {n for n, p in everything.named_parameters() if p.requires_grad}
    assert any(n.startswith("decoder.decoder.conv_out") for n in names)
    assert not any(n.startswith("encoder.") for n in names)  # the encoder stays frozen


def test_video_ldm_recipe_trains_temporal_decoder_only_and_loads_as_first_stage(sd_dir: Path, tmp_path: Path) -> None:
    from latentvid.data.datamodule import ShapesDataModule

    root = tmp_path / "shapes"
    generate_shapes_dataset(root, seed=0, clips_per_combo=1, num_frames=4, size=16, images_per_combo=1,
                            heldout_clips_per_combo=1)
    vae = TemporalDecoderVAE(str(sd_dir), train_spatial_decoder=True)
    before = copy.deepcopy(vae.state_dict())
    module = AutoencoderModule(vae, freeze_encoder=True, recon_loss="l2", lr=1e-3, scale_batches=0, log_videos=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, ShapesDataModule(root=str(root), num_frames=4, size=16, batch_size=2, clips_per_combo=1))
    after = vae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed), sorted(changed)[:5]
    assert any(".temporal." in k for k in changed)
    assert float(vae.scale) == pytest.approx(AutoencoderKL.load_config(str(sd_dir / "vae"))["scaling_factor"])

    # a checkpoint of that run rebuilds as a frozen first stage for the diffusion model
    ckpt = tmp_path / "videoldm.ckpt"
    torch.save({"hyper_parameters": {"vae": {"class_path": "latentvid.nn.video_decoder.TemporalDecoderVAE",
                                            "init_args": {"path": str(sd_dir)}}},
                "state_dict": {f"vae.{k}": v for k, v in after.items()}}, ckpt)
    first_stage = PretrainedCausalVAE(str(ckpt))
    z = torch.randn(1, 4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(first_stage.decode(z), vae.eval().decode(z))


def test_missing_folder_says_what_to_put_there(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        TemporalDecoderVAE(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_recipe_runs_through_the_cli(sd_dir: Path, tmp_path: Path) -> None:
    """configs/vae-videoldm.yaml with only the SD path (and a tiny run) changed trains and checkpoints."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, str(root / "tools" / "fit.py"), "-c", str(root / "configs" / "vae-videoldm.yaml"),
         "--model.init_args.vae.init_args.path", str(sd_dir), "--trainer.max_steps", "2",
         "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
         "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.callbacks.dirpath", str(tmp_path / "ckpt"),
         "--trainer.callbacks.every_n_train_steps", "2",
         "--data.init_args.root", str(tmp_path / "shapes"), "--data.init_args.size", "16",
         "--data.init_args.num_frames", "4", "--data.init_args.clips_per_combo", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    first_stage = PretrainedCausalVAE(str(tmp_path / "ckpt" / "last.ckpt"))
    assert first_stage.latent_channels == 4 and first_stage.spatial_factor == 2
