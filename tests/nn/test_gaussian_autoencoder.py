"""Tests of latentvid/nn/gaussian_autoencoder.py: the diagonal Gaussian posterior's KL, sample, mode, clamp.

The latent scale / shift of ``GaussianAutoencoder`` is tested through ``CausalVAE3D`` in test_vae3d.py.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence

from latentvid.nn.gaussian_autoencoder import DiagonalGaussian


def test_kl_matches_torch_distributions() -> None:
    torch.manual_seed(8)
    mean, logvar = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    ours = DiagonalGaussian(mean, logvar).kl()
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(dim=1)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, ref)


def test_posterior_sample_mode_and_clamp() -> None:
    torch.manual_seed(9)
    mean, logvar = torch.randn(2, 4, 1, 3, 3), torch.randn(2, 4, 1, 3, 3)
    logvar[0, 0] = 50.0  # clamped to 20
    posterior = DiagonalGaussian.from_moments(torch.cat([mean, logvar], dim=1))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(11))
    expected = mean + torch.exp(0.5 * logvar.clamp(max=20.0)) * eps
    torch.testing.assert_close(posterior.sample(torch.Generator().manual_seed(11)), expected)
    assert torch.equal(posterior.mode(), mean)
    torch.testing.assert_close(posterior.std[0, 0], torch.full((1, 3, 3), math.exp(10.0)))
