"""The video VAEs of latentvid/nn/diffusers_vae.py (Wan, LTX-Video) against their diffusers pipelines'
latent normalisation, on the tiny random pipeline folders of tests/tiny_video_folders.py."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from latentvid.nn.diffusers_vae import DiffusersWanVAE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind, factors, frames, size", [("wan", (4, 4, 4), 9, 16), ("wan22-5b", (4, 2, 8), 5, 32)])
def test_wan_vae_normalises_per_channel_like_wan_pipeline(tiny_video, kind, factors, frames, size):
    """Wan 2.1's VAE, and Wan 2.2's (residual, over 2 x 2 pixel patches: 12 input channels for RGB)."""
    from diffusers import AutoencoderKLWan

    folder = tiny_video(kind)
    ours = DiffusersWanVAE(str(folder))
    ref = AutoencoderKLWan.from_pretrained(str(folder / "vae")).eval()
    assert (ours.latent_channels, ours.temporal_factor, ours.spatial_factor) == factors
    video = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ours.encode(video)
    assert z.shape == (1, 4, 3, 4, 4)
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        raw = ref.encode(video).latent_dist.mode()
        torch.testing.assert_close(z, (raw - mean) / std, rtol=0, atol=1e-5)
        # WanPipeline's decode: latents / (1 / std) + mean
        want = ref.decode(z / (1.0 / std) + mean).sample
    torch.testing.assert_close(ours.decode(z), want, rtol=0, atol=1e-5)
    assert ours.latent_frames(17) == 1 + 16 // factors[1]
    assert not any("latents_" in k for k in ours.state_dict())  # from the config, not the checkpoint


def test_wan_vae_errors(tiny_video, tmp_path):
    folder = tiny_video("wan")
    bad = tmp_path / "bad"
    shutil.copytree(folder / "vae", bad / "vae")
    cfg = json.loads((bad / "vae" / "config.json").read_text())
    (bad / "vae" / "config.json").write_text(json.dumps({**cfg, "latents_std": [1.0, 1.0]}))
    with pytest.raises(ValueError, match=r"vae/config\.json: latents_std must list 4 values"):
        DiffusersWanVAE(str(bad))
    (bad / "vae" / "config.json").write_text(json.dumps({**cfg, "_class_name": "AutoencoderKLCogVideoX"}))
    with pytest.raises(ValueError, match="_class_name is 'AutoencoderKLCogVideoX', expected 'AutoencoderKLWan'"):
        DiffusersWanVAE(str(bad))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none" / "vae")):
        DiffusersWanVAE(str(tmp_path / "none"))
    with pytest.raises(ValueError, match="num_frames=6 does not fit"):
        DiffusersWanVAE(str(folder)).encode(torch.zeros(1, 3, 6, 16, 16))


def test_ltx_vae_normalises_like_ltx_pipeline(tiny_video):
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline

    from latentvid.nn.diffusers_vae import DiffusersLTXVideoVAE

    folder = tiny_video("ltx")
    ours = DiffusersLTXVideoVAE(str(folder))
    ref = AutoencoderKLLTXVideo.from_pretrained(str(folder / "vae")).eval()
    assert (ours.latent_channels, ours.temporal_factor, ours.spatial_factor) == (8, 4, 4)
    assert ref.latents_std.std() > 0  # the tiny folder's statistics are not the identity
    video = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ours.encode(video)
    with torch.no_grad():
        raw = ref.encode(video).latent_dist.mode()
        want_z = LTXPipeline._normalize_latents(raw, ref.latents_mean, ref.latents_std, ref.config.scaling_factor)
        torch.testing.assert_close(z, want_z, rtol=0, atol=1e-5)
        want = ref.decode(LTXPipeline._denormalize_latents(z, ref.latents_mean, ref.latents_std,
                                                           ref.config.scaling_factor)).sample
    torch.testing.assert_close(ours.decode(z), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="num_frames=8 does not fit"):
        ours.encode(torch.zeros(1, 3, 8, 16, 16))
