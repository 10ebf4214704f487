"""Samplers against exact references: the closed-form denoiser of Gaussian data on both process
families (variance preserving and rectified flow), diffusers' DDIM, and Euler on the flow ODE."""

import math

import numpy as np
import pytest
import torch

from latentvid.diffusion.samplers import sample_ancestral, sample_ddim
from latentvid.diffusion.schedule import (
    CosineSchedule,
    RectifiedFlowSchedule,
    alpha_sigma,
    logsnr_from_alpha_sigma,
    rf_alpha_sigma,
)

MU, STD = 0.7, 0.3


def gaussian_denoiser(mu: float, std: float, process=alpha_sigma):
    """E[x0 | z] for x0 ~ N(mu, std^2) elementwise and z = alpha x0 + sigma eps (exact, any process)."""

    def denoise(z, logsnr):
        a, s = process(logsnr.to(torch.float64))
        a = a.reshape(-1, *([1] * (z.ndim - 1)))
        s = s.reshape(-1, *([1] * (z.ndim - 1)))
        gain = a * std**2 / (a**2 * std**2 + s**2)
        return mu + gain * (z - a * mu)

    return denoise


@pytest.mark.parametrize(
    "name,run",
    [
        ("ddim", lambda d, z, lam, g, p: sample_ddim(d, z, lam, alpha_sigma=p)),
        ("ddim_eta", lambda d, z, lam, g, p: sample_ddim(d, z, lam, eta=0.5, generator=g, alpha_sigma=p)),
        ("ancestral", lambda d, z, lam, g, p: sample_ancestral(d, z, lam, generator=g, alpha_sigma=p)),
        ("ancestral_gamma", lambda d, z, lam, g, p: sample_ancestral(d, z, lam, gamma=0.3, generator=g,
                                                                     alpha_sigma=p)),
    ],
)
@pytest.mark.parametrize("family", ["vp", "rf"])
def test_samplers_recover_gaussian_data(name, run, family):
    schedule = CosineSchedule() if family == "vp" else RectifiedFlowSchedule(shift=2.0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40000, 1, dtype=torch.float64, generator=g)
    # 500 steps: the ancestral variance error is O(1/steps) (about -1.7 % here, -5 % at 100 steps)
    x = run(gaussian_denoiser(MU, STD, schedule.alpha_sigma), z, schedule.sampling_logsnrs(500), g,
            schedule.alpha_sigma)
    assert abs(x.mean().item() - MU) < 0.03 * MU, f"{name}/{family}: mean {x.mean().item():.4f} vs {MU}"
    assert abs(x.std().item() - STD) < 0.03 * STD, f"{name}/{family}: std {x.std().item():.4f} vs {STD}"


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_wrong_process_is_detected(eta):
    # guard for the family parametrisation: VP updates on flow-coordinate noise must not pass
    schedule = RectifiedFlowSchedule()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40000, 1, dtype=torch.float64, generator=g)
    x = sample_ddim(gaussian_denoiser(MU, STD, rf_alpha_sigma), z, schedule.sampling_logsnrs(100), eta=eta,
                    generator=g)
    assert abs(x.std().item() - STD) > 0.1 * STD or abs(x.mean().item() - MU) > 0.1 * MU


def flow_euler_reference(mu: float, std: float, z: torch.Tensor, ts: list[float]) -> list[torch.Tensor]:
    """Euler on dz/dt = E[eps - x0 | z_t] for z_t = (1 - t) x0 + t eps, written in t alone (no logSNR)."""
    out = []
    for t, s in zip(ts[:-1], ts[1:]):
        a = 1.0 - t
        x0 = mu + a * std**2 / (a**2 * std**2 + t**2) * (z - a * mu)  # E[x0 | z_t]
        velocity = (z - x0) / t  # eps_hat - x0_hat, with eps_hat = (z - (1 - t) x0_hat) / t
        z = z + (s - t) * velocity
        out.append(z)
    return out


def test_ddim_on_the_flow_is_euler_on_the_flow_ode():
    schedule = RectifiedFlowSchedule(shift=3.0)
    lam = schedule.sampling_logsnrs(12)
    ts = [float(t) for t in rf_alpha_sigma(lam.double())[1]]  # sigma = t; the last one is exactly 0
    assert ts[-1] == 0.0 and ts[0] > 0.999
    z0 = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    traj = []
    sample_ddim(gaussian_denoiser(MU, STD, rf_alpha_sigma), z0.clone(), lam, alpha_sigma=rf_alpha_sigma,
                callback=lambda i, z, x0: traj.append(z.clone()))
    for i, (ours, ref) in enumerate(zip(traj, flow_euler_reference(MU, STD, z0.clone(), ts))):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10, msg=f"step {i}")


def test_ddim_on_the_flow_matches_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(20)
    sig = sched.sigmas.to(torch.float64)  # (21,) flow times, shifted, ending at 0
    lam = torch.cat([2.0 * torch.log((1 - sig[:-1]) / sig[:-1]), torch.tensor([math.inf], dtype=torch.float64)])
    denoise = gaussian_denoiser(MU, STD, rf_alpha_sigma)
    z0 = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    ours = sample_ddim(denoise, z0.clone(), lam, alpha_sigma=rf_alpha_sigma)
    z = z0.clone()
    for t, s in zip(sched.timesteps, sig[:-1]):
        x0 = denoise(z, torch.full((z.shape[0],), float(2 * torch.log((1 - s) / s)), dtype=torch.float64))
        flow = (z - x0) / s  # the velocity a flow model predicts
        z = sched.step(flow.float(), t, z.float()).prev_sample.double()
    torch.testing.assert_close(ours, z, atol=1e-5, rtol=1e-5)  # diffusers steps in float32


def test_ancestral_variance_bounds_bracket_the_truth():
    # gamma = 0 (posterior variance, lower bound) under-disperses, gamma = 1 (upper bound) over-disperses
    lam = CosineSchedule().sampling_logsnrs(50)
    stds = []
    for gamma in (0.0, 1.0):
        g = torch.Generator().manual_seed(0)
        z = torch.randn(40000, 1, dtype=torch.float64, generator=g)
        stds.append(sample_ancestral(gaussian_denoiser(MU, STD), z, lam, gamma=gamma, generator=g).std().item())
    assert stds[0] < STD < stds[1]


def test_a_wrong_denoiser_is_detected():
    # guard for the test above: a denoiser for other data must not pass the same check
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40000, 1, dtype=torch.float64, generator=g)
    x = sample_ddim(gaussian_denoiser(MU, 2 * STD), z, CosineSchedule().sampling_logsnrs(100))
    assert abs(x.std().item() - STD) > 0.5 * STD


def test_ddim_step_is_the_angular_update():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, 4, dtype=torch.float64, generator=g)
    lam = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    denoise = gaussian_denoiser(0.2, 0.5)
    ours = sample_ddim(denoise, z, lam)
    a_t, s_t = alpha_sigma(lam[0])
    a_s, s_s = alpha_sigma(lam[1])
    x0 = denoise(z, lam[:1].expand(8))
    v = a_t * (z - a_t * x0) / s_t - s_t * x0
    phi_t, phi_s = math.atan2(s_t, a_t), math.atan2(s_s, a_s)
    ref = math.cos(phi_t - phi_s) * z - math.sin(phi_t - phi_s) * v
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_ddim_matches_diffusers_ddim_scheduler():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    sched.set_timesteps(25)
    ac = sched.alphas_cumprod.to(torch.float64)
    ts = sched.timesteps
    # diffusers keeps alphas_cumprod in float32, so agreement is to float32 precision (1e-6).
    # our grid: the same discrete alphas at the visited timesteps, then alpha = 1 (set_alpha_to_one)
    lam = logsnr_from_alpha_sigma(ac[ts].sqrt(), (1 - ac[ts]).sqrt())
    lam = torch.cat([lam, torch.tensor([math.inf], dtype=torch.float64)])

    denoise = gaussian_denoiser(MU, STD)
    g = torch.Generator().manual_seed(7)
    z0 = torch.randn(16, 3, dtype=torch.float64, generator=g)
    ours_traj = []
    ours = sample_ddim(denoise, z0.clone(), lam, callback=lambda i, z, x0: ours_traj.append(z.clone()))

    z = z0.clone()
    theirs_traj = []
    for t in ts:
        a_t = ac[t]
        logsnr = torch.log(a_t / (1 - a_t)).expand(z.shape[0])
        eps = (z - a_t.sqrt() * denoise(z, logsnr)) / (1 - a_t).sqrt()
        z = sched.step(eps, t, z, eta=0.0).prev_sample
        theirs_traj.append(z.clone())
    for i, (a, b) in enumerate(zip(ours_traj, theirs_traj)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=f"step {i}")
    torch.testing.assert_close(ours, z, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("process", [alpha_sigma, rf_alpha_sigma], ids=["vp", "rf"])
def test_eta_one_ddim_equals_ancestral_in_law(process):
    # DDIM with eta = 1 and the ancestral sampler both sample the DDPM posterior: same moments after a
    # step (a 3-point grid, so the first step is not the final, noise-free one)
    lam = torch.tensor([-0.5, 1.5, 5.0], dtype=torch.float64)
    denoise = gaussian_denoiser(0.0, 1.0, process)
    z = torch.full((200000, 1), 0.8, dtype=torch.float64)
    captured = {}

    def grab(name):
        def cb(i, zz, x0):
            if i == 0:
                captured[name] = zz.clone()

        return cb

    sample_ddim(denoise, z, lam, eta=1.0, generator=torch.Generator().manual_seed(1), callback=grab("ddim"),
                alpha_sigma=process)
    sample_ancestral(denoise, z, lam, generator=torch.Generator().manual_seed(2), callback=grab("anc"),
                     alpha_sigma=process)
    a, b = captured["ddim"], captured["anc"]
    assert abs(a.mean().item() - b.mean().item()) < 5e-3
    assert abs(a.std().item() - b.std().item()) < 5e-3
    assert a.std().item() > 0.05  # the step really is stochastic


def test_grid_validation():
    z = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="increase"):
        sample_ddim(lambda z, l: z, z, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="at least 2"):
        sample_ddim(lambda z, l: z, z, torch.tensor([1.0]))


def test_deterministic_given_generator():
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    lam = CosineSchedule().sampling_logsnrs(10)
    d = gaussian_denoiser(0.0, 1.0)
    a = sample_ancestral(d, z, lam, generator=torch.Generator().manual_seed(5))
    b = sample_ancestral(d, z, lam, generator=torch.Generator().manual_seed(5))
    c = sample_ancestral(d, z, lam, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
