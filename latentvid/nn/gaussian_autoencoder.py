"""A diagonal Gaussian posterior and the first-stage base class built on it (latent scale / shift).

Latents are (B, C, t, h, w). ``GaussianAutoencoder`` is shared by ``CausalVAE3D`` and Video LDM's
``TemporalDecoderVAE``: subclasses give the raw posterior and decoder, it adds the scaled-latent
``FirstStage`` contract, the training forward pass and the scale estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from latentvid.nn.first_stage import FirstStage

class DiagonalGaussian:
    """Diagonal Gaussian posterior q(z | x) over latents (B, C, t, h, w).

    Args:
        mean: (B, C, t, h, w).
        logvar: (B, C, t, h, w), clamped to [-30, 20] so exp() stays finite.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} shapes differ")
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """moments (B, 2C, ...) -> mean = first C channels, logvar = last C."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised sample mean + std * eps, (B, C, t, h, w); eps drawn from ``generator``."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mean, (B, C, t, h, w)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over all latent dimensions, (B,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(dim=1)


class GaussianAutoencoder(FirstStage):
    """A first stage with a diagonal Gaussian posterior and a stored latent scale / shift.

    Subclasses implement ``encode_posterior(video) -> DiagonalGaussian`` over raw latents and
    ``decode_raw(z) -> video``; this class adds the ``FirstStage`` contract on *scaled* latents
    ``(z - shift) * scale``, the training forward pass and the scale estimate. ``scale`` and
    ``shift`` are buffers, so they are saved in and restored from checkpoints.

    Args:
        scale: latent scale (1 / std of raw latents), used when no checkpoint overrides it.
        shift: latent shift (mean of raw latents), used when no checkpoint overrides it.
    """

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        if scale == 0:
            raise ValueError("scale must be non-zero (decode divides by it)")
        # Buffers, not floats: the scale learnt for a checkpoint travels with it.
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("shift", torch.tensor(float(shift)))

    def encode_posterior(self, video: torch.Tensor) -> DiagonalGaussian:
        """Video (B, 3, T, H, W) -> raw posterior over (B, C, t, h, w)."""
        raise NotImplementedError

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> video (B, 3, T, H, W)."""
        raise NotImplementedError

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> scaled latents (B, C, t, h, w).

        With a ``generator`` the latents are a posterior sample drawn from it; without one, the
        posterior mean (deterministic). Scaled as ``(z - shift) * scale``.
        """
        posterior = self.encode_posterior(video)
        z = posterior.mode() if generator is None else posterior.sample(generator)
        return (z - self.shift.to(z.dtype)) * self.scale.to(z.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, t, h, w) -> video (B, 3, 1 + (t - 1) * tf, h * sf, w * sf)."""
        z = latents / self.scale.to(latents.dtype) + self.shift.to(latents.dtype)
        return self.decode_raw(z)

    # ---- training / calibration --------------------------------------------------------------

    def forward(
        self, video: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Video (B, 3, T, H, W) -> (reconstruction (B, 3, T, H, W), raw posterior).

        Decodes a posterior sample (drawn from ``generator``) or, with ``sample_posterior=False``,
        the mean. A trainer adds its reconstruction loss and ``posterior.kl()`` (B,).
        """
        posterior = self.encode_posterior(video)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode_raw(z), posterior

    @torch.no_grad()
    def estimate_scale(
        self,
        batches: Iterable[torch.Tensor],
        use_shift: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[float, float]:
        """Set ``scale`` = 1 / std and ``shift`` = mean of the raw latents of ``batches``.

        Args:
            batches: videos (B, 3, T, H, W); all their latent values are pooled.
            use_shift: estimate the mean shift; with False the shift is set to 0 (the std is
                still taken around the mean).
            generator: encode with posterior samples from it; without one, posterior means
                (what ``encode`` returns without a generator).

        Returns:
            (scale, shift) as stored.
        """
        count, total, total_sq = 0, 0.0, 0.0
        device = self.scale.device
        for video in batches:
            posterior = self.encode_posterior(video.to(device))
            z = (posterior.mode() if generator is None else posterior.sample(generator)).double()
            count += z.numel()
            total += float(z.sum())
            total_sq += float(z.pow(2).sum())
        if count == 0:
            raise ValueError("estimate_scale got no batches")
        mean = total / count
        std = math.sqrt(max(total_sq / count - mean**2, 0.0))
        if std == 0:
            raise ValueError("estimate_scale: the latents are constant, cannot scale them to unit std")
        self.scale.fill_(1.0 / std)
        self.shift.fill_(mean if use_shift else 0.0)
        return float(self.scale), float(self.shift)
