import math

import numpy as np
import pytest
import torch

from latentvid.diffusion.schedule import (
    GRID_LOGSNR_RANGE,
    SPACINGS,
    CosineSchedule,
    LinearLogSNRSchedule,
    RectifiedFlowSchedule,
    alpha_sigma,
    cosine_logsnr,
    cosine_t_from_logsnr,
    linear_logsnr,
    logsnr_from_alpha_sigma,
    rf_t_from_logsnr,
    sampling_grid,
    time_grid,
    log_linear_shift,
    token_shift,
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


@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearLogSNRSchedule(), RectifiedFlowSchedule(shift=3.0)],
                         ids=["cosine", "linear", "rf"])
def test_the_default_spacing_is_the_uniform_time_grid(schedule):
    # unchanged by the spacing option: logSNR(t) on t = 1, (N-1)/N, ..., 1/N, then +inf
    lam = schedule.sampling_logsnrs(7)
    assert torch.equal(lam, schedule.sampling_logsnrs(7, spacing="time")) and lam.dtype == torch.float32
    torch.testing.assert_close(lam[:-1], schedule.logsnr(torch.linspace(1.0, 0.0, 8)[:-1]))
    assert lam[-1] == math.inf


@pytest.mark.parametrize("schedule", [CosineSchedule(shift=0.5), LinearLogSNRSchedule(),
                                      RectifiedFlowSchedule(shift=3.0)], ids=["cosine", "linear", "rf"])
def test_logsnr_and_karras_spacings(schedule):
    steps = 6
    ends = schedule.logsnr(torch.tensor([1.0, 0.0], dtype=torch.float64))  # (noisiest, cleanest)
    ends = ends.clamp(*GRID_LOGSNR_RANGE)  # the grids' default range: the schedule's, within [-8, 8]
    uniform = schedule.sampling_logsnrs(steps, spacing="logsnr").double()
    assert uniform.shape == (steps + 1,) and uniform[-1] == math.inf
    np.testing.assert_allclose(uniform[:-1].numpy(), np.linspace(*ends.numpy(), steps), rtol=1e-6, atol=1e-5)
    karras = schedule.sampling_logsnrs(steps, spacing="karras").double()
    assert karras.shape == (steps + 1,) and karras[-1] == math.inf and bool((karras[1:] > karras[:-1]).all())
    # Karras et al. eq. 5 written out in sigma / alpha = exp(-logSNR / 2), rho = 7
    s_max, s_min = np.exp(-ends.numpy() / 2)
    i = np.arange(steps)
    ref = (s_max ** (1 / 7) + i / (steps - 1) * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
    np.testing.assert_allclose(np.exp(-karras[:-1].numpy() / 2), ref, rtol=1e-5)


def test_grid_range_is_the_schedules_within_logsnr_range():
    cosine = CosineSchedule()  # logSNR [-20, 20]
    lam = lambda t: cosine.logsnr(t)  # noqa: E731
    for spacing in ("logsnr", "karras"):
        assert sampling_grid(lam, 5, spacing)[[0, -2]].tolist() == [-8.0, 8.0]
        assert sampling_grid(lam, 5, spacing, logsnr_range=(-6.0, 4.0))[[0, -2]].tolist() == [-6.0, 4.0]
        full = sampling_grid(lam, 5, spacing, logsnr_range=None)
        torch.testing.assert_close(full[[0, -2]], torch.tensor([-20.0, 20.0]))
        # a schedule narrower than the range keeps its own ends
        narrow = sampling_grid(lambda t: linear_logsnr(t, -5.0, 3.0), 5, spacing)
        torch.testing.assert_close(narrow[[0, -2]], torch.tensor([-5.0, 3.0]))
    with pytest.raises(ValueError, match="low < high"):
        sampling_grid(lam, 5, "logsnr", logsnr_range=(2.0, -2.0))
    with pytest.raises(ValueError, match="misses"):
        sampling_grid(lambda t: linear_logsnr(t, -5.0, 3.0), 5, "logsnr", logsnr_range=(4.0, 9.0))
    # the default time grid does not use the range
    torch.testing.assert_close(sampling_grid(lam, 5), sampling_grid(lam, 5, logsnr_range=None))


def test_karras_spacing_tends_to_uniform_logsnr_as_rho_grows():
    lam = lambda t: linear_logsnr(t, -8.0, 6.0)  # noqa: E731
    torch.testing.assert_close(sampling_grid(lam, 5, "karras", rho=1e5), sampling_grid(lam, 5, "logsnr"),
                               atol=1e-3, rtol=0)


def test_spacing_validation():
    with pytest.raises(ValueError, match="spacing"):
        CosineSchedule().sampling_logsnrs(4, spacing="cosine")
    with pytest.raises(ValueError, match="steps"):
        CosineSchedule().sampling_logsnrs(0, spacing="karras")
    assert SPACINGS == ("time", "logsnr", "karras")
    for spacing in SPACINGS:  # one step: straight from the noisiest level of the grid to a clean sample
        lam = RectifiedFlowSchedule().sampling_logsnrs(1, spacing=spacing)
        noisiest = -20.0 if spacing == "time" else GRID_LOGSNR_RANGE[0]
        assert lam.tolist() == [pytest.approx(noisiest), math.inf]


# ---- rectified flow -------------------------------------------------------------------------------
def test_rectified_flow_is_one_minus_t_and_t():
    sched = RectifiedFlowSchedule(logsnr_min=-30.0, logsnr_max=30.0)  # t range within 3e-7 of [0, 1]
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    a, s = sched.alpha_sigma(sched.logsnr(t))
    torch.testing.assert_close(a, 1 - t, atol=1e-6, rtol=0)
    torch.testing.assert_close(s, t, atol=1e-6, rtol=0)
    lam = sched.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(lam, torch.tensor([30.0, -30.0], dtype=torch.float64))


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_rectified_flow_shift_is_sd3s(shift):
    # SD3 / diffusers FlowMatchEulerDiscreteScheduler: t' = shift t / (1 + (shift - 1) t)
    sched = RectifiedFlowSchedule(logsnr_min=-40.0, logsnr_max=40.0, shift=shift)
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    _, t_shifted = sched.alpha_sigma(sched.logsnr(t))
    torch.testing.assert_close(t_shifted, shift * t / (1 + (shift - 1) * t), atol=1e-7, rtol=0)  # t range: 2e-9
    torch.testing.assert_close(rf_t_from_logsnr(sched.logsnr(t), -40.0, 40.0, shift), t)


def test_token_shift_grows_with_the_square_root_of_the_tokens():
    sched = RectifiedFlowSchedule(shift=2.0, base_tokens=256)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    tokens = torch.tensor([256.0, 1024.0, 64.0], dtype=torch.float64)
    lam = sched.logsnr(t, tokens)
    # SD3's sqrt(m / n) on top of the base shift: x4 tokens doubles sigma / alpha
    expected = sched.logsnr(t[:1]) - 2 * torch.log(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(lam, expected)
    assert token_shift(1024, 256, 2.0) == 4.0
    torch.testing.assert_close(sched.sampling_logsnrs(4, 1024)[:-1], RectifiedFlowSchedule(shift=4.0).sampling_logsnrs(4)[:-1])
    # without base_tokens the token count is ignored
    assert torch.equal(RectifiedFlowSchedule(shift=2.0).logsnr(t, tokens), RectifiedFlowSchedule(shift=2.0).logsnr(t))


@pytest.mark.parametrize("tokens", [330, 1024, 2574, 4096, 9240])
def test_log_linear_shift_is_the_ltx_pipelines_dynamic_shift(tokens):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    # LTX-Video 0.9.x's scheduler config; mu = its log shift for a clip of `tokens` latent tokens
    config = dict(base_image_seq_len=1024, max_image_seq_len=4096, base_shift=0.95, max_shift=2.05)
    reference = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, **config)
    mu = calculate_shift(tokens, 1024, 4096, 0.95, 2.05)
    sched = RectifiedFlowSchedule(logsnr_min=-40.0, logsnr_max=40.0, shift=math.exp(0.95), base_tokens=1024,
                                  max_tokens=4096, max_shift=math.exp(2.05))
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    _, sigma = sched.alpha_sigma(sched.logsnr(t, torch.full_like(t, tokens)))
    torch.testing.assert_close(sigma, reference.time_shift(mu, 1.0, t), atol=1e-7, rtol=0)
    assert sched.total_shift(tokens) == pytest.approx(math.exp(mu))
    assert log_linear_shift(tokens, 1024, math.exp(0.95), 4096, math.exp(2.05)) == pytest.approx(math.exp(mu))


def test_log_linear_shift_settings_are_checked():
    with pytest.raises(ValueError, match="max_tokens and max_shift go together"):
        RectifiedFlowSchedule(base_tokens=1024, max_tokens=4096)
    with pytest.raises(ValueError, match="needs base_tokens below it"):
        RectifiedFlowSchedule(base_tokens=4096, max_tokens=1024, max_shift=2.0)
    with pytest.raises(ValueError, match="needs base_tokens below it"):
        RectifiedFlowSchedule(max_tokens=1024, max_shift=2.0)
    with pytest.raises(ValueError, match="max_shift must be > 0"):
        RectifiedFlowSchedule(base_tokens=256, max_tokens=1024, max_shift=0.0)


def test_schedules_name_their_process():
    lam = torch.linspace(-4, 4, 5)
    for sched in (CosineSchedule(), LinearLogSNRSchedule()):
        a, s = sched.alpha_sigma(lam)
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(lam))
    a, s = RectifiedFlowSchedule().alpha_sigma(lam)
    torch.testing.assert_close(a + s, torch.ones_like(lam))
    with pytest.raises(ValueError, match="shift"):
        RectifiedFlowSchedule(shift=0.0)
