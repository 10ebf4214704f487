"""3D patch discriminator for adversarial VAE training: video (B, C, T, H, W) -> patch logits.

A PatchGAN-style stack of 3D convolutions (taming-transformers / LDM use its 2D form; MAGVIT and
Open-Sora use 3D ones): each output logit judges one space-time patch of the input, so the
adversarial signal is about local texture and short-range motion rather than global layout.
Only the network lives here; the hinge losses and the adaptive weight are training logic and
live in :mod:`latentvid.models.autoencoder`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32, at least 2 channels per group where possible."""
    return math.gcd(32, max(channels // 2, 1))


class PatchDiscriminator3D(nn.Module):
    """Stack of strided 3D convolutions ending in one logit per space-time patch.

    Layout: conv (stride 2 in H, W) + LeakyReLU, then ``num_layers - 1`` blocks of conv (stride 2
    in H, W; channels doubled up to ``8 * base_channels``) + GroupNorm + LeakyReLU, then a
    stride-1 conv block and a stride-1 conv to one channel. Kernels are 3 x 3 x 3 with padding 1,
    so a clip of T frames and H x W pixels gives logits of shape
    (B, 1, T', H / 2**num_layers, W / 2**num_layers), with T' = T halved (rounding up) at each
    of the first ``temporal_layers`` blocks. GroupNorm instead of PatchGAN's BatchNorm: VAE
    batches are small and mix real and fake statistics otherwise.

    Args:
        in_channels: video channels (3 for RGB).
        base_channels: channels after the first convolution.
        num_layers: number of stride-2 (down-sampling) convolutions; H and W should be divisible
            by ``2 ** num_layers``.
        temporal_layers: how many of the down-sampling convolutions also use stride 2 in time
            (0 keeps every frame; the time axis is never padded causally here, the discriminator
            sees whole clips).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 32,
        num_layers: int = 3,
        temporal_layers: int = 1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0 <= temporal_layers <= num_layers:
            raise ValueError(f"temporal_layers must be in [0, num_layers={num_layers}], got {temporal_layers}")
        if in_channels < 1 or base_channels < 1:
            raise ValueError(f"in_channels and base_channels must be >= 1, got {in_channels}, {base_channels}")
        self.num_layers = num_layers
        self.temporal_layers = temporal_layers

        def stride(i: int) -> tuple[int, int, int]:
            return (2 if i < temporal_layers else 1, 2, 2)

        layers: list[nn.Module] = [nn.Conv3d(in_channels, base_channels, 3, stride(0), 1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for i in range(1, num_layers):
            out = base_channels * min(2**i, 8)
            layers += [nn.Conv3d(channels, out, 3, stride(i), 1, bias=False), nn.GroupNorm(_groups(out), out),
                       nn.LeakyReLU(0.2)]
            channels = out
        out = base_channels * min(2**num_layers, 8)
        layers += [nn.Conv3d(channels, out, 3, 1, 1, bias=False), nn.GroupNorm(_groups(out), out), nn.LeakyReLU(0.2),
                   nn.Conv3d(out, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCGAN-style init (conv weights ~ N(0, 0.02), norm weights ~ N(1, 0.02)), as PatchGAN uses."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, C, T, H, W) in [-1, 1] -> patch logits (B, 1, T', H', W') (real > 0 > fake)."""
        if video.ndim != 5:
            raise ValueError(f"expected video (B, C, T, H, W), got shape {tuple(video.shape)}")
        return self.net(video)
