"""The floored Min-SNR weighting (``snr_loss_weight(..., floor=)``) and LatentDiffusion's ``snr_floor``.

Min-SNR-gamma alone weighs the x0 error of the noisiest levels by SNR -> 0; those are where the
shapes model decides its motion (README, "What the demo shows"). The floor keeps them at the
x0-space weight ``floor``. References here are the formula min(max(SNR, floor), gamma) applied to
the x0 error implied by a prediction error, computed through the conversions, not the weight code.
"""

from __future__ import annotations

import pytest
import torch

from latentvid.diffusion import prediction_to_x0, snr_loss_weight
from latentvid.diffusion.schedule import alpha_sigma

@pytest.mark.parametrize("target", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [5.0, None])
def test_floored_weight_is_clamped_snr_in_x0_space(target, gamma):
    # weight * |pred error|^2 == min(max(SNR, 1), gamma) * |implied x0 error|^2
    lam = torch.linspace(-9, 6, 7, dtype=torch.float64)
    a, s = alpha_sigma(lam)
    g = torch.Generator().manual_seed(5)
    z, pred, err = torch.randn(3, 7, 8, generator=g, dtype=torch.float64)
    dx0 = prediction_to_x0(pred + err, z, a, s, target) - prediction_to_x0(pred, z, a, s, target)
    w = snr_loss_weight(lam, target, gamma=gamma, floor=1.0)
    x0_weight = torch.maximum(lam.exp(), torch.ones_like(lam))
    if gamma is not None:
        x0_weight = torch.minimum(x0_weight, torch.full_like(lam, gamma))
    torch.testing.assert_close(w * err.pow(2).sum(1), x0_weight * dx0.pow(2).sum(1))


def test_floor_changes_only_the_noisy_levels():
    lam = torch.tensor([-6.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    plain_min_snr = snr_loss_weight(lam, "v", gamma=5.0)
    floored = snr_loss_weight(lam, "v", gamma=5.0, floor=1.0)
    assert torch.equal(floored[2:], plain_min_snr[2:])  # SNR >= 1: Min-SNR as before
    # SNR < 1: the v weight of the plain loss (1), not Min-SNR's SNR / (SNR + 1)
    torch.testing.assert_close(floored[:2] * (lam[:2].exp() + 1), torch.ones(2, dtype=torch.float64))
    assert (floored[:2] > 5 * plain_min_snr[:2]).all()


def test_latent_diffusion_loss_uses_the_floor():
    from latentvid.models.latent_diffusion import LatentDiffusion
    from latentvid.nn.unet3d import UNet3D

    class Tokens(torch.nn.Module):  # a fixed tiny "text tower"
        output_dim = 8

        def forward(self, captions):
            return torch.ones(len(captions), 2, 8), torch.ones(len(captions), 2, dtype=torch.bool)

    torch.manual_seed(0)
    unet = UNet3D(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1,), attention_levels=(),
                  head_dim=8, context_dim=8, norm_groups=4)
    batch = {"video": torch.rand(1, 3, 3, 8, 8) * 2 - 1, "caption": ["a"],
             "frame_mask": torch.ones(1, 3, dtype=torch.bool)}
    t = torch.tensor([0.9])  # logSNR about -4.4: SNR << 1
    losses = {}
    for floor in (None, 1.0):
        model = LatentDiffusion(unet=unet, text_encoder=Tokens(), min_snr_gamma=5.0, snr_floor=floor,
                                caption_dropout=0.0)
        losses[floor] = float(model.diffusion_loss(batch, generator=torch.Generator().manual_seed(1), t=t))
    # same noise, same prediction: the x0 weights are 1 (floored) and SNR (Min-SNR)
    snr = float(model.schedule.logsnr(t).exp())
    assert losses[1.0] / losses[None] == pytest.approx(1.0 / snr, rel=1e-4)
    assert losses[1.0] > 10 * losses[None]


def test_snr_floor_is_validated():
    from latentvid.models.latent_diffusion import LatentDiffusion

    with pytest.raises(ValueError, match="snr_floor"):
        LatentDiffusion(unet=torch.nn.Identity(), text_encoder=torch.nn.Identity(), min_snr_gamma=5.0, snr_floor=6.0)
