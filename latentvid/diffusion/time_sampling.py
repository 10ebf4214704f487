"""Training-time densities over t in [0, 1] (t = 1 pure noise), drawn stratified.

All three map one stratified uniform draw u (n,) (VDM's low-discrepancy times: one random offset,
n evenly spaced points) through an inverse CDF, so a batch covers its density evenly:

- ``uniform``:      t = u;
- ``logit_normal``: t = sigmoid(loc + scale Phi^-1(u)), logit(t) ~ N(loc, scale^2) (SD3's default
  for rectified flow, loc = 0, scale = 1: most draws in the middle of the trajectory);
- ``mode``:         t = 1 - u - s (cos^2(pi u / 2) - 1 + u) (SD3's "mode sampling with heavy tails";
  s > 0 favours the middle, s = 0 is uniform; monotone for -1 <= s <= 2 / (pi - 2)).

Reference: Esser et al., 2024 (SD3), sec. 3.1. The density is over t; the schedule then maps t to
logSNR, so any density works with any schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal", "mode")
MODE_SCALE_MAX = 2.0 / (math.pi - 2.0)


def stratified_uniform(n: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """(n,) in [0, 1): (u0 + i / n) mod 1 for one u0 ~ U(0, 1), on the generator's device if given."""
    device = generator.device if generator is not None else device
    u0 = torch.rand((), generator=generator, device=device)
    return (u0 + torch.arange(n, device=device) / n) % 1.0


def logit_normal_times(u: Tensor, loc: float = 0.0, scale: float = 1.0) -> Tensor:
    """u (...) in [0, 1] -> t (...) with logit(t) ~ N(loc, scale^2) when u is uniform."""
    normal = math.sqrt(2.0) * torch.special.erfinv((2.0 * u - 1.0).clamp(-1.0, 1.0))
    return torch.sigmoid(loc + scale * normal)


def mode_times(u: Tensor, scale: float = 1.29) -> Tensor:
    """u (...) in [0, 1] -> t (...) = 1 - u - scale (cos^2(pi u / 2) - 1 + u) (SD3 eq. 20)."""
    return 1.0 - u - scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)


@dataclass(frozen=True)
class TimeSampling:
    """Which t a training step draws (a config object for LightningCLI).

    Args:
        density: ``"uniform"``, ``"logit_normal"`` or ``"mode"``.
        loc: logit-normal location (< 0 favours low noise).
        scale: logit-normal scale (> 0).
        mode_scale: the mode density's s, in [-1, 2 / (pi - 2)] (SD3 found 1.29 good).
    """

    density: str = "uniform"
    loc: float = 0.0
    scale: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self) -> None:
        if self.density not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling.density must be one of {TIME_SAMPLINGS}, got {self.density!r}")
        if self.scale <= 0:
            raise ValueError(f"time_sampling.scale must be > 0, got {self.scale}")
        if not -1.0 <= self.mode_scale <= MODE_SCALE_MAX:
            raise ValueError(f"time_sampling.mode_scale must be in [-1, {MODE_SCALE_MAX:.4f}] (monotone), "
                             f"got {self.mode_scale}")

    def times(self, u: Tensor) -> Tensor:
        """u (...) uniform in [0, 1] -> t (...) of this density."""
        if self.density == "logit_normal":
            return logit_normal_times(u, self.loc, self.scale)
        if self.density == "mode":
            return mode_times(u, self.mode_scale)
        return u

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """(n,) stratified training times in [0, 1]."""
        return self.times(stratified_uniform(n, generator, device))
