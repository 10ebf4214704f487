"""Tests of latentvid/models/autoencoder_losses.py: each loss against an independent reference
(torch.distributions, numpy, closed forms, a functional re-implementation of LPIPS)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from latentvid.models.autoencoder_losses import (
    PerceptualLoss,
    adaptive_weight,
    decoder_last_layer,
    frame_psnr_ssim,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    reconstruction_loss,
)
from latentvid.nn.discriminator import PatchDiscriminator3D
from latentvid.nn.gaussian_autoencoder import DiagonalGaussian
from latentvid.nn.vae3d import CausalVAE3D

T, SIZE = 5, 16

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


def random_video(b: int = 2, t: int = T, seed: int = 0) -> torch.Tensor:
    """Uniform in [-1, 1], (b, 3, t, SIZE, SIZE)."""
    return torch.rand(b, 3, t, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_kl_term_equals_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 3, 4, 4, generator=g), torch.randn(3, 4, 3, 4, 4, generator=g)
    posterior = DiagonalGaussian(mean, logvar)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mean), torch.ones_like(mean)))
    full = torch.ones(3, 3, dtype=torch.bool)
    torch.testing.assert_close(kl_loss(posterior, full), ref.mean())
    # masked latent frames: each sample averages its valid frames, then samples are averaged
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    per_sample = [ref[i][:, mask[i]].mean() for i in range(3)]
    torch.testing.assert_close(kl_loss(posterior, mask), torch.stack(per_sample).mean())


def test_reconstruction_loss_ignores_padding_and_matches_numpy() -> None:
    x, y = random_video(seed=1), random_video(seed=2)
    mask = torch.tensor([[True] * T, [True] + [False] * (T - 1)])
    xn, yn = x.numpy(), y.numpy()
    ref_l1 = np.mean([np.abs(xn[0] - yn[0]).mean(), np.abs(xn[1][:, :1] - yn[1][:, :1]).mean()])
    ref_l2 = np.mean([((xn[0] - yn[0]) ** 2).mean(), ((xn[1][:, :1] - yn[1][:, :1]) ** 2).mean()])
    assert reconstruction_loss(x, y, mask, "l1").item() == pytest.approx(ref_l1, rel=1e-5)
    assert reconstruction_loss(x, y, mask, "l2").item() == pytest.approx(ref_l2, rel=1e-5)
    y2 = y.clone()
    y2[1, :, 1:] = float("nan")  # padding frames may hold anything
    assert reconstruction_loss(x, y2, mask, "l1").item() == pytest.approx(ref_l1, rel=1e-5)
    with pytest.raises(ValueError, match="recon_loss"):
        reconstruction_loss(x, y, mask, "huber")


def test_hinge_losses_closed_form() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 1.5] -> mean 5/6
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 5 / 6))
    assert hinge_g_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 0.5) / 3)


def test_psnr_matches_closed_form() -> None:
    x = random_video(seed=3)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, T, dtype=torch.bool)
    psnr, ssim = frame_psnr_ssim(noisy, x, mask)
    mse = ((noisy.clamp(-1, 1) - x) ** 2).mean().item()
    assert psnr.item() == pytest.approx(10 * math.log10(4.0 / mse), rel=1e-4)
    assert frame_psnr_ssim(x, x, mask)[1].item() == pytest.approx(1.0, abs=1e-5)
    assert 0 < ssim.item() < 1


def test_adaptive_weight_equals_gradient_norm_ratio() -> None:
    torch.manual_seed(0)
    vae = CausalVAE3D(base_channels=8, channel_mult=(1, 2), temporal_downsample=(True, False))
    torch.manual_seed(1)
    disc = PatchDiscriminator3D(base_channels=8, num_layers=2)
    video = random_video()
    recon, _ = vae(video, sample_posterior=False)
    nll = (recon - video).abs().mean()
    g_loss = hinge_g_loss(disc(recon))
    last = decoder_last_layer(vae)
    ours = adaptive_weight(nll, g_loss, last)

    # reference: two separate backward passes, reading .grad of the decoder's final conv
    grads = []
    for make_loss in (lambda r: (r - video).abs().mean(), lambda r: -disc(r).mean()):
        vae.zero_grad()
        make_loss(vae(video, sample_posterior=False)[0]).backward()
        grads.append(vae.decoder[-1].conv.weight.grad.clone())
    ref = grads[0].norm() / (grads[1].norm() + 1e-4)
    torch.testing.assert_close(ours, ref.clamp(0, 1e4))
    assert not ours.requires_grad
    assert last is vae.decoder[-1].conv.weight


# ---- perceptual loss ---------------------------------------------------------------------------------


def _reference_lpips(state: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent recomputation with functional ops: VGG16 convs read straight from the state dict,
    activations taken after the last ReLU of each of the five blocks (relu1_2 ... relu5_3)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    a, b = ((x + 1) / 2 - mean) / std, ((y + 1) / 2 - mean) / std
    total, block = torch.zeros(x.shape[0]), 0
    convs = sorted(int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight"))
    for index, following in zip(convs, convs[1:] + [None]):
        weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
        a, b = F.relu(F.conv2d(a, weight, bias, padding=1)), F.relu(F.conv2d(b, weight, bias, padding=1))
        if following is not None and following - index == 2:  # torchvision numbers conv, relu (, pool)
            continue
        na = a / (a.norm(dim=1, keepdim=True) + 1e-10)  # end of a block: its LPIPS term
        nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        w = state[f"lin{block}.model.1.weight"].view(1, -1, 1, 1)
        total += ((na - nb) ** 2 * w).sum(1).mean((1, 2))
        block += 1
        if following is not None:
            a, b = F.max_pool2d(a, 2), F.max_pool2d(b, 2)
    assert block == 5
    return total


def test_perceptual_loss_loads_local_weights_and_matches_reference(vgg_file) -> None:
    path, state = vgg_file
    loss = PerceptualLoss(str(path))
    assert not any(p.requires_grad for p in loss.parameters())
    x, y = random_video(b=2, seed=5), random_video(b=2, seed=6)
    mask = torch.tensor([[True] * T, [True, True, False, False, False]])
    frames_x = torch.cat([x[0].transpose(0, 1), x[1, :, :2].transpose(0, 1)])  # (7, 3, H, W) valid frames
    frames_y = torch.cat([y[0].transpose(0, 1), y[1, :, :2].transpose(0, 1)])
    with torch.no_grad():
        ref = _reference_lpips(state, frames_x, frames_y)
        assert (ref > 0).all()
        torch.testing.assert_close(loss.frame_distance(frames_x, frames_y), ref, rtol=1e-4, atol=1e-6)
        expected = torch.stack([ref[:T].mean(), ref[T:].mean()]).mean()
        torch.testing.assert_close(loss(x, y, mask), expected, rtol=1e-4, atol=1e-6)
        assert loss(x, x, mask).item() == pytest.approx(0.0, abs=1e-6)
    # the gradient reaches the reconstruction
    xr = x.clone().requires_grad_(True)
    loss(xr, y, mask).backward()
    assert xr.grad.abs().sum() > 0 and xr.grad[1, :, 2:].abs().sum() == 0  # masked frames get none


def test_perceptual_loss_errors_name_the_file(tmp_path: Path, vgg_file) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        PerceptualLoss(str(tmp_path / "nowhere.pth"))
    bad = tmp_path / "bad.pth"
    state = dict(vgg_file[1])
    state["lin2.model.1.weight"] = torch.ones(1, 3, 1, 1)
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*lin2"):
        PerceptualLoss(str(bad))
    del state["features.28.weight"]
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*features"):
        PerceptualLoss(str(bad))
