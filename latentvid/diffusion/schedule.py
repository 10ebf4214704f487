"""Continuous-time noise schedules on t in [0, 1] (t = 0 clean, t = 1 pure noise).

Everything is expressed through logSNR(t) = log(alpha_t^2 / sigma_t^2), the one noise currency of
latentvid; alpha and sigma follow from it with alpha^2 + sigma^2 = 1 (variance preserving):

    alpha^2 = sigmoid(logSNR),    sigma^2 = sigmoid(-logSNR).

References: the continuous cosine schedule of Nichol & Dhariwal (2021) as used by VDM / Imagen
Video, logSNR(t) = -2 log tan(pi t / 2); the resolution shift of simple diffusion (Hoogeboom et
al., 2023) adds 2 log(shift) to logSNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """logSNR (...) -> (alpha, sigma), each (...), with alpha^2 + sigma^2 = 1.

    Computed from sigmoids so that +-inf map exactly to (1, 0) and (0, 1).
    """
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def logsnr_from_alpha_sigma(alpha: Tensor, sigma: Tensor) -> Tensor:
    """(alpha, sigma) -> logSNR = 2 log(alpha / sigma)."""
    return 2.0 * (torch.log(alpha) - torch.log(sigma))


def cosine_logsnr(t: Tensor, logsnr_min: float = -20.0, logsnr_max: float = 20.0, shift: float = 1.0) -> Tensor:
    """Cosine schedule: logSNR(t) = -2 log tan(pi t / 2) + 2 log(shift), t (...) in [0, 1].

    ``t`` is first mapped affinely onto [t_min, t_max] so that the unshifted logSNR spans exactly
    [logsnr_min, logsnr_max] (finite at both ends, as in VDM / simple diffusion). ``shift`` < 1 makes
    every t noisier, which suits higher resolutions (use base_resolution / resolution).
    """
    t_min = math.atan(math.exp(-0.5 * logsnr_max)) * 2.0 / math.pi
    t_max = math.atan(math.exp(-0.5 * logsnr_min)) * 2.0 / math.pi
    tt = t_min + t.to(torch.float64) * (t_max - t_min)
    logsnr = -2.0 * torch.log(torch.tan(0.5 * math.pi * tt)) + 2.0 * math.log(shift)
    return logsnr.to(t.dtype if t.is_floating_point() else torch.float32)


def cosine_t_from_logsnr(logsnr: Tensor, logsnr_min: float = -20.0, logsnr_max: float = 20.0, shift: float = 1.0) -> Tensor:
    """Inverse of :func:`cosine_logsnr` (values outside the range give t outside [0, 1])."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max)) * 2.0 / math.pi
    t_max = math.atan(math.exp(-0.5 * logsnr_min)) * 2.0 / math.pi
    unshifted = logsnr.to(torch.float64) - 2.0 * math.log(shift)
    tt = torch.atan(torch.exp(-0.5 * unshifted)) * 2.0 / math.pi
    return ((tt - t_min) / (t_max - t_min)).to(logsnr.dtype)


def linear_logsnr(t: Tensor, logsnr_min: float = -10.0, logsnr_max: float = 10.0) -> Tensor:
    """Linear-in-logSNR schedule: logSNR(t) = logsnr_max + t (logsnr_min - logsnr_max), t (...) in [0, 1]."""
    return logsnr_max + t * (logsnr_min - logsnr_max)


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform sampling grid (steps + 1,) from ``t_start`` (noise) down to ``t_end`` (data)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=dtype)


@dataclass(frozen=True)
class CosineSchedule:
    """The cosine schedule as a config object (LightningCLI builds it from YAML).

    Args:
        logsnr_min: logSNR at t = 1 (before the shift); alpha(1) = sqrt(sigmoid(logsnr_min)).
        logsnr_max: logSNR at t = 0 (before the shift).
        shift: multiplies the SNR by shift^2 at every t; < 1 adds noise (e.g. 64 / resolution).
    """

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    shift: float = 1.0

    def logsnr(self, t: Tensor) -> Tensor:
        """t (...) in [0, 1] -> logSNR (...)."""
        return cosine_logsnr(t, self.logsnr_min, self.logsnr_max, self.shift)

    def sampling_logsnrs(self, steps: int) -> Tensor:
        """(steps + 1,) logSNRs from t = 1 to t = 0, the last one +inf (a clean sample)."""
        lam = self.logsnr(time_grid(steps))
        lam[-1] = math.inf
        return lam


@dataclass(frozen=True)
class LinearLogSNRSchedule:
    """logSNR linear in t between ``logsnr_max`` (t = 0) and ``logsnr_min`` (t = 1)."""

    logsnr_min: float = -10.0
    logsnr_max: float = 10.0

    def logsnr(self, t: Tensor) -> Tensor:
        """t (...) in [0, 1] -> logSNR (...)."""
        return linear_logsnr(t, self.logsnr_min, self.logsnr_max)

    def sampling_logsnrs(self, steps: int) -> Tensor:
        """(steps + 1,) logSNRs from t = 1 to t = 0, the last one +inf (a clean sample)."""
        lam = self.logsnr(time_grid(steps))
        lam[-1] = math.inf
        return lam


Schedule = CosineSchedule | LinearLogSNRSchedule
