"""Conditioning augmentation: the noised conditioning has the closed-form statistics of the cosine
schedule at level s, and the random levels follow the configured distributions (KS tests)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from latentvid.diffusion.augmentation import ConditioningAugmentation, augment, draw_levels, invert_monotone
from latentvid.diffusion.schedule import CosineSchedule, cosine_t_from_logsnr


def cosine_alpha_sigma_reference(s: np.ndarray, logsnr_min: float = -20.0, logsnr_max: float = 20.0):
    """alpha = cos(pi t'/2), sigma = sin(pi t'/2) with t' the affine map of s onto [t_min, t_max]
    (the cosine schedule written directly, without logSNR or sigmoids)."""
    t_min = 2 / math.pi * math.atan(math.exp(-0.5 * logsnr_max))
    t_max = 2 / math.pi * math.atan(math.exp(-0.5 * logsnr_min))
    tt = t_min + s * (t_max - t_min)
    return np.cos(0.5 * math.pi * tt), np.sin(0.5 * math.pi * tt)


def test_noised_conditioning_has_the_moments_of_alpha_and_sigma_at_s():
    schedule = CosineSchedule()
    s = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
    levels = schedule.logsnr(s)
    g = torch.Generator().manual_seed(0)
    cond = torch.linspace(-0.9, 0.9, 6)[:, None, None].expand(6, 3, 20000).contiguous()  # (B, C, N), constant per sample
    noisy = augment(cond, levels, torch.randn(cond.shape, generator=g))
    alpha, sigma = cosine_alpha_sigma_reference(s.numpy().astype(np.float64))
    mean = noisy.mean(dim=(1, 2)).numpy()
    std = noisy.std(dim=(1, 2)).numpy()
    n = cond[0].numel()
    # mean: alpha * c within 5 standard errors; std: sigma within 2 %
    np.testing.assert_allclose(mean, alpha * cond[:, 0, 0].numpy(), atol=float(5 * sigma.max() / math.sqrt(n)))
    np.testing.assert_allclose(std, sigma, rtol=0.02, atol=1e-4)
    assert std[0] < 1e-4 and abs(mean[-1]) < 0.02  # s = 0: clean; s = 1: (almost) pure noise


def test_infinite_logsnr_leaves_the_conditioning_untouched_and_shapes_are_checked():
    cond = torch.randn(2, 3, 4, 8, 8)
    out = augment(cond, torch.full((2,), math.inf), torch.randn_like(cond))
    torch.testing.assert_close(out, cond, rtol=0, atol=0)
    with pytest.raises(ValueError, match="logsnr"):
        augment(cond, torch.zeros(3), torch.randn_like(cond))


def test_uniform_levels_follow_the_configured_range():
    g = torch.Generator().manual_seed(1)
    s = draw_levels(4000, 0.1, 0.4, "uniform", generator=g)
    assert s.min() >= 0.1 and s.max() <= 0.4
    assert stats.kstest(s.numpy(), stats.uniform(loc=0.1, scale=0.3).cdf).pvalue > 0.01
    again = draw_levels(4000, 0.1, 0.4, "uniform", generator=torch.Generator().manual_seed(1))
    assert torch.equal(s, again)
    # guard: the same check rejects a different range
    assert stats.kstest(s.numpy(), stats.uniform(loc=0.0, scale=0.5).cdf).pvalue < 1e-6


def test_logsnr_uniform_levels_are_uniform_in_logsnr():
    schedule = CosineSchedule()
    g = torch.Generator().manual_seed(2)
    s = draw_levels(4000, 0.05, 0.6, "logsnr_uniform", logsnr_fn=schedule.logsnr, generator=g)
    lam = schedule.logsnr(s.double()).numpy()
    lo, hi = float(schedule.logsnr(torch.tensor(0.6))), float(schedule.logsnr(torch.tensor(0.05)))
    assert stats.kstest(lam, stats.uniform(loc=lo, scale=hi - lo).cdf).pvalue > 0.01
    # and therefore not uniform in s
    assert stats.kstest(s.numpy(), stats.uniform(loc=0.05, scale=0.55).cdf).pvalue < 1e-6


def test_bisection_inverts_the_cosine_schedule_like_its_closed_form_inverse():
    schedule = CosineSchedule(shift=0.5)
    lam = torch.linspace(-8, 12, 50, dtype=torch.float64)
    ours = invert_monotone(schedule.logsnr, lam, 0.0, 1.0)
    ref = cosine_t_from_logsnr(lam, shift=0.5)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=0)


def test_config_is_validated():
    with pytest.raises(ValueError, match="train_min"):
        ConditioningAugmentation(train_min=0.6, train_max=0.5)
    with pytest.raises(ValueError, match="distribution"):
        ConditioningAugmentation(distribution="gaussian")
    with pytest.raises(ValueError, match="sample_level"):
        ConditioningAugmentation(sample_level=1.5)
    aug = ConditioningAugmentation(train_min=0.2, train_max=0.2)
    assert torch.equal(aug.training_levels(5, CosineSchedule().logsnr), torch.full((5,), 0.2))


def test_augment_follows_the_stage_process():
    from latentvid.diffusion.schedule import RectifiedFlowSchedule

    g = torch.Generator().manual_seed(0)
    cond, noise = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 4, 4, generator=g)
    sched = RectifiedFlowSchedule(logsnr_min=-30.0, logsnr_max=30.0)
    s = torch.tensor([0.1, 0.6])
    out = augment(cond, sched.logsnr(s), noise, sched.alpha_sigma)
    ss = s[:, None, None, None, None]
    torch.testing.assert_close(out, (1 - ss) * cond + ss * noise, atol=1e-5, rtol=0)
