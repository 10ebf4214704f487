import math

import numpy as np
import pytest
import torch

from latentvid.diffusion.schedule import (
    CosineSchedule,
    LinearLogSNRSchedule,
    alpha_sigma,
    cosine_logsnr,
    cosine_t_from_logsnr,
    linear_logsnr,
    logsnr_from_alpha_sigma,
    time_grid,
)

T = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)


def test_cosine_matches_closed_form_in_the_interior():
    # With a very wide range, t_min ~ 0 and t_max ~ 1, so logSNR = -2 log tan(pi t / 2) (numpy reference).
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    ours = cosine_logsnr(t, logsnr_min=-60.0, logsnr_max=60.0)
    ref = -2.0 * np.log(np.tan(np.pi * t.numpy() / 2.0))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-9)
    # ...and then alpha = cos(pi t / 2), sigma = sin(pi t / 2): the cosine schedule's defining property.
    a, s = alpha_sigma(ours)
    np.testing.assert_allclose(a.numpy(), np.cos(np.pi * t.numpy() / 2), atol=1e-9)
    np.testing.assert_allclose(s.numpy(), np.sin(np.pi * t.numpy() / 2), atol=1e-9)


def test_cosine_endpoints_hit_the_configured_range():
    lam = cosine_logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64), logsnr_min=-15.0, logsnr_max=12.0)
    np.testing.assert_allclose(lam.numpy(), [12.0, -15.0], atol=1e-9)


@pytest.mark.parametrize("schedule", [CosineSchedule(), CosineSchedule(shift=0.25), LinearLogSNRSchedule()])
def test_variance_preserving_and_monotone(schedule):
    lam = schedule.logsnr(T)
    a, s = alpha_sigma(lam)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), atol=1e-12, rtol=0)
    assert bool((lam[1:] < lam[:-1]).all()), "logSNR must decrease strictly in t"
    torch.testing.assert_close(logsnr_from_alpha_sigma(a, s), lam, atol=1e-8, rtol=1e-8)


def test_alpha_sigma_limits_are_exact():
    a, s = alpha_sigma(torch.tensor([math.inf, -math.inf]))
    assert a.tolist() == [1.0, 0.0] and s.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("shift", [0.25, 0.5, 2.0])
def test_shift_adds_two_log_shift(shift):
    base = cosine_logsnr(T)
    shifted = cosine_logsnr(T, shift=shift)
    torch.testing.assert_close(shifted - base, torch.full_like(T, 2 * math.log(shift)), atol=1e-9, rtol=0)
    # shift < 1 means noisier (lower SNR) at every t
    snr_ratio = (shifted - base).exp()
    torch.testing.assert_close(snr_ratio, torch.full_like(T, shift**2), atol=1e-9, rtol=0)


@pytest.mark.parametrize("shift", [1.0, 0.5])
def test_cosine_inverse(shift):
    t = torch.linspace(0.0, 1.0, 33, dtype=torch.float64)
    back = cosine_t_from_logsnr(cosine_logsnr(t, shift=shift), shift=shift)
    torch.testing.assert_close(back, t, atol=1e-9, rtol=0)


def test_linear_logsnr_closed_form():
    torch.testing.assert_close(linear_logsnr(T, -8.0, 6.0), 6.0 - 14.0 * T)


def test_sampling_grid():
    grid = time_grid(4)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    lam = CosineSchedule().sampling_logsnrs(10)
    assert lam.shape == (11,) and math.isinf(lam[-1]) and bool((lam[1:] > lam[:-1]).all())
    with pytest.raises(ValueError):
        time_grid(0)
