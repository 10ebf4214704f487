"""Training-time densities against scipy's distributions and SD3's formulas."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from latentvid.diffusion.time_sampling import TimeSampling, logit_normal_times, mode_times, stratified_uniform


def test_stratified_uniform_covers_every_stratum_once():
    u = stratified_uniform(8, torch.Generator().manual_seed(0))
    assert sorted(int(x) for x in (u * 8).floor()) == list(range(8))


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (-0.5, 0.7)])
def test_logit_normal_matches_scipy(loc, scale):
    t = TimeSampling("logit_normal", loc=loc, scale=scale).sample(4096, torch.Generator().manual_seed(1))
    logit = np.log(t.numpy() / (1 - t.numpy()))
    assert stats.kstest(logit, stats.norm(loc, scale).cdf).pvalue > 0.01
    # the inverse CDF itself, pointwise
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    expected = 1 / (1 + np.exp(-(loc + scale * stats.norm.ppf(u.numpy()))))
    np.testing.assert_allclose(logit_normal_times(u, loc, scale).numpy(), expected, rtol=1e-10)


def test_logit_normal_is_not_uniform():
    # guard for the KS test above: uniform times fail it
    t = TimeSampling("uniform").sample(4096, torch.Generator().manual_seed(1)).clamp(1e-6, 1 - 1e-6).numpy()
    assert stats.kstest(np.log(t / (1 - t)), stats.norm(0, 1).cdf).pvalue < 1e-6


def test_mode_density_is_sd3s():
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = 1.29
    ref = 1 - u - s * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
    torch.testing.assert_close(mode_times(u, s), ref)
    t = mode_times(u, s)
    assert t[0] == 1.0 and abs(float(t[-1])) < 1e-12 and bool((t[1:] < t[:-1]).all())  # monotone onto [0, 1]
    torch.testing.assert_close(mode_times(u, 0.0), 1 - u)  # s = 0: uniform
    draws = TimeSampling("mode", mode_scale=s).sample(4096, torch.Generator().manual_seed(2))
    in_middle = ((draws > 0.25) & (draws < 0.75)).float().mean().item()
    assert in_middle > 0.6  # s > 0 concentrates on the middle (uniform: 0.5)


def test_uniform_is_the_previous_stratified_draw():
    # keeps existing training runs identical: one scalar from the generator, n evenly spaced offsets
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    u = torch.rand((), generator=g1)
    torch.testing.assert_close(TimeSampling().sample(5, g2), (u + torch.arange(5) / 5) % 1.0)


def test_validation():
    with pytest.raises(ValueError, match="density"):
        TimeSampling("cosine")
    with pytest.raises(ValueError, match="scale"):
        TimeSampling("logit_normal", scale=0.0)
    with pytest.raises(ValueError, match="mode_scale"):
        TimeSampling("mode", mode_scale=2.0)
