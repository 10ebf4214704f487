"""Tests of latentvid/nn/diffusers_vae.py against tiny random diffusers VAEs saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLCogVideoX

from latentvid.nn.diffusers_vae import DiffusersCogVideoXVAE, DiffusersImageVAE


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


@pytest.fixture(scope="module")
def image_vae_dir(tmp_path_factory) -> Path:
    """A pipeline-style folder with a tiny random AutoencoderKL in ``vae/`` (sf = 2, C = 4)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
        shift_factor=0.1,
    )
    root = tmp_path_factory.mktemp("sd")
    vae.save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="module")
def cogvideox_dir(tmp_path_factory) -> Path:
    """A tiny random AutoencoderKLCogVideoX saved as the folder itself (sf = 4, tf = 4, C = 4)."""
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16),
        down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_height=32,
        sample_width=32,
        scaling_factor=0.7,
    )
    root = tmp_path_factory.mktemp("cogvideox") / "vae"
    vae.save_pretrained(root)
    return root


def test_image_vae_equals_diffusers_per_frame(image_vae_dir: Path) -> None:
    adapter = DiffusersImageVAE(str(image_vae_dir), chunk_size=3)  # 2 * 5 frames -> 4 calls
    reference = AutoencoderKL.from_pretrained(image_vae_dir / "vae").eval()
    assert (adapter.latent_channels, adapter.spatial_factor, adapter.temporal_factor) == (4, 2, 1)
    assert (adapter.scale, adapter.shift) == (0.5, 0.1)
    torch.manual_seed(1)
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    z = adapter.encode(video)
    assert z.shape == (2, 4, 5, 8, 8)
    with torch.no_grad():
        for b in range(2):
            for t in range(5):
                raw = reference.encode(video[b : b + 1, :, t]).latent_dist.mode()
                torch.testing.assert_close(z[b : b + 1, :, t], (raw - 0.1) * 0.5, atol=1e-5, rtol=1e-5)
        decoded = adapter.decode(z)
        assert decoded.shape == video.shape
        frame = reference.decode(z[1:2, :, 3] / 0.5 + 0.1).sample
        torch.testing.assert_close(decoded[1:2, :, 3], frame, atol=1e-5, rtol=1e-5)


def test_image_vae_overrides_sampling_and_frozen(image_vae_dir: Path) -> None:
    adapter = DiffusersImageVAE(str(image_vae_dir / "vae"), subfolder=None, scale=2.0, shift=0.0)
    reference = AutoencoderKL.from_pretrained(image_vae_dir / "vae").eval()
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = reference.encode(video[:, :, 0]).latent_dist
    torch.testing.assert_close(adapter.encode(video)[:, :, 0], raw.mode() * 2.0, atol=1e-5, rtol=1e-5)
    # a generator draws posterior samples, reproducibly, as diffusers' own sample() does
    first = adapter.encode(video[:, :, :1], torch.Generator().manual_seed(5))
    torch.testing.assert_close(first[:, :, 0], raw.sample(torch.Generator().manual_seed(5)) * 2.0, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first[:, :, 0], raw.mode() * 2.0)
    adapter.train()
    assert not adapter.vae.training
    assert not any(p.requires_grad for p in adapter.parameters())


def test_cogvideox_equals_diffusers(cogvideox_dir: Path) -> None:
    adapter = DiffusersCogVideoXVAE(str(cogvideox_dir), subfolder=None)
    reference = AutoencoderKLCogVideoX.from_pretrained(cogvideox_dir).eval()
    assert (adapter.latent_channels, adapter.spatial_factor, adapter.temporal_factor) == (4, 4, 4)
    torch.manual_seed(2)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    z = adapter.encode(video)
    assert z.shape == (1, 4, 3, 4, 4) and z.shape[2] == adapter.latent_frames(9)
    with torch.no_grad():
        torch.testing.assert_close(z, reference.encode(video).latent_dist.mode() * 0.7, atol=1e-5, rtol=1e-5)
        decoded = adapter.decode(z)
        torch.testing.assert_close(decoded, reference.decode(z / 0.7).sample, atol=1e-5, rtol=1e-5)
    assert decoded.shape == video.shape
    image = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    assert adapter.encode(image).shape == (2, 4, 1, 4, 4)
    assert adapter.decode(adapter.encode(image)).shape == image.shape


def test_cogvideox_rejects_frame_counts_it_cannot_round_trip(cogvideox_dir: Path) -> None:
    adapter = DiffusersCogVideoXVAE(str(cogvideox_dir), subfolder=None)
    with pytest.raises(ValueError, match="num_frames=5"):
        adapter.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ValueError, match="odd number of latent frames"):
        adapter.decode(torch.zeros(1, 4, 2, 4, 4))


@pytest.mark.parametrize("adapter", [DiffusersImageVAE, DiffusersCogVideoXVAE])
def test_missing_folder_names_the_path(adapter, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match=str(missing / "vae")) as info:
        adapter(str(missing))
    assert "config.json" in str(info.value) and "huggingface-cli download" in str(info.value)
