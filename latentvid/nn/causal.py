"""Causal streaming layers of the 3D VAE: video features (B, C, T, H, W), past frames only.

Causality comes from three rules that every layer here follows:

* time convolutions pad only on the past side (``CausalConv3d``);
* normalisation and attention work per frame (time folded into the batch), never across time;
* temporal down-sampling is a stride-2 causal convolution (output 0 sees frame 0 only) and
  temporal up-sampling turns each latent frame into two frames but drops the first copy of
  frame 0.

Every layer follows one streaming protocol: ``layer(x, cache) -> (y, new_cache)``, where
``cache=None`` means "this is the start of the clip". Feeding a clip chunk by chunk with the caches
carried over gives the same result as one pass, which is how ``CausalVAE3D`` encodes long clips.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentvid.nn.layers import FrameGroupNorm

Cache = Any  # a layer's streaming state: a Tensor, a tuple / list of caches, or None


def _triple(value: int | tuple[int, int, int], name: str) -> tuple[int, int, int]:
    """An int or a 3-tuple -> (t, h, w)."""
    if isinstance(value, int):
        return (value, value, value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or a (t, h, w) triple, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def group_count(channels: int) -> int:
    """GroupNorm groups: at most 32 and at least 2 channels per group where possible.

    (One channel per group would be instance norm, which removes every channel's per-frame mean;
    this matters for the narrow models used in tests.)
    """
    return math.gcd(32, max(channels // 2, 1))


class CausalConv3d(nn.Module):
    """3D convolution that only looks at the past in time.

    ``kernel_t - 1`` frames are padded before frame 0 (none after), so output frame i depends on
    input frames <= i * stride_t only. Height and width are zero-padded symmetrically
    (``kernel // 2``), so stride 1 keeps H and W and stride 2 halves even sizes.

    Streaming: ``forward`` returns the input frames that later outputs still need (the padded
    input from the first frame the next output would read). Feeding the next chunk together with
    that cache gives the same outputs as one pass over the concatenated clip, provided each
    chunk's length keeps the time stride aligned (a multiple of ``stride_t`` after the first).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: int or (kernel_t, kernel_h, kernel_w).
        stride: int or (stride_t, stride_h, stride_w).
        pad_mode: how the ``kernel_t - 1`` frames before frame 0 are filled: "replicate" (copies
            of frame 0, so an image behaves like a still video) or "zeros".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__()
        if pad_mode not in ("replicate", "zeros"):
            raise ValueError(f"CausalConv3d pad_mode must be 'replicate' or 'zeros', got {pad_mode!r}")
        kt, kh, kw = _triple(kernel_size, "kernel_size")
        st, sh, sw = _triple(stride, "stride")
        self.kernel_t, self.stride_t, self.pad_mode = kt, st, pad_mode
        self.conv = nn.Conv3d(
            in_channels, out_channels, (kt, kh, kw), stride=(st, sh, sw), padding=(0, kh // 2, kw // 2)
        )

    def _pad_past(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, kernel_t - 1 + T, H, W)."""
        if self.kernel_t == 1:
            return x
        first = x[:, :, :1]
        pad = first.expand(-1, -1, self.kernel_t - 1, -1, -1)
        if self.pad_mode == "zeros":
            pad = torch.zeros_like(pad)
        return torch.cat([pad, x], dim=2)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C_in, T, H, W), cache (B, C_in, P, H, W) or None at the clip start
        -> y (B, C_out, T', H', W'), new cache (B, C_in, P', H, W)."""
        x = self._pad_past(x) if cache is None else torch.cat([cache, x], dim=2)
        num_out = (x.shape[2] - self.kernel_t) // self.stride_t + 1
        if num_out < 1:
            raise ValueError(
                f"CausalConv3d got {x.shape[2]} frames (cache included), fewer than its time kernel "
                f"{self.kernel_t}: chunks are too short for this layer"
            )
        y = self.conv(x)
        # The next output starts reading at frame num_out * stride_t of the padded input.
        return y, x[:, :, num_out * self.stride_t :].clone()


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each position (no statistics across space or time).

    Fully local, so spatial tiling is exact away from tile borders (see ``blend_tiles``).

    Args:
        channels: number of channels C.
        eps: added to the mean square.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W)."""
        x = x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight.view(-1, 1, 1, 1) + self.bias.view(-1, 1, 1, 1)


NORMS = ("group", "rms", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """"group": per-frame GroupNorm (32 groups or fewer); "rms": per-position channel RMS norm;
    "none": identity."""
    if kind == "group":
        return FrameGroupNorm(group_count(channels), channels, eps=1e-6)
    if kind == "rms":
        return ChannelRMSNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class NormAct(nn.Module):
    """Norm (see ``make_norm``) then SiLU; stateless in the streaming protocol.

    Args:
        channels: number of channels.
        norm: "group", "rms" or "none".
    """

    def __init__(self, channels: int, norm: str = "group") -> None:
        super().__init__()
        self.norm = make_norm(norm, channels)

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, None]:
        """(B, C, T, H, W) -> ((B, C, T, H, W), None)."""
        return F.silu(self.norm(x)), None


class CausalResBlock(nn.Module):
    """Pre-activation residual block: (norm, SiLU, causal 3x3x3 conv) twice plus a 1x1x1 skip.

    Args:
        in_channels: input channels.
        out_channels: output channels (a 1x1x1 conv matches the skip when they differ).
        norm: "group" or "rms" (see ``make_norm``).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group") -> None:
        super().__init__()
        self.act1 = NormAct(in_channels, norm)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.act2 = NormAct(out_channels, norm)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, Cache]:
        """(B, C_in, T, H, W) -> ((B, C_out, T, H, W), cache)."""
        cache1, cache2 = (None, None) if cache is None else cache
        h, cache1 = self.conv1(self.act1(x)[0], cache1)
        h, cache2 = self.conv2(self.act2(h)[0], cache2)
        return self.skip(x) + h, (cache1, cache2)


class FrameAttention(nn.Module):
    """Single-head self-attention among the H*W positions of each frame (never across frames).

    Args:
        channels: number of channels (the attention width).
        norm: "group" or "rms" (see ``make_norm``).
    """

    def __init__(self, channels: int, norm: str = "group") -> None:
        super().__init__()
        self.norm = make_norm(norm, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, None]:
        """(B, C, T, H, W) -> ((B, C, T, H, W), None)."""
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)  # (B*T, HW, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)  # each (B*T, HW, C)
        out = self.proj(F.scaled_dot_product_attention(q, k, v))  # (B*T, HW, C)
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
        return x + out, None


class CausalUpsample(nn.Module):
    """Doubles H and W (nearest neighbour + causal conv); optionally doubles time causally.

    With ``temporal=True`` the conv emits two frames' worth of channels per input frame, which are
    interleaved in time (frame j -> frames 2j, 2j + 1); at the clip start the first of these is
    dropped, so 1 + m frames become 1 + 2m and frame 0 stays alone.

    Args:
        channels: input and output channels.
        temporal: whether to up-sample time as well.
    """

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels * (2 if temporal else 1), 3)

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T, H, W) -> ((B, C, T', 2H, 2W), cache) with T' = 2T (-1 at the clip start) or T."""
        at_start = cache is None
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T, 2H, 2W)
        y, cache = self.conv(x, cache)
        if self.temporal:
            y = depth_to_time(y, at_start)
        return y, cache


def depth_to_time(y: torch.Tensor, at_start: bool) -> torch.Tensor:
    """(B, 2C, T, H, W) -> (B, C, 2T, H, W): channel halves become frames 2j, 2j + 1.

    At the clip start the first of these is dropped, so 1 + m frames become 1 + 2m and frame 0
    stays alone (the causal layout).
    """
    b, c2, t, h, w = y.shape
    y = y.reshape(b, 2, c2 // 2, t, h, w)  # (B, 2, C, T, H, W): channel halves = the two frames
    y = y.permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)  # (B, C, 2T, H, W)
    return y[:, :, 1:] if at_start else y


class FrameConv(nn.Module):
    """A per-frame 2D convolution written as a (1, k, k) 3D one; stateless in the streaming protocol.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: spatial kernel k (odd, zero-padded to keep H and W) — or 4 with ``resample``.
        resample: None (keep H, W), "down" (a 4x4 stride-2 conv: H/2, W/2) or "up" (a 4x4 stride-2
            transposed conv: 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, resample: str | None = None) -> None:
        super().__init__()
        if resample is None:
            self.conv: nn.Module = nn.Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size),
                                             padding=(0, kernel_size // 2, kernel_size // 2))
        elif resample == "down":
            self.conv = nn.Conv3d(in_channels, out_channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        elif resample == "up":
            self.conv = nn.ConvTranspose3d(in_channels, out_channels, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        else:
            raise ValueError(f"FrameConv resample must be None, 'down' or 'up', got {resample!r}")

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, None]:
        """(B, C_in, T, H, W) -> ((B, C_out, T, H', W'), None)."""
        return self.conv(x), None


class TimeDownsample(CausalConv3d):
    """Halves time causally: a (3, 1, 1) causal conv of stride 2 (1 + 2m frames -> 1 + m).

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, (3, 1, 1), stride=(2, 1, 1))


class TimeUpsample(nn.Module):
    """Doubles time causally: a (3, 1, 1) causal conv to 2C channels, then ``depth_to_time``.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, 2 * channels, (3, 1, 1))

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T, H, W) -> ((B, C, 2T (-1 at the clip start), H, W), cache)."""
        y, cache_out = self.conv(x, cache)
        return depth_to_time(y, at_start=cache is None), cache_out


class CausalSequential(nn.ModuleList):
    """Runs streaming layers in order; the cache is the list of the layers' caches."""

    def forward(self, x: torch.Tensor, cache: list[Cache] | None = None) -> tuple[torch.Tensor, list[Cache]]:
        """(B, C, T, H, W) -> ((B, C', T', H', W'), caches)."""
        caches = [None] * len(self) if cache is None else cache
        new_caches = []
        for layer, layer_cache in zip(self, caches, strict=True):
            x, layer_cache = layer(x, layer_cache)
            new_caches.append(layer_cache)
        return x, new_caches
