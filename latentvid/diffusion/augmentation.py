"""Conditioning augmentation for the super-resolution stages (Ho et al., 2022, cascaded diffusion).

An SR stage is conditioned on a low-resolution video; at sampling time that video comes from the
previous stage and carries its errors. Training on a *noised* conditioning, at a level the network
is told about, makes the stage robust to them. The noise is the forward process itself, in the
library's one currency: a level s in [0, 1] is a time of the stage's schedule, and

    c_s = alpha(s) c + sigma(s) eps,     (alpha, sigma) = the stage's schedule's alpha_sigma(logSNR(s))

(variance preserving: alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR); rectified flow:
alpha = 1 - s, sigma = s), with logSNR(s) handed to the network as an extra scalar condition. Training draws s at random
(:func:`draw_levels`); sampling uses one fixed, configurable s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latentvid.diffusion.parameterization import diffuse
from latentvid.diffusion.schedule import AlphaSigma, alpha_sigma

DISTRIBUTIONS: tuple[str, ...] = ("uniform", "logsnr_uniform")


def draw_levels(
    n: int,
    low: float,
    high: float,
    distribution: str = "uniform",
    logsnr_fn=None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random augmentation levels s (n,) in [low, high].

    ``"uniform"``: s ~ U(low, high). ``"logsnr_uniform"``: logSNR(s) uniform between logSNR(high)
    and logSNR(low), i.e. equal weight per decade of SNR (more draws at small noise); it needs
    ``logsnr_fn`` (the schedule's t -> logSNR) and inverts it by bisection, so any monotone
    schedule works. ``generator`` (on ``device``) makes the draw reproducible.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"augmentation levels need 0 <= low <= high <= 1, got low={low}, high={high}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"augmentation distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=device)
    if distribution == "uniform" or low == high:
        return low + (high - low) * u
    if logsnr_fn is None:
        raise ValueError("distribution='logsnr_uniform' needs the schedule's logsnr function")
    lam_lo = logsnr_fn(torch.tensor(high, dtype=torch.float64))  # logSNR decreases with s
    lam_hi = logsnr_fn(torch.tensor(low, dtype=torch.float64))
    target = lam_hi + (lam_lo - lam_hi) * u.double()
    return invert_monotone(logsnr_fn, target, low, high).to(u.dtype)


def invert_monotone(fn, values: Tensor, low: float, high: float, iters: int = 60) -> Tensor:
    """s (...) in [low, high] with fn(s) = values for a decreasing ``fn`` (bisection, float64)."""
    lo = torch.full_like(values, low, dtype=torch.float64)
    hi = torch.full_like(values, high, dtype=torch.float64)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = fn(mid) > values  # still too little noise: move right
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def augment(cond: Tensor, logsnr: Tensor, noise: Tensor, process: AlphaSigma = alpha_sigma) -> Tensor:
    """Noise the conditioning to level logSNR: alpha c + sigma eps, per sample.

    Args:
        cond: conditioning (B, ...), e.g. an upsampled low-resolution video (B, 3, T, H, W).
        logsnr: (B,) level of each sample; +inf leaves the conditioning untouched.
        noise: standard normal noise shaped like ``cond``.
        process: logSNR -> (alpha, sigma), the stage schedule's ``alpha_sigma`` (default: VP).

    Returns:
        (B, ...) noised conditioning.
    """
    if logsnr.shape != cond.shape[:1] or noise.shape != cond.shape:
        raise ValueError(f"augment: cond {tuple(cond.shape)} needs logsnr ({cond.shape[0]},) and noise of the same "
                         f"shape, got {tuple(logsnr.shape)} and {tuple(noise.shape)}")
    alpha, sigma = process(logsnr.to(cond.dtype))
    return diffuse(cond, noise, alpha, sigma)


@dataclass(frozen=True)
class ConditioningAugmentation:
    """How an SR stage noises its low-resolution conditioning (a config object for LightningCLI).

    Levels are times s in [0, 1] of the stage's own noise schedule (s = 0: clean, s = 1: pure noise).

    Args:
        train_min: lowest training level.
        train_max: highest training level.
        distribution: ``"uniform"`` in s, or ``"logsnr_uniform"`` (uniform in logSNR(s)).
        sample_level: the fixed level used at sampling time (overridable per call).
    """

    train_min: float = 0.0
    train_max: float = 0.5
    distribution: str = "uniform"
    sample_level: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.train_min <= self.train_max <= 1.0:
            raise ValueError(f"augmentation needs 0 <= train_min <= train_max <= 1, got "
                             f"train_min={self.train_min}, train_max={self.train_max}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"augmentation.distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        if not 0.0 <= self.sample_level <= 1.0:
            raise ValueError(f"augmentation.sample_level must be in [0, 1], got {self.sample_level}")

    def training_levels(self, n: int, logsnr_fn, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> Tensor:
        """Random levels s (n,) for one training batch."""
        return draw_levels(n, self.train_min, self.train_max, self.distribution, logsnr_fn, generator, device)
