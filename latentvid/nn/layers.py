"""Building blocks of the factorized space-time U-Net.

Everything here keeps video features as ``(B, C, T, H, W)``. Spatial operators act on each frame
alone; the only operators that mix frames are the temporal convolution of ``PseudoConv3d`` (and the
temporal attention in ``attention.py``), and both honour a frame mask ``(B, T)`` bool (True = valid):
valid frames' outputs never depend on masked frames' content.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def frame_mask_5d(frame_mask: Tensor) -> Tensor:
    """Frame mask (B, T) bool -> (B, 1, T, 1, 1), broadcastable against (B, C, T, H, W)."""
    return frame_mask[:, None, :, None, None]


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm applied to each frame separately, so frames never share statistics.

    Folding T into the batch keeps one frame's normalisation independent of the others (a masked
    frame cannot shift a valid frame's mean) and makes a T-frame clip behave like T images.

    Args:
        num_groups: number of channel groups; must divide ``num_channels``.
        num_channels: feature channels C.
        eps: added to the variance.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        if num_groups <= 0 or num_channels % num_groups:
            raise ValueError(f"norm_groups={num_groups} must divide the channel count {num_channels}")
        super().__init__(num_groups, num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T, H, W)."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        out = super().forward(frames)
        return out.reshape(b, t, c, h, w).transpose(1, 2)  # (B, C, T, H, W)


class PseudoConv3d(nn.Module):
    """A 1x3x3 spatial convolution per frame followed by a kernel-3 convolution over time.

    The temporal convolution runs per spatial position (a ``Conv3d`` with kernel (3, 1, 1) is
    exactly a ``Conv1d`` over T applied at every pixel). It starts as the identity (Dirac weight,
    zero bias), so at initialisation the layer equals the spatial convolution alone and a pretrained
    image model's behaviour is preserved. Before the temporal convolution, masked frames are set
    to zero: they then act exactly like the zero padding at the clip's ends, so a valid frame's
    output depends only on valid frames (and an image padded to T frames equals the same image
    run as a one-frame video).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        temporal: add the temporal convolution; False gives a purely spatial layer.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal: bool = True) -> None:
        super().__init__()
        self.spatial = nn.Conv3d(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1))
        self.temporal: nn.Conv3d | None = None
        if temporal:
            self.temporal = nn.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))
            nn.init.dirac_(self.temporal.weight)
            nn.init.zeros_(self.temporal.bias)

    def forward(self, x: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """x (B, C_in, T, H, W), frame_mask (B, T) bool or None -> (B, C_out, T, H, W)."""
        h = self.spatial(x)
        if self.temporal is None:
            return h
        if frame_mask is not None:
            # masked_fill rather than a product: no NaN or gradient can pass from a masked frame.
            h = h.masked_fill(~frame_mask_5d(frame_mask), 0.0)
        return self.temporal(h)


class ResBlock3D(nn.Module):
    """Residual block: per-frame GroupNorm, SiLU, pseudo-3D convs, FiLM from the embedding.

    ``h = conv1(silu(norm1(x)));  h = norm2(h) * (1 + scale) + shift;  out = skip(x) + conv2(drop(silu(h)))``
    with ``(scale, shift)`` a linear map of ``silu(emb)``.

    Args:
        in_channels: input channels.
        out_channels: output channels; a 1x1x1 convolution maps the skip path when they differ.
        emb_dim: width of the conditioning embedding (logSNR + fps + extra conditions).
        dropout: dropout probability before the second convolution.
        norm_groups: groups of both GroupNorms; must divide both channel counts.
        temporal_conv: give both convolutions their temporal part (``PseudoConv3d(temporal=...)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        norm_groups: int = 32,
        temporal_conv: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(norm_groups, in_channels)
        self.conv1 = PseudoConv3d(in_channels, out_channels, temporal=temporal_conv)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = FrameGroupNorm(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = PseudoConv3d(out_channels, out_channels, temporal=temporal_conv)
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """x (B, C_in, T, H, W), emb (B, emb_dim), frame_mask (B, T) bool or None -> (B, C_out, T, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)), frame_mask)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)), frame_mask)
        return self.skip(x) + h


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style sinusoids of scalars: values (N,) -> (N, dim), [cos | sin] halves.

    Frequencies run geometrically from 1 down to 1 / max_period; computed in float32.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    angles = values.float()[:, None] * freqs[None, :]  # (N, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ScalarEmbedding(nn.Module):
    """Fixed sinusoidal map of one or more scalars followed by a learned MLP.

    Each scalar is clipped to ``value_range`` (so +-inf, e.g. logSNR at t = 0 or 1, stays finite)
    and rescaled affinely onto [0, 1000], the range the standard sinusoid frequencies were designed
    for (DDPM step indices); the sinusoids of all scalars are concatenated and fed to
    ``Linear -> SiLU -> Linear``.

    Args:
        out_dim: width of the output embedding.
        value_range: (low, high) of the scalars; values outside are clipped.
        num_values: how many scalars per sample (n).
        freq_dim: sinusoid width per scalar (even).
    """

    def __init__(
        self,
        out_dim: int,
        value_range: tuple[float, float] = (-20.0, 20.0),
        num_values: int = 1,
        freq_dim: int = 128,
    ) -> None:
        super().__init__()
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        self.low, self.high = float(low), float(high)
        self.num_values = num_values
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(num_values * freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, values: Tensor) -> Tensor:
        """values (B,) when num_values == 1, else (B, n) -> (B, out_dim)."""
        if values.ndim == 1:
            values = values[:, None]  # (B, 1)
        if values.ndim != 2 or values.shape[1] != self.num_values:
            raise ValueError(
                f"expected {self.num_values} scalar(s) per sample, got a tensor of shape {tuple(values.shape)}"
            )
        b = values.shape[0]
        scaled = (values.float().clamp(self.low, self.high) - self.low) * (1000.0 / (self.high - self.low))
        freqs = sinusoidal_embedding(scaled.reshape(-1), self.freq_dim).reshape(b, -1)  # (B, n*freq_dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


class Downsample(nn.Module):
    """Spatial x1/2 by a stride-2 1x3x3 convolution; frames are untouched.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T, H/2, W/2)."""
        return self.conv(x)


class Upsample(nn.Module):
    """Spatial x2 by nearest-neighbour repetition followed by a 1x3x3 convolution.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))
