"""Continuous-time noise schedules on t in [0, 1] (t = 0 clean, t = 1 pure noise).

Everything is expressed through logSNR(t) = log(alpha_t^2 / sigma_t^2), the one noise currency of
latentvid, and each schedule says which process its (alpha, sigma) belong to through its
``alpha_sigma(logsnr)`` method. Two families share that currency:

- variance preserving (cosine, linear-logSNR, a pretrained model's discrete table), alpha^2 + sigma^2 = 1:
  alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR)  (:func:`alpha_sigma`);
- rectified flow, z_t = (1 - t) x0 + t eps, so alpha + sigma = 1 and logSNR = 2 log((1 - t) / t):
  alpha = sigmoid(logSNR / 2), sigma = sigmoid(-logSNR / 2)  (:func:`rf_alpha_sigma`).

A flow z_RF is the VP variable at the same logSNR scaled by sqrt(alpha^2 + sigma^2), so a network
conditioned on logSNR and every sampler written in (alpha, sigma) serve both families.

References: the continuous cosine schedule of Nichol & Dhariwal (2021) as used by VDM / Imagen
Video, logSNR(t) = -2 log tan(pi t / 2); the resolution shift of simple diffusion (Hoogeboom et
al., 2023) adds 2 log(shift) to logSNR; rectified flow (Liu et al., 2022; Esser et al., 2024 (SD3))
with SD3's shift t -> shift t / (1 + (shift - 1) t), i.e. logSNR - 2 log(shift).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """logSNR (...) -> (alpha, sigma), each (...), with alpha^2 + sigma^2 = 1.

    Computed from sigmoids so that +-inf map exactly to (1, 0) and (0, 1).
    """
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def rf_alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """logSNR (...) -> rectified-flow (alpha, sigma) = (1 - t, t), each (...), with alpha + sigma = 1.

    From logSNR = 2 log((1 - t) / t): t = sigmoid(-logSNR / 2); +-inf map exactly to (1, 0) and (0, 1).
    """
    return torch.sigmoid(0.5 * logsnr), torch.sigmoid(-0.5 * logsnr)


AlphaSigma = Callable[[Tensor], tuple[Tensor, Tensor]]
"""A process family: logSNR (...) -> (alpha, sigma); :func:`alpha_sigma` (VP) or :func:`rf_alpha_sigma`."""


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


def rf_logsnr(t: Tensor, logsnr_min: float = -20.0, logsnr_max: float = 20.0, shift: float = 1.0) -> Tensor:
    """Rectified flow: logSNR(t) = 2 log((1 - t) / t) - 2 log(shift), t (...) in [0, 1].

    ``t`` is first mapped affinely onto [t_min, t_max] so that the unshifted logSNR spans exactly
    [logsnr_min, logsnr_max] (finite ends, as for the cosine schedule). ``shift`` is SD3's: > 1 makes
    every t noisier, t -> shift t / (1 + (shift - 1) t) (note: the opposite sense of the cosine shift).
    """
    t_min, t_max = _rf_t_range(logsnr_min, logsnr_max)
    tt = t_min + t.to(torch.float64) * (t_max - t_min)
    logsnr = 2.0 * (torch.log1p(-tt) - torch.log(tt)) - 2.0 * math.log(shift)
    return logsnr.to(t.dtype if t.is_floating_point() else torch.float32)


def rf_t_from_logsnr(logsnr: Tensor, logsnr_min: float = -20.0, logsnr_max: float = 20.0, shift: float = 1.0) -> Tensor:
    """Inverse of :func:`rf_logsnr` (values outside the range give t outside [0, 1])."""
    t_min, t_max = _rf_t_range(logsnr_min, logsnr_max)
    tt = torch.sigmoid(-0.5 * (logsnr.to(torch.float64) + 2.0 * math.log(shift)))
    return ((tt - t_min) / (t_max - t_min)).to(logsnr.dtype)


def _rf_t_range(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    """The flow times (t_min, t_max) whose logSNRs are logsnr_max and logsnr_min."""
    return 1.0 / (1.0 + math.exp(0.5 * logsnr_max)), 1.0 / (1.0 + math.exp(0.5 * logsnr_min))


def token_shift(tokens: Tensor | float, base_tokens: float, base_shift: float = 1.0) -> Tensor | float:
    """Resolution- and length-dependent shift: base_shift * sqrt(tokens / base_tokens).

    SD3 (Esser et al., 2024, sec. 5.3.2) shifts t by sqrt(m / n) for m pixels against a base of n;
    Open-Sora 1.2 multiplies the spatial and temporal ratios, which is the same thing counted in
    latent tokens (frames x height x width): a clip with 4x the tokens at the same noise level has
    its signal averaged over 4x as many values, so it needs twice the noise scale to look as noisy.
    ``tokens`` may be per sample (B,) (joint image-video batches).
    """
    if base_tokens <= 0:
        raise ValueError(f"base_tokens must be > 0, got {base_tokens}")
    ratio = tokens / base_tokens
    return base_shift * (ratio.sqrt() if isinstance(ratio, Tensor) else math.sqrt(ratio))


def log_linear_shift(tokens: Tensor | float, base_tokens: float, base_shift: float, max_tokens: float,
                     max_shift: float) -> Tensor | float:
    """Shift whose log is linear in the latent tokens: ``base_shift`` at ``base_tokens``, ``max_shift`` at
    ``max_tokens`` (extrapolated beyond). Flux's and LTX-Video's resolution-dependent shift, e^mu with mu
    linear in the sequence length, in shift units. ``tokens`` may be per sample (B,)."""
    slope = (math.log(max_shift) - math.log(base_shift)) / (max_tokens - base_tokens)
    log_shift = math.log(base_shift) + slope * (tokens - base_tokens)
    return log_shift.exp() if isinstance(log_shift, Tensor) else math.exp(log_shift)


def time_grid(steps: int, t_start: float = 1.0, t_end: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform sampling grid (steps + 1,) from ``t_start`` (noise) down to ``t_end`` (data)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=dtype)


SPACINGS: tuple[str, ...] = ("time", "logsnr", "karras")
"""The sampling grids of :func:`sampling_grid` (``"time"``, uniform in the schedule's t, is the default)."""


GRID_LOGSNR_RANGE: tuple[float, float] = (-8.0, 8.0)
"""Where the ``"logsnr"`` and ``"karras"`` grids start and end (clipped to the schedule's own range).

A schedule's full range wastes few-step grids at both ends: the cosine and flow schedules span logSNR
[-20, 20], where alpha (at -20) and sigma (at +20) are 5e-5, so the first and last steps move
nothing a decoder or the eye can see. [-8, 8] (alpha, sigma about 0.018) is where shapes' base model
gained: DPM-Solver++(2M) at 10 steps on uniform logSNR [-8, 8] scored as DDIM at 50 on the held-out
probe, against 9 points of colour lost on [-20, 20] (README, "Fast sampling")."""


def sampling_grid(logsnr: Callable[[Tensor], Tensor], steps: int, spacing: str = "time", rho: float = 7.0,
                  logsnr_range: tuple[float, float] | None = GRID_LOGSNR_RANGE) -> Tensor:
    """A sampling grid (steps + 1,) float32 of logSNRs from t = 1 (noise) towards t = 0, the last one +inf.

    ``logsnr`` is the schedule's t -> logSNR. ``spacing``:

    - ``"time"``: t evenly spaced from 1 to 0, the t = 0 point replaced by +inf (a clean sample);
    - ``"logsnr"``: ``steps`` logSNRs evenly spaced from logSNR(1) to logSNR(0), then +inf (DPM-Solver's
      uniform-lambda grid, lambda = logSNR / 2);
    - ``"karras"``: Karras et al. (2022, eq. 5) on sigma / alpha = exp(-logSNR / 2): ``steps`` values
      with (sigma / alpha)^(1 / rho) evenly spaced from the value at t = 1 to the one at t = 0, then
      +inf (their sigma_N = 0). rho = 7 spends more steps at low noise; rho -> inf is ``"logsnr"``.

    ``"logsnr"`` and ``"karras"`` evaluate the network at both ends of their range, as Karras et al.'s
    grid does; the time grid's last evaluation is at t = 1 / steps instead. Their range is the
    schedule's [logSNR(1), logSNR(0)] intersected with ``logsnr_range`` (``GRID_LOGSNR_RANGE``; None:
    the schedule's whole range). A grid is logSNRs, so every process (VP or flow) and every sampler
    takes it; these two are computed in float64.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if spacing == "time":
        lam = logsnr(time_grid(steps))
        lam[-1] = math.inf
        return lam
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    lam_noise, lam_data = logsnr(torch.tensor([1.0, 0.0], dtype=torch.float64)).double().tolist()
    if logsnr_range is not None:
        lo, hi = logsnr_range
        if not lo < hi:
            raise ValueError(f"logsnr_range must be (low, high) with low < high, got {logsnr_range}")
        lam_noise, lam_data = max(lam_noise, lo), min(lam_data, hi)
        if not lam_noise < lam_data:
            raise ValueError(f"logsnr_range {logsnr_range} misses the schedule's range "
                             f"[{lam_noise:g}, {lam_data:g}]")
    if spacing == "logsnr":
        lam = torch.linspace(lam_noise, lam_data, steps, dtype=torch.float64)
    else:
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        # (sigma / alpha)^(1 / rho) = exp(-logSNR / (2 rho)), evenly spaced
        ends = [math.exp(-lam / (2.0 * rho)) for lam in (lam_noise, lam_data)]
        lam = -2.0 * rho * torch.linspace(*ends, steps, dtype=torch.float64).log()
    return torch.cat([lam, torch.tensor([math.inf], dtype=torch.float64)]).float()


class VPSchedule:
    """What the variance-preserving schedules share: a subclass defines ``logsnr(t)``."""

    def logsnr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def alpha_sigma(self, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        """logSNR (...) -> (alpha, sigma) of this (variance-preserving) process."""
        return alpha_sigma(logsnr)

    def sampling_logsnrs(self, steps: int, spacing: str = "time") -> Tensor:
        """(steps + 1,) logSNRs from t = 1 towards t = 0, the last one +inf (a clean sample); ``spacing``
        one of ``SPACINGS`` (:func:`sampling_grid`)."""
        return sampling_grid(self.logsnr, steps, spacing)


@dataclass(frozen=True)
class CosineSchedule(VPSchedule):
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


@dataclass(frozen=True)
class LinearLogSNRSchedule(VPSchedule):
    """logSNR linear in t between ``logsnr_max`` (t = 0) and ``logsnr_min`` (t = 1)."""

    logsnr_min: float = -10.0
    logsnr_max: float = 10.0

    def logsnr(self, t: Tensor) -> Tensor:
        """t (...) in [0, 1] -> logSNR (...)."""
        return linear_logsnr(t, self.logsnr_min, self.logsnr_max)


@dataclass(frozen=True)
class RectifiedFlowSchedule:
    """Rectified flow / flow matching, z_t = (1 - t) x0 + t eps (not variance preserving).

    Args:
        logsnr_min: logSNR at t = 1 before the shift (t_max = sigmoid(-logsnr_min / 2), just under 1).
        logsnr_max: logSNR at t = 0 before the shift.
        shift: SD3's time shift, > 1 noisier (SD3 at 1024 px: 3; Wan 2.1: 5 for sampling); a fixed
            multiple of the noise-to-signal ratio at every t (logSNR - 2 log(shift)).
        base_tokens: if set, the shift also grows with the clip's latent tokens (frames x h x w) as
            ``shift * sqrt(tokens / base_tokens)`` (:func:`token_shift`); callers pass ``tokens``.
        max_tokens, max_shift: with ``base_tokens``, the shift's log grows linearly in the tokens
            instead, from ``shift`` at ``base_tokens`` to ``max_shift`` at ``max_tokens``
            (:func:`log_linear_shift`): the "dynamic shifting" of Flux and LTX-Video, whose scheduler
            configs give the logs, ``base_shift`` / ``max_shift`` (so ``shift = e^base_shift``).
    """

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    shift: float = 1.0
    base_tokens: int | None = None
    max_tokens: int | None = None
    max_shift: float | None = None

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"RectifiedFlowSchedule.shift must be > 0, got {self.shift}")
        if self.base_tokens is not None and self.base_tokens <= 0:
            raise ValueError(f"RectifiedFlowSchedule.base_tokens must be > 0 or null, got {self.base_tokens}")
        if (self.max_tokens is None) != (self.max_shift is None):
            raise ValueError("RectifiedFlowSchedule: max_tokens and max_shift go together (the log-linear shift), "
                             f"got max_tokens={self.max_tokens}, max_shift={self.max_shift}")
        if self.max_tokens is not None:
            if self.base_tokens is None or self.max_tokens <= self.base_tokens:
                raise ValueError(f"RectifiedFlowSchedule.max_tokens = {self.max_tokens} needs base_tokens below it, "
                                 f"got base_tokens={self.base_tokens}")
            if self.max_shift <= 0:
                raise ValueError(f"RectifiedFlowSchedule.max_shift must be > 0, got {self.max_shift}")

    def total_shift(self, tokens: Tensor | float | None = None) -> Tensor | float:
        """The shift in effect for clips of ``tokens`` latent tokens (scalar or (B,))."""
        if self.base_tokens is None or tokens is None:
            return self.shift
        if self.max_tokens is not None:
            return log_linear_shift(tokens, self.base_tokens, self.shift, self.max_tokens, self.max_shift)
        return token_shift(tokens, self.base_tokens, self.shift)

    def logsnr(self, t: Tensor, tokens: Tensor | float | None = None) -> Tensor:
        """t (...) in [0, 1] -> logSNR (...); ``tokens`` (scalar or t's shape) only with ``base_tokens``."""
        lam = rf_logsnr(t, self.logsnr_min, self.logsnr_max)
        shift = self.total_shift(tokens)
        if isinstance(shift, Tensor):
            return lam - 2.0 * shift.to(lam).log()
        return lam - 2.0 * math.log(shift)

    def alpha_sigma(self, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        """logSNR (...) -> (alpha, sigma) = (1 - t, t) of the flow."""
        return rf_alpha_sigma(logsnr)

    def sampling_logsnrs(self, steps: int, tokens: float | None = None, spacing: str = "time") -> Tensor:
        """(steps + 1,) logSNRs from t = 1 towards t = 0, the last one +inf (a clean sample); ``spacing``
        one of ``SPACINGS`` (:func:`sampling_grid`)."""
        return sampling_grid(lambda t: self.logsnr(t, tokens), steps, spacing)


Schedule = CosineSchedule | LinearLogSNRSchedule | RectifiedFlowSchedule
