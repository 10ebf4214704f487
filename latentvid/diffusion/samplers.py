"""Samplers: pure functions over one denoiser interface.

Every sampler is ``sample_x(denoise, z, logsnrs, ..., generator=None, progress=False, callback=None)``:

- ``denoise(z, logsnr) -> x0_hat``: z (B, ...) noisy input, logsnr (B,) -> clean estimate (B, ...).
  Wrap eps/v networks with :func:`latentvid.diffusion.parameterization.prediction_to_x0` and add
  guidance with :mod:`latentvid.diffusion.guidance`; samplers never see the parameterisation.
- ``logsnrs`` (N + 1,): the time grid expressed as logSNR(t_i), increasing (noise -> data); the
  last entry may be +inf, meaning "return the clean estimate". Build it with a schedule's
  ``sampling_logsnrs(steps)``, or from any discrete model's alphas.
- ``z`` (B, ...): the starting noise at logsnrs[0], usually ``torch.randn``.
- ``generator``: the source of fresh noise (ancestral / eta > 0), on z's device.
- ``alpha_sigma``: the process family, logSNR -> (alpha, sigma): the schedule's ``alpha_sigma``
  (variance preserving by default; :func:`~latentvid.diffusion.schedule.rf_alpha_sigma` for
  rectified flow). The updates are written for any (alpha, sigma), so z stays in the model's own
  coordinates; DDIM is then Euler on the probability-flow ODE in those coordinates (on the
  rectified flow, z_s = z_t + (s - t) (eps_hat - x0_hat)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentvid.diffusion.schedule import AlphaSigma
from latentvid.diffusion.schedule import alpha_sigma as vp_alpha_sigma

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]


def _steps(logsnrs: Tensor, progress: bool, desc: str):
    if logsnrs.ndim != 1 or logsnrs.numel() < 2:
        raise ValueError(f"logsnrs must be a 1-D grid of at least 2 values, got shape {tuple(logsnrs.shape)}")
    if not bool((logsnrs[1:] > logsnrs[:-1]).all()):
        raise ValueError("logsnrs must increase strictly (from noise towards data)")
    return tqdm(range(len(logsnrs) - 1), desc=desc, disable=not progress, leave=False)


def _noise(z: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    z: Tensor,
    logsnrs: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
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
    generator: torch.Generator | None = None,
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


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddim": sample_ddim, "ancestral": sample_ancestral}
