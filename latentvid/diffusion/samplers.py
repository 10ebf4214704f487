"""Samplers: pure functions over one denoiser interface.

Every sampler is ``sample_x(denoise, z, logsnrs, ..., generator=None, progress=False, callback=None)``:

- ``denoise(z, logsnr) -> x0_hat``: z (B, ...) noisy input, logsnr (B,) -> clean estimate (B, ...).
  Wrap eps/v networks with :func:`latentvid.diffusion.parameterization.prediction_to_x0` and add
  guidance with :mod:`latentvid.diffusion.guidance`; samplers never see the parameterisation.
- ``logsnrs`` (N + 1,): the time grid expressed as logSNR(t_i), increasing (noise -> data); the
  last entry may be +inf, meaning "return the clean estimate". Build it with a schedule's
  ``sampling_logsnrs(steps, spacing=...)`` (uniform t, uniform logSNR or Karras et al.'s rho = 7
  grid: :func:`~latentvid.diffusion.schedule.sampling_grid`), or from any discrete model's alphas.
- ``z`` (B, ...): the starting noise at logsnrs[0], usually ``torch.randn``.
- ``generator``: the source of fresh noise (ancestral / eta > 0), on z's device; or a sequence of B
  generators, one per sample, so that a sample draws the same noise in any batch.
- ``alpha_sigma``: the process family, logSNR -> (alpha, sigma): the schedule's ``alpha_sigma``
  (variance preserving by default; :func:`~latentvid.diffusion.schedule.rf_alpha_sigma` for
  rectified flow). The updates are written for any (alpha, sigma), so z stays in the model's own
  coordinates; DDIM is then Euler on the probability-flow ODE in those coordinates (on the
  rectified flow, z_s = z_t + (s - t) (eps_hat - x0_hat)).

``SAMPLERS`` names them: ``ddim`` (eta = 0: first-order ODE solver; eta > 0 stochastic),
``ancestral`` (stochastic), and the deterministic second-order ODE solvers ``dpmpp_2m``
(DPM-Solver++(2M), one network call per step) and ``heun`` (two per step), which reach a given
accuracy in far fewer steps. :func:`run_sampler` calls one by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentvid.diffusion.schedule import AlphaSigma
from latentvid.diffusion.schedule import alpha_sigma as vp_alpha_sigma

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the batch, one per sample, or None (the global RNG)."""


def _steps(logsnrs: Tensor, progress: bool, desc: str):
    if logsnrs.ndim != 1 or logsnrs.numel() < 2:
        raise ValueError(f"logsnrs must be a 1-D grid of at least 2 values, got shape {tuple(logsnrs.shape)}")
    if not bool((logsnrs[1:] > logsnrs[:-1]).all()):
        raise ValueError("logsnrs must increase strictly (from noise towards data)")
    return tqdm(range(len(logsnrs) - 1), desc=desc, disable=not progress, leave=False)


def standard_normal(shape: Sequence[int], generator: Generators, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal noise (B, ...) from one generator, or from B of them (row i from the i-th, as that
    generator would draw it for a batch of one: a row does not depend on the others)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def _noise(z: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like z (B, ...) (:func:`standard_normal`)."""
    return standard_normal(z.shape, generator, z.device, z.dtype)


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    z: Tensor,
    logsnrs: Tensor,
    eta: float = 0.0,
    generator: Generators = None,
    progress: bool = False,
    callback: Callback | None = None,
    alpha_sigma: AlphaSigma = vp_alpha_sigma,
) -> Tensor:
    """DDIM (Song et al., 2021, eq. 12) in alpha/sigma form; returns the final sample (B, ...).

    Each step t -> s predicts x0_hat, eps_hat = (z - alpha_t x0_hat) / sigma_t and sets

        z_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi,
        c   = eta (sigma_s / sigma_t) sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)

    (c^2 is eta^2 times the DDPM posterior variance of any process; in VP the root is
    sqrt(1 - alpha_t^2 / alpha_s^2)). With eta = 0 this is the deterministic angular update of Imagen Video / Lil'Log,
    z_s = cos(phi_t - phi_s) z_t - sin(phi_t - phi_s) v_hat with phi = atan2(sigma, alpha) (VP);
    eta = 1 samples the DDPM posterior.
    """
    b = z.shape[0]
    for i in _steps(logsnrs, progress, "ddim"):
        lam_t, lam_s = logsnrs[i], logsnrs[i + 1]
        a_t, s_t = alpha_sigma(lam_t.double())
        a_s, s_s = alpha_sigma(lam_s.double())
        x0 = denoise(z, lam_t.expand(b).to(z.dtype))
        eps = (z - a_t.to(z.dtype) * x0) / s_t.to(z.dtype)
        c = eta * (s_s / s_t) * (s_t**2 - (a_t / a_s) ** 2 * s_s**2).clamp_min(0.0).sqrt()
        z = a_s.to(z.dtype) * x0 + (s_s**2 - c**2).clamp_min(0.0).sqrt().to(z.dtype) * eps
        if eta > 0 and i < len(logsnrs) - 2:
            z = z + c.to(z.dtype) * _noise(z, generator)
        if callback is not None:
            callback(i, z, x0)
    return z


@torch.no_grad()
def sample_ancestral(
    denoise: Denoiser,
    z: Tensor,
    logsnrs: Tensor,
    gamma: float = 0.0,
    generator: Generators = None,
    progress: bool = False,
    callback: Callback | None = None,
    alpha_sigma: AlphaSigma = vp_alpha_sigma,
) -> Tensor:
    """Ancestral sampling from the Gaussian posterior q(z_s | z_t, x0 = x0_hat) (Kingma et al., 2021).

    With alpha_ts = alpha_t / alpha_s and sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2:

        mean = alpha_ts sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_ts^2 / sigma_t^2 x0_hat
        var  = (sigma_ts^2 sigma_s^2 / sigma_t^2)^(1 - gamma) (sigma_ts^2)^gamma

    ``gamma`` interpolates the variance between the posterior's (lower bound, 0) and the forward
    step's (upper bound, 1) in log space, as Imagen Video's ancestral sampler does. These are VDM's
    formulas for any (alpha, sigma), not only variance-preserving ones. Returns (B, ...).
    """
    b = z.shape[0]
    for i in _steps(logsnrs, progress, "ancestral"):
        lam_t, lam_s = logsnrs[i], logsnrs[i + 1]
        a_t, s_t = alpha_sigma(lam_t.double())
        a_s, s_s = alpha_sigma(lam_s.double())
        x0 = denoise(z, lam_t.expand(b).to(z.dtype))
        a_ts = a_t / a_s
        var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0.0)
        mean = (a_ts * s_s**2 / s_t**2).to(z.dtype) * z + (a_s * var_ts / s_t**2).to(z.dtype) * x0
        z = mean
        if i < len(logsnrs) - 2:
            post_var = var_ts * s_s**2 / s_t**2
            var = post_var ** (1.0 - gamma) * var_ts**gamma
            z = z + var.sqrt().to(z.dtype) * _noise(z, generator)
        if callback is not None:
            callback(i, z, x0)
    return z


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoiser,
    z: Tensor,
    logsnrs: Tensor,
    generator: Generators = None,
    progress: bool = False,
    callback: Callback | None = None,
    alpha_sigma: AlphaSigma = vp_alpha_sigma,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022, Algorithm 2): data prediction, multistep, second order; returns (B, ...).

    With lambda = log(alpha / sigma) = logSNR / 2, the probability-flow ODE of any process is exactly
    z_s / sigma_s = z_t / sigma_t + int_{lambda_t}^{lambda_s} e^lambda x0_hat dlambda (z / sigma is
    x0 e^lambda + eps). Step i (t -> s, h = lambda_s - lambda_t) integrates e^lambda exactly and takes
    x0_hat linear in lambda through this step's and the previous step's estimates:

        r = h_prev / h,   D = (1 + 1 / (2 r)) x0_hat_t - 1 / (2 r) x0_hat_prev
        z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^-h) D

    The first step has no previous estimate and the step to logSNR = +inf (sigma_s = 0, h = inf)
    has no second-order term (it returns x0_hat_t); both use D = x0_hat_t, which is DDIM. One
    network evaluation per step. Only (alpha, sigma) at the grid points enter, so it serves every
    process; deterministic (``generator`` is unused).
    """
    b = z.shape[0]
    prev: tuple[Tensor, Tensor] | None = None  # (x0_hat, h) of the previous step
    for i in _steps(logsnrs, progress, "dpm++2m"):
        lam_t, lam_s = logsnrs[i].double(), logsnrs[i + 1].double()
        a_t, s_t = alpha_sigma(lam_t)
        a_s, s_s = alpha_sigma(lam_s)
        x0 = denoise(z, logsnrs[i].expand(b).to(z.dtype))
        h = 0.5 * (lam_s - lam_t)
        d = x0
        if prev is not None and bool(torch.isfinite(lam_s)):
            x0_prev, h_prev = prev
            half_inv_r = 0.5 * h / h_prev  # 1 / (2 r); 0 when the previous step came from logSNR = -inf
            d = (1.0 + half_inv_r).to(z.dtype) * x0 - half_inv_r.to(z.dtype) * x0_prev
        z = (s_s / s_t).to(z.dtype) * z + (a_s * -torch.expm1(-h)).to(z.dtype) * d
        prev = (x0, h)
        if callback is not None:
            callback(i, z, x0)
    return z


HEUN_VARIABLES: tuple[str, ...] = ("flow", "edm")
"""The ODE variables of :func:`sample_heun`: u = z / (alpha + k sigma) against sigma / (alpha + k sigma), k = 1, 0."""


@torch.no_grad()
def sample_heun(
    denoise: Denoiser,
    z: Tensor,
    logsnrs: Tensor,
    variable: str = "flow",
    generator: Generators = None,
    progress: bool = False,
    callback: Callback | None = None,
    alpha_sigma: AlphaSigma = vp_alpha_sigma,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al., 2022, Algorithm 1); returns (B, ...).

    Karras et al. write the ODE of x = s x_hat, x_hat = x0 + sigma_K eps, for any scaling s and noise
    level sigma_K along the time variable. Here u = z / c against tau = sigma / c with c = alpha + k sigma,
    in which a noisy point with fixed (x0, eps) is a straight line, u = (1 - k tau) x0 + tau eps, so the
    slope is du/dtau = eps_hat - k x0_hat. ``variable`` picks k:

    - ``"flow"`` (k = 1, default): tau = sigma / (alpha + sigma) = sigmoid(-logSNR / 2) in [0, 1]; on
      the rectified flow u and tau are its own z and t and the slope is the velocity eps_hat - x0_hat
      (the flow Heun of diffusers' FlowMatchHeunDiscreteScheduler); in Karras et al.'s terms
      s = 1 - tau, sigma_K = tau / (1 - tau);
    - ``"edm"`` (k = 0): u = z / alpha against tau = sigma / alpha = exp(-logSNR / 2), EDM's sigma with
      s = alpha; slope eps_hat.

    u depends on logSNR only, so both ODEs are the same for every process; the choice is which one is
    discretised. ``"flow"`` is the default for every process because its tau is bounded: EDM's sigma
    reaches exp(10) = 22026 at the schedules' logSNR = -20 (EDM itself starts at 80), and the first
    trapezoid step from there is far off unless the grid descends slowly (Gaussian data with the exact
    denoiser, 10 uniform-t steps of the cosine schedule: worst error 3.7 in edm, 0.11 in flow).

    Each step t -> s takes an Euler step (which is DDIM), evaluates the slope there and moves with the
    average of the two slopes; the step to logSNR = +inf (tau = 0, where eps_hat is undefined) stays
    Euler, i.e. returns x0_hat. Two network evaluations per step, one for the last. Deterministic
    (``generator`` is unused).
    """
    if variable not in HEUN_VARIABLES:
        raise ValueError(f"variable must be one of {HEUN_VARIABLES}, got {variable!r}")
    if variable == "edm" and not bool(torch.isfinite(logsnrs[0])):
        raise ValueError("Heun in the edm variable needs a finite first logSNR (tau = sigma / alpha is infinite "
                         "at logSNR = -inf); start the grid at the schedule's logsnr_min or use variable='flow'")
    k = 0.0 if variable == "edm" else 1.0
    b = z.shape[0]

    def slope(z: Tensor, lam: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(du/dtau, x0_hat, eps_hat) at z (B, ...) and logSNR lam."""
        x0 = denoise(z, lam.expand(b).to(z.dtype))
        eps = (z - a.to(z.dtype) * x0) / s.to(z.dtype)
        return eps - k * x0, x0, eps

    for i in _steps(logsnrs, progress, "heun"):
        a_t, s_t = alpha_sigma(logsnrs[i].double())
        a_s, s_s = alpha_sigma(logsnrs[i + 1].double())
        c_t, c_s = a_t + k * s_t, a_s + k * s_s
        d_t, x0, eps = slope(z, logsnrs[i], a_t, s_t)
        # the Euler step in u, c_s (z_t / c_t + (tau_s - tau_t) d_t), is DDIM's z_s; written as DDIM it
        # never forms u = z / c (2e4 z at logSNR = -20 in edm), whose float32 rounding would swamp the step
        z_euler = a_s.to(z.dtype) * x0 + s_s.to(z.dtype) * eps
        if s_s > 0:  # the corrector needs eps_hat at s, which does not exist at sigma = 0
            d_s, _, _ = slope(z_euler, logsnrs[i + 1], a_s, s_s)
            # u_s = u_t + dtau (d_t + d_s) / 2 = u_euler + dtau (d_s - d_t) / 2
            z = z_euler + (0.5 * c_s * (s_s / c_s - s_t / c_t)).to(z.dtype) * (d_s - d_t)
        else:
            z = z_euler
        if callback is not None:
            callback(i, z, x0)
    return z


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddim": sample_ddim,
    "ancestral": sample_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "heun": sample_heun,
}
"""Every sampler by name; each takes ``(denoise, z, logsnrs, generator=, progress=, callback=, alpha_sigma=)``."""


def run_sampler(
    name: str,
    denoise: Denoiser,
    z: Tensor,
    logsnrs: Tensor,
    eta: float = 0.0,
    generator: Generators = None,
    progress: bool = False,
    callback: Callback | None = None,
    alpha_sigma: AlphaSigma = vp_alpha_sigma,
) -> Tensor:
    """``SAMPLERS[name]`` on z (B, ...) -> (B, ...); ``eta`` goes to DDIM only (the others have no such knob)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    extra = {"eta": eta} if name == "ddim" else {}
    return SAMPLERS[name](denoise, z, logsnrs, generator=generator, progress=progress, callback=callback,
                          alpha_sigma=alpha_sigma, **extra)
