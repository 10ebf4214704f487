"""DiscreteSchedule with CogVideoX's settings (snr_shift_scale, rescale_betas_zero_snr) against diffusers'
CogVideoXDDIMScheduler: the table, the zero-SNR last segment, and the logSNR <-> timestep maps."""

from __future__ import annotations

import math

import pytest
import torch

from latentvid.diffusion import SAMPLERS
from latentvid.diffusion.discrete import DiscreteSchedule

COGVIDEOX = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", snr_shift_scale=3.0,
                 rescale_betas_zero_snr=True, prediction_type="v_prediction")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from diffusers import CogVideoXDDIMScheduler

    folder = tmp_path_factory.mktemp("cogvideox_sched")
    CogVideoXDDIMScheduler(**COGVIDEOX, timestep_spacing="trailing", clip_sample=False).save_pretrained(
        folder / "scheduler")
    ref = CogVideoXDDIMScheduler.from_pretrained(str(folder / "scheduler"))
    return DiscreteSchedule(pretrained=str(folder)), ref


def test_table_equals_cogvideox_scheduler(pair):
    ours, ref = pair
    assert (ours.snr_shift_scale, ours.rescale_betas_zero_snr, ours.prediction_type) == (3.0, True, "v")
    torch.testing.assert_close(ours.alphas_cumprod(), ref.alphas_cumprod.double(), rtol=1e-6, atol=1e-9)
    lam = ours.train_logsnrs()
    assert math.isinf(lam[-1]) and lam[-1] < 0 and bool(torch.isfinite(lam[:-1]).all())
    shifted = DiscreteSchedule(**{**COGVIDEOX, "rescale_betas_zero_snr": False})
    plain = DiscreteSchedule(**{**COGVIDEOX, "rescale_betas_zero_snr": False, "snr_shift_scale": 1.0})
    torch.testing.assert_close(shifted.train_logsnrs(), plain.train_logsnrs() - math.log(3.0))  # SNR / 3


def test_logsnr_and_timestep_are_inverse_through_the_zero_snr_segment(pair):
    ours, _ = pair
    n = ours.num_train_timesteps
    steps = torch.tensor([0.0, 1.0, 500.0, 997.0, 998.0, 998.25, 998.5, 998.9, 999.0], dtype=torch.float64)
    lam = ours.logsnr(steps / (n - 1))
    torch.testing.assert_close(ours.timestep(lam), steps, rtol=0, atol=1e-9)
    torch.testing.assert_close(lam[:5], ours.train_logsnrs()[steps[:5].long()])  # training timesteps exactly
    assert math.isinf(lam[-1]) and bool((lam[1:] < lam[:-1]).all())
    alpha = torch.sigmoid(lam).sqrt()
    a998 = alpha[4]
    torch.testing.assert_close(alpha[5:], a998 * torch.tensor([0.75, 0.5, 0.1, 0.0], dtype=torch.float64))


def test_every_sampler_and_spacing_gives_a_usable_grid(pair):
    ours, _ = pair
    for spacing in ("time", "logsnr", "karras"):
        grid = ours.sampling_logsnrs(6, spacing=spacing)
        assert grid.shape == (7,) and bool((grid[1:] > grid[:-1]).all()) and math.isinf(grid[-1]), spacing
        assert not bool(torch.isnan(grid).any())
    assert math.isinf(ours.sampling_logsnrs(6)[0])  # "time" starts at zero SNR, as trailing DDIM does
    # x0 = 0 data: the exact denoiser returns 0, so every sampler must land on 0 from any noise
    z = torch.randn(2, 3)
    for name, sampler in SAMPLERS.items():
        out = sampler(lambda z, lam: torch.zeros_like(z), z, ours.sampling_logsnrs(4), alpha_sigma=ours.alpha_sigma)
        assert torch.isfinite(out).all() and out.abs().max() < 1e-5, name
