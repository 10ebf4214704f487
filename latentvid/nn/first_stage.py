"""First-stage autoencoders: the interface the diffusion model sees, and the pixel-space identity.

The diffusion model never calls a VAE directly; it calls ``encode`` / ``decode`` of a
``FirstStage``, which already applies the latent scale (and shift) so that latents have roughly
unit variance. Pixel-space models (the cascade's super-resolution stages, the CPU demo) use
``IdentityFirstStage``.
"""

from __future__ import annotations

import torch
from torch import nn


class FirstStage(nn.Module):
    """Interface of a frozen first stage.

    Attributes subclasses set:
        latent_channels: channels C of the latents.
        spatial_factor: H / h, the spatial down-sampling of ``encode``.
        temporal_factor: frames per latent frame after the first (causal VAEs map
            ``1 + k * temporal_factor`` frames to ``1 + k`` latent frames; 1 = no temporal compression).
    """

    latent_channels: int
    spatial_factor: int = 1
    temporal_factor: int = 1

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> scaled latents (B, C, t, h, w)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, t, h, w) -> video (B, 3, T, H, W), roughly in [-1, 1]."""
        raise NotImplementedError

    def latent_frames(self, num_frames: int) -> int:
        """Number of latent frames for a clip of ``num_frames`` frames."""
        if self.temporal_factor == 1:
            return num_frames
        if (num_frames - 1) % self.temporal_factor:
            raise ValueError(
                f"num_frames={num_frames} does not fit the first stage's temporal factor "
                f"{self.temporal_factor}: use 1 + k * {self.temporal_factor} frames"
            )
        return 1 + (num_frames - 1) // self.temporal_factor

    def latent_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """Frame mask (B, T) bool -> latent frame mask (B, t) bool.

        A latent frame is valid when any frame it summarises is valid (frame 0 alone maps to latent 0).
        """
        if self.temporal_factor == 1:
            return frame_mask
        first, rest = frame_mask[:, :1], frame_mask[:, 1:]
        rest = rest.reshape(rest.shape[0], -1, self.temporal_factor).any(dim=-1)  # (B, k)
        return torch.cat([first, rest], dim=1)


class IdentityFirstStage(FirstStage):
    """Pixel space: ``encode`` and ``decode`` are the identity (optionally scaled).

    Args:
        channels: number of video channels (3 for RGB).
        scale: multiplier applied on encode (divided on decode); 1.0 keeps [-1, 1] pixels.
    """

    def __init__(self, channels: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        self.latent_channels = channels
        self.scale = scale

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W) times ``scale``."""
        return video * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W) divided by ``scale``."""
        return latents / self.scale
