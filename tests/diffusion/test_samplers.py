"""Samplers against exact references: the closed-form denoiser of Gaussian data on both process
families (variance preserving and rectified flow) and the exact probability-flow map it implies,
diffusers' DDIM, DPM-Solver++ and Heun schedulers, and Euler on the flow ODE."""

import math

import numpy as np
import pytest
import torch

from latentvid.diffusion.samplers import (
    SAMPLERS,
    run_sampler,
    sample_ancestral,
    sample_ddim,
    sample_dpmpp_2m,
    sample_heun,
)
from latentvid.diffusion.schedule import (
    CosineSchedule,
    RectifiedFlowSchedule,
    alpha_sigma,
    logsnr_from_alpha_sigma,
    rf_alpha_sigma,
    sampling_grid,
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
        ("dpmpp_2m", lambda d, z, lam, g, p: sample_dpmpp_2m(d, z, lam, alpha_sigma=p)),
        ("heun", lambda d, z, lam, g, p: sample_heun(d, z, lam, alpha_sigma=p)),
        ("heun_edm", lambda d, z, lam, g, p: sample_heun(d, z, lam, variable="edm", alpha_sigma=p)),
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


# ---- second-order ODE solvers: DPM-Solver++(2M) and Heun -------------------------------------------


def exact_flow_map(mu: float, std: float, z: torch.Tensor, logsnr: float, process=alpha_sigma) -> torch.Tensor:
    """Where the probability-flow ODE takes z at ``logsnr`` when x0 ~ N(mu, std^2) elementwise.

    The marginal at logSNR is N(alpha mu, alpha^2 std^2 + sigma^2) and the flow of a 1-D Gaussian is
    the monotone affine map between marginals, so at logSNR = +inf, x = mu + std (z - alpha mu) / sd.
    """
    a, s = process(torch.tensor(logsnr, dtype=torch.float64))
    return mu + std * (z - a * mu) / (a**2 * std**2 + s**2).sqrt()


ODE_SOLVERS = {
    "dpmpp_2m": sample_dpmpp_2m,
    "heun": sample_heun,
    "heun_edm": lambda *args, **kw: sample_heun(*args, variable="edm", **kw),
}


def flow_map_error(solver, schedule, steps: int, spacing: str, z: torch.Tensor) -> float:
    # the schedule's whole range: the default [-8, 8] ends in a fixed last jump from logSNR 8 to clean,
    # an error that no number of steps removes, which would hide the order of the steps before it
    lam = sampling_grid(schedule.logsnr, steps, spacing, logsnr_range=None).double()
    x = solver(gaussian_denoiser(MU, STD, schedule.alpha_sigma), z.clone(), lam, alpha_sigma=schedule.alpha_sigma)
    return (x - exact_flow_map(MU, STD, z, float(lam[0]), schedule.alpha_sigma)).abs().max().item()


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
@pytest.mark.parametrize("family", ["vp", "rf"])
@pytest.mark.parametrize("name", [*ODE_SOLVERS, "ddim"])
def test_ode_solvers_converge_to_the_exact_flow_map_at_their_order(name, family, spacing):
    # the error of every sample against the exact ODE solution, at 40, 80 and 160 steps: halving the
    # step must divide it by about 4 (second order) for the new solvers and by about 2 for DDIM (Euler)
    schedule = CosineSchedule() if family == "vp" else RectifiedFlowSchedule(shift=2.0)
    solver = ODE_SOLVERS.get(name, sample_ddim)
    z = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = [flow_map_error(solver, schedule, n, spacing, z) for n in (40, 80, 160)]
    orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    low, high = (0.8, 1.2) if name == "ddim" else (1.8, 2.5)
    assert all(low < o < high for o in orders), f"{name}/{family}/{spacing}: errors {errors}, orders {orders}"
    if name != "ddim":
        assert errors[-1] < 0.01


@pytest.mark.parametrize("family", ["vp", "rf"])
@pytest.mark.parametrize("name", list(ODE_SOLVERS))
def test_ode_solvers_beat_ddim_on_the_default_grid(name, family):
    # the uniform-t grid takes large logSNR steps at both ends, so the observed order wanders before
    # 160 steps; the error must still fall with the steps and stay well below DDIM's
    schedule = CosineSchedule() if family == "vp" else RectifiedFlowSchedule(shift=2.0)
    z = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = [flow_map_error(ODE_SOLVERS[name], schedule, n, "time", z) for n in (20, 80)]
    ddim = [flow_map_error(sample_ddim, schedule, n, "time", z) for n in (20, 80)]
    assert ours[1] < ours[0] and ours[1] < ddim[1] / 3, f"{name}/{family}: {ours} vs DDIM {ddim}"


def test_heun_in_the_flow_variable_survives_the_noisiest_step():
    # why "flow" is the default: at logSNR = -20, sigma / alpha = 2e4, and 10 uniform-t steps of the
    # edm variable miss badly where the bounded flow time does not (numbers quoted in sample_heun)
    z = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    flow = flow_map_error(sample_heun, CosineSchedule(), 10, "time", z)
    edm = flow_map_error(ODE_SOLVERS["heun_edm"], CosineSchedule(), 10, "time", z)
    assert flow < 0.15 < 1.0 < edm


def analytic_denoiser(z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear x0_hat(z, logSNR) (not a real denoiser): any function must give the same trajectory."""
    w = torch.sigmoid(logsnr.to(torch.float64) / 4).reshape(-1, *([1] * (z.ndim - 1)))
    return 0.6 * torch.tanh(1.5 * z) + w * (0.3 * z - 0.2 * z**2 / (1 + z**2)) + 0.1


def run_diffusers(sched, z: torch.Tensor, output) -> list[torch.Tensor]:
    """Step a diffusers scheduler from z, calling the model at the noise level of each call
    (``sched.sigmas[k]`` for the k-th call: DPM-Solver's one per step, Heun's interleaved pair);
    ``output(z, sigma)`` is the model output. Returns the sample after every step call."""
    out = []
    for k, t in enumerate(sched.timesteps):
        z = sched.step(output(z, sched.sigmas[k].double()), t, z).prev_sample
        out.append(z.clone())
    return out


def vp_model_output(prediction_type: str):
    """eps or v of ``analytic_denoiser`` for diffusers' VP schedulers, at sigma_d = sigma / alpha."""

    def output(z, sigma_d):
        lam = -2.0 * torch.log(sigma_d)
        a, s = alpha_sigma(lam)
        x0 = analytic_denoiser(z.double(), lam.expand(z.shape[0]))
        eps = (z - a * x0) / s
        return (eps if prediction_type == "epsilon" else a * eps - s * x0).float()

    return output


@pytest.mark.parametrize("karras", [False, True], ids=["linspace", "karras"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmpp_2m_matches_diffusers_dpm_solver_multistep(prediction_type, karras):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012, algorithm_type="dpmsolver++", solver_order=2,
                                        prediction_type=prediction_type, use_karras_sigmas=karras)
    sched.set_timesteps(20)
    # the same alphas / sigmas at the same points: logSNR = -2 log(sigma / alpha) of diffusers' sigmas,
    # the last sigma 0 being logSNR = +inf
    lam = -2.0 * torch.log(sched.sigmas.double())
    assert lam[-1] == math.inf and len(lam) == 21
    z0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(3))
    ours = []
    sample_dpmpp_2m(analytic_denoiser, z0.double(), lam, callback=lambda i, z, x0: ours.append(z.clone()))
    theirs = run_diffusers(sched, z0.clone(), vp_model_output(prediction_type))
    assert len(ours) == len(theirs) == 20
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a.float(), b, atol=1e-5, rtol=1e-5, msg=f"step {i}")  # diffusers: float32


def test_dpmpp_2m_matches_diffusers_on_the_flow():
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2,
                                        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(16)
    t = sched.sigmas.double()  # flow times, ending at 0
    lam = 2.0 * (torch.log1p(-t) - torch.log(t))

    def velocity(z, t_k):  # eps_hat - x0_hat = (z - x0_hat) / t
        x0 = analytic_denoiser(z.double(), (2.0 * (torch.log1p(-t_k) - torch.log(t_k))).expand(z.shape[0]))
        return ((z - x0) / t_k).float()

    z0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(4))
    ours = []
    sample_dpmpp_2m(analytic_denoiser, z0.double(), lam, alpha_sigma=rf_alpha_sigma,
                    callback=lambda i, z, x0: ours.append(z.clone()))
    theirs = run_diffusers(sched, z0.clone(), velocity)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a.float(), b, atol=1e-5, rtol=1e-5, msg=f"step {i}")


def test_heun_edm_matches_diffusers_heun_discrete():
    from diffusers import HeunDiscreteScheduler

    sched = HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, prediction_type="epsilon", use_karras_sigmas=True)
    sched.set_timesteps(12)
    sigmas = sched.sigmas.double()
    lam = -2.0 * torch.log(torch.cat([sigmas[:1], sigmas[1::2]]))  # the 13 distinct levels, the last +inf
    assert len(lam) == 13 and lam[-1] == math.inf
    # diffusers integrates x / alpha (variance exploding), ours z itself: z = alpha * (diffusers' sample)
    a0 = alpha_sigma(lam[0])[0]
    z0 = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ours = []
    sample_heun(analytic_denoiser, z0, lam, variable="edm", callback=lambda i, z, x0: ours.append(z.clone()))
    output = vp_model_output("epsilon")
    theirs = run_diffusers(sched, (z0 / a0).float(), lambda x, s: output((x.double() / (1 + s**2).sqrt()), s))
    theirs = [*theirs[1::2], theirs[-1]]  # after each full step (an Euler call, then its correction), the last Euler
    assert len(ours) == len(theirs) == 12
    for i, (a, b) in enumerate(zip(ours, theirs)):
        x = a / alpha_sigma(lam[i + 1])[0] if i < 11 else a
        torch.testing.assert_close(x.float(), b, atol=1e-5 * float(b.abs().max()), rtol=1e-5, msg=f"step {i}")


def test_heun_flow_matches_diffusers_flow_match_heun():
    from diffusers import FlowMatchHeunDiscreteScheduler

    sched = FlowMatchHeunDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(10)
    sigmas = sched.sigmas.double()
    t = torch.cat([sigmas[:1], sigmas[1::2]])  # flow times from 1 (logSNR = -inf) to 0 (+inf)
    lam = 2.0 * (torch.log1p(-t) - torch.log(t))
    assert lam[0] == -math.inf and lam[-1] == math.inf

    def velocity(z, t_k):
        x0 = analytic_denoiser(z.double(), (2.0 * (torch.log1p(-t_k) - torch.log(t_k))).expand(z.shape[0]))
        return ((z - x0) / t_k).float()

    z0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(6))
    ours = []
    sample_heun(analytic_denoiser, z0.double(), lam, alpha_sigma=rf_alpha_sigma,
                callback=lambda i, z, x0: ours.append(z.clone()))
    theirs = run_diffusers(sched, z0.clone(), velocity)
    theirs = [*theirs[1::2], theirs[-1]]
    assert len(ours) == len(theirs) == 10
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a.float(), b, atol=1e-5, rtol=1e-5, msg=f"step {i}")


def test_solver_steps_reduce_to_ddim_where_they_must():
    # the first DPM-Solver++ step (no history) and the last step of both (to logSNR = +inf) are DDIM's;
    # one step straight to +inf is therefore DDIM for all three, and returns the clean estimate
    z = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    d = gaussian_denoiser(MU, STD)
    for lam in (torch.tensor([-1.0, 2.0], dtype=torch.float64), torch.tensor([-1.0, math.inf], dtype=torch.float64)):
        ddim = sample_ddim(d, z, lam)
        torch.testing.assert_close(sample_dpmpp_2m(d, z, lam), ddim, atol=1e-12, rtol=0)
        if lam[-1] == math.inf:
            torch.testing.assert_close(sample_heun(d, z, lam), ddim, atol=1e-12, rtol=0)
            torch.testing.assert_close(ddim, d(z, lam[:1].expand(6)), atol=1e-12, rtol=0)


def test_network_evaluations_per_sampler():
    calls = {}
    for name in SAMPLERS:
        count = [0]

        def d(z, lam, count=count):
            count[0] += 1
            return 0.5 * z

        run_sampler(name, d, torch.zeros(2, 1), CosineSchedule().sampling_logsnrs(7),
                    generator=torch.Generator().manual_seed(0))
        calls[name] = count[0]
    assert calls == {"ddim": 7, "ancestral": 7, "dpmpp_2m": 7, "heun": 13}


def test_run_sampler_dispatches_by_name():
    z = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lam = RectifiedFlowSchedule().sampling_logsnrs(6).double()
    d = gaussian_denoiser(MU, STD, rf_alpha_sigma)
    for name, fn in SAMPLERS.items():
        expected = fn(d, z, lam, generator=torch.Generator().manual_seed(1), alpha_sigma=rf_alpha_sigma)
        got = run_sampler(name, d, z, lam, generator=torch.Generator().manual_seed(1), alpha_sigma=rf_alpha_sigma)
        assert torch.equal(got, expected), name
    eta = run_sampler("ddim", d, z, lam, eta=1.0, generator=torch.Generator().manual_seed(1),
                      alpha_sigma=rf_alpha_sigma)
    assert torch.equal(eta, sample_ddim(d, z, lam, eta=1.0, generator=torch.Generator().manual_seed(1),
                                        alpha_sigma=rf_alpha_sigma))
    with pytest.raises(ValueError, match="dpmpp_2m"):
        run_sampler("dpm++", d, z, lam)
    with pytest.raises(ValueError, match="variable"):
        sample_heun(d, z, lam, variable="karras")
    with pytest.raises(ValueError, match="finite"):
        sample_heun(d, z, torch.tensor([-math.inf, 0.0, math.inf]), variable="edm")


@pytest.mark.parametrize("name", ["ddim_eta", "ancestral"])
def test_one_generator_per_sample_makes_samples_independent_of_the_batch(name):
    # sample i of a batch, with generators seeded s_i, is what sampling it alone with seed s_i gives
    def run(z, generator):
        lam = CosineSchedule().sampling_logsnrs(6)
        if name == "ddim_eta":
            return sample_ddim(gaussian_denoiser(MU, STD), z, lam, eta=1.0, generator=generator)
        return sample_ancestral(gaussian_denoiser(MU, STD), z, lam, generator=generator)

    seeds = [11, 12, 13]
    z = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = run(z, [torch.Generator().manual_seed(s) for s in seeds])
    alone = torch.cat([run(z[i : i + 1], torch.Generator().manual_seed(s)) for i, s in enumerate(seeds)])
    torch.testing.assert_close(batch, alone, atol=1e-12, rtol=0)
    shared = run(z, torch.Generator().manual_seed(11))  # one generator for the batch: other noise
    assert not torch.allclose(shared[1:], alone[1:])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        run(z, [torch.Generator(), torch.Generator()])
