"""Causal 3D VAE: video (B, 3, T, H, W) <-> latents (B, C, 1 + (T - 1) / tf, H / sf, W / sf).

Causal in time: latent frame j depends only on input frames <= the last frame it summarises, and
decoded frame i only on latent frames up to the one that covers it. Frame 0 is always encoded on
its own, so an image (T = 1) is a one-frame video with one latent frame, and a clip of
``1 + k * tf`` frames maps to ``1 + k`` latent frames (the CogVideoX / Open-Sora layout).

Causality comes from three rules that every layer here follows:

* time convolutions pad only on the past side (``CausalConv3d``);
* normalisation and attention work per frame (time folded into the batch), never across time;
* temporal down-sampling is a stride-2 causal convolution (output 0 sees frame 0 only) and
  temporal up-sampling turns each latent frame into two frames but drops the first copy of
  frame 0.

Because of them a long clip can be encoded or decoded in temporal chunks, carrying each causal
convolution's last input frames over as a cache, with the same result as one pass. Large frames
can be processed in overlapping spatial tiles cross-faded linearly (``blend_tiles``): exact for
the local variant (``norm="rms"``, no attention) when the overlap covers the receptive field,
approximate with GroupNorm or attention, whose statistics / context then span one tile only.

Every layer inside the encoder and decoder follows one streaming protocol:
``layer(x, cache) -> (y, new_cache)``, where ``cache=None`` means "this is the start of the clip".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentvid.nn.first_stage import FirstStage

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


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame (time folded into the batch), so it stays causal.

    Args: as ``nn.GroupNorm`` (num_groups, num_channels, eps, affine).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W)."""
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C, H, W)
        return y.reshape(b, t, c, h, w).transpose(1, 2)


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


def _mid_block(channels: int, attention: bool, norm: str) -> list[nn.Module]:
    """ResBlock, optional per-frame attention, ResBlock."""
    layers: list[nn.Module] = [CausalResBlock(channels, channels, norm)]
    if attention:
        layers.append(FrameAttention(channels, norm))
    layers.append(CausalResBlock(channels, channels, norm))
    return layers


BLOCKS = ("resnet", "factorized")


def _frame_convs(c_in: int, c_out: int, count: int, norm: str) -> list[nn.Module]:
    """``count`` x (per-frame 3x3 conv, norm, SiLU), the first mapping c_in -> c_out."""
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [FrameConv(c_in, c_out), NormAct(c_out, norm)]
        c_in = c_out
    return layers


class CausalEncoder(CausalSequential):
    """Video (B, in_channels, T, H, W) -> posterior moments (B, 2 * latent_channels, t, h, w).

    ``t = 1 + (T - 1) / tf``, ``h = H / sf``, ``w = W / sf``; the first half of the output
    channels is the mean, the second the log-variance.

    Two layouts (``block``):

    * ``"resnet"`` (CogVideoX / Open-Sora style): causal 3x3x3 residual blocks per level, a
      stride-2 causal 3x3x3 down-sampler between levels, a mid block of two residual blocks.
    * ``"factorized"``: per-frame 3x3 convs (+ norm + SiLU) per level, a 4x4 stride-2 per-frame
      down-sampler between levels followed, where time is halved, by a (3, 1, 1) causal conv of
      stride 2. Frames mix only at those temporal down-samplers: far fewer FLOPs, and on small
      data it trains several times faster than "resnet" (see configs/vae.yaml).

    Args:
        in_channels: video channels.
        latent_channels: latent channels C.
        base_channels: width of the first level.
        channel_mult: width multiplier per level; a stride-2 down-sampler follows every level but
            the last.
        temporal_downsample: per level, whether its down-sampler also halves time (last must be False).
        num_res_blocks: residual blocks ("resnet") or conv layers ("factorized") per level.
        mid_attention: add per-frame self-attention in the middle (at the lowest resolution).
        norm: "group" (per-frame GroupNorm), "rms" (per-position channel RMS norm) or "none".
        block: "resnet" or "factorized" (see above).
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        temporal_downsample: Sequence[bool],
        num_res_blocks: int,
        mid_attention: bool,
        norm: str = "group",
        block: str = "resnet",
    ) -> None:
        factorized = block == "factorized"
        if factorized:
            layers: list[nn.Module] = [FrameConv(in_channels, base_channels), NormAct(base_channels, norm)]
        else:
            layers = [CausalConv3d(in_channels, base_channels, 3)]
        channels = base_channels
        for level, mult in enumerate(channel_mult):
            if factorized:
                layers += _frame_convs(channels, base_channels * mult, num_res_blocks, norm)
            else:
                layers += [CausalResBlock(channels if i == 0 else base_channels * mult, base_channels * mult, norm)
                           for i in range(num_res_blocks)]
            channels = base_channels * mult
            if level == len(channel_mult) - 1:
                continue
            if factorized:
                layers += [FrameConv(channels, channels, resample="down"), NormAct(channels, norm)]
                if temporal_downsample[level]:
                    layers += [TimeDownsample(channels), NormAct(channels, norm)]
            else:
                stride_t = 2 if temporal_downsample[level] else 1
                layers.append(CausalConv3d(channels, channels, 3, stride=(stride_t, 2, 2)))
        if factorized:
            layers += [FrameAttention(channels, norm)] if mid_attention else []
            layers.append(FrameConv(channels, 2 * latent_channels))
        else:
            layers += _mid_block(channels, mid_attention, norm)
            layers += [NormAct(channels, norm), CausalConv3d(channels, 2 * latent_channels, 3)]
        super().__init__(layers)


class CausalDecoder(CausalSequential):
    """Latents (B, latent_channels, t, h, w) -> video (B, out_channels, 1 + (t - 1) * tf, h * sf, w * sf).

    Mirrors ``CausalEncoder``; the arguments have the same meaning (``out_channels`` = video
    channels). "factorized" up-samples time first (a (3, 1, 1) causal conv to 2C channels split into
    two frames, ``TimeUpsample``), then space (a 4x4 stride-2 transposed per-frame conv).
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        temporal_downsample: Sequence[bool],
        num_res_blocks: int,
        mid_attention: bool,
        norm: str = "group",
        block: str = "resnet",
    ) -> None:
        factorized = block == "factorized"
        channels = base_channels * channel_mult[-1]
        if factorized:
            layers: list[nn.Module] = [FrameConv(latent_channels, channels), NormAct(channels, norm)]
            layers += [FrameAttention(channels, norm)] if mid_attention else []
        else:
            layers = [CausalConv3d(latent_channels, channels, 3)]
            layers += _mid_block(channels, mid_attention, norm)
        for level in reversed(range(len(channel_mult))):
            width = base_channels * channel_mult[level]
            if factorized:
                layers += _frame_convs(channels, width, num_res_blocks, norm)
            else:
                layers += [CausalResBlock(channels if i == 0 else width, width, norm) for i in range(num_res_blocks)]
            channels = width
            if level == 0:
                continue
            if factorized:
                if temporal_downsample[level - 1]:
                    layers += [TimeUpsample(channels), NormAct(channels, norm)]
                layers += [FrameConv(channels, channels, resample="up"), NormAct(channels, norm)]
            else:
                layers.append(CausalUpsample(channels, temporal=temporal_downsample[level - 1]))
        if factorized:
            layers.append(FrameConv(channels, out_channels))
        else:
            layers += [NormAct(channels, norm), CausalConv3d(channels, out_channels, 3)]
        super().__init__(layers)


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


def chunk_bounds(total: int, first: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) frame ranges: the first ``first`` frames, then runs of ``size`` (last may be shorter)."""
    bounds = [(0, min(first, total))]
    while bounds[-1][1] < total:
        start = bounds[-1][1]
        bounds.append((start, min(start + size, total)))
    return bounds


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared.

    Tiles step by ``tile - overlap``; the last one is moved back to end exactly at ``size`` (so it
    may overlap more). One tile (start 0) when ``size <= tile``.
    """
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramp(start: int, length: int, size: int, overlap: int) -> torch.Tensor:
    """1D blending weight (length,) of a tile at ``start`` on an axis of ``size``.

    On a side that borders another tile, the outer quarter of the overlap gets weight 0 (those
    outputs saw the tile's zero padding instead of real neighbours), the middle half ramps
    linearly up, the rest is 1. Image borders keep weight 1.
    """
    weight = torch.ones(length)
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    side = torch.cat([torch.zeros(margin), torch.arange(1, ramp_len + 1, dtype=torch.float32) / (ramp_len + 1)])
    if start > 0 and len(side):
        weight[: len(side)] = torch.minimum(weight[: len(side)], side)
    if start + length < size and len(side):
        weight[-len(side) :] = torch.minimum(weight[-len(side) :], side.flip(0))
    return weight


def blend_tiles(tiles: Sequence[tuple[torch.Tensor, int, int]], height: int, width: int, overlap: int) -> torch.Tensor:
    """Weighted average of overlapping tiles: linear cross-fades in the middle of shared edges.

    Args:
        tiles: (tile (B, C, T, th, tw), top, left) triples that together cover the output, laid
            out as ``tile_starts`` does (neighbours share at least ``overlap`` pixels).
        height, width: output size.
        overlap: pixels (of this grid) shared by neighbouring tiles. On each shared edge the
            outer ``overlap // 4`` pixels of a tile are ignored and the middle half is cross-faded
            (see ``_ramp``), so a network whose outputs depend on inputs within
            ``overlap // 4`` pixels (and on nothing global) is reproduced exactly.

    Returns:
        (B, C, T, height, width). Weights are normalised per pixel, so blending crops of one
        tensor gives that tensor back exactly.
    """
    first = tiles[0][0]
    out = first.new_zeros(*first.shape[:3], height, width)
    total = torch.zeros(height, width, dtype=first.dtype, device=first.device)
    for tile, top, left in tiles:
        th, tw = tile.shape[-2:]
        weight = torch.outer(_ramp(top, th, height, overlap), _ramp(left, tw, width, overlap))  # (th, tw)
        weight = weight.to(device=tile.device, dtype=tile.dtype)
        out[..., top : top + th, left : left + tw] += tile * weight
        total[top : top + th, left : left + tw] += weight
    if bool((total <= 0).any()):
        raise ValueError("blend_tiles: the tiles do not cover the whole output with positive weight")
    return out / total


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


class CausalVAE3D(GaussianAutoencoder):
    """Causal 3D VAE with KL-regularised diagonal Gaussian latents.

    Video (B, in_channels, T, H, W) in [-1, 1] with T = 1 + k * temporal_factor and H, W divisible
    by spatial_factor <-> latents (B, latent_channels, 1 + k, H / sf, W / sf).

    ``encode`` / ``decode`` speak *scaled* latents ``(z - shift) * scale`` (the ``FirstStage``
    contract); ``encode_posterior`` / ``decode_raw`` speak raw ones. ``scale`` and ``shift`` are
    buffers, so they are saved in and restored from the checkpoint; ``estimate_scale`` sets them.

    Args:
        in_channels: video channels (3 for RGB).
        latent_channels: latent channels C.
        base_channels: width of the first encoder level (and last decoder level).
        channel_mult: width multiplier per level; ``spatial_factor = 2 ** (len(channel_mult) - 1)``.
        temporal_downsample: one flag per level: whether the down-sampler after that level also
            halves time; the last level has no down-sampler, so its flag must be False.
            ``temporal_factor = 2 ** sum(temporal_downsample)``.
        num_res_blocks: residual blocks ("resnet") or conv layers ("factorized") per level in
            encoder and decoder.
        mid_attention: per-frame spatial self-attention in the middle blocks.
        scale: latent scale (1 / std of raw latents), used when no checkpoint overrides it.
        shift: latent shift (mean of raw latents), used when no checkpoint overrides it.
        chunk_frames: when set, clips longer than ``1 + chunk_frames`` frames are encoded in
            temporal chunks (first ``1 + chunk_frames`` frames, then ``chunk_frames`` at a time;
            decoding uses the matching latent chunks). Must be a multiple of ``temporal_factor``.
            Same result as one pass, less memory.
        tile_size: when set, frames taller or wider than this are encoded in overlapping square
            tiles of this many pixels (decoding uses ``tile_size / spatial_factor`` latent tiles).
            Must be a multiple of ``spatial_factor``. Approximate: see ``tiled_encode``.
        tile_overlap: pixels shared by neighbouring tiles: the outer quarter on each side is
            dropped, the middle half cross-faded linearly (see ``blend_tiles``). Must be a
            multiple of ``spatial_factor`` and smaller than ``tile_size``.
        norm: "group" (per-frame GroupNorm, the usual VAE choice), "rms" (per-position channel
            RMS norm) or "none"; with "rms" / "none" and no mid attention the network is local, so
            tiling is exact once ``tile_overlap / 4`` covers its receptive field.
        block: layer layout, "resnet" (causal 3x3x3 residual blocks, CogVideoX style) or
            "factorized" (per-frame 2D convs, frames mixed only by causal temporal down / up
            samplers; see ``CausalEncoder``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        temporal_downsample: tuple[bool, ...] = (True, True, False),
        num_res_blocks: int = 1,
        mid_attention: bool = False,
        scale: float = 1.0,
        shift: float = 0.0,
        chunk_frames: int | None = None,
        tile_size: int | None = None,
        tile_overlap: int = 8,
        norm: str = "group",
        block: str = "resnet",
    ) -> None:
        super().__init__(scale, shift)
        channel_mult, temporal_downsample = tuple(channel_mult), tuple(bool(f) for f in temporal_downsample)
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {channel_mult!r}")
        if len(temporal_downsample) != len(channel_mult) or temporal_downsample[-1]:
            raise ValueError(
                f"temporal_downsample={temporal_downsample!r} needs one flag per level of "
                f"channel_mult={channel_mult!r}, the last False (the last level has no down-sampler)"
            )
        for name, value in (("in_channels", in_channels), ("latent_channels", latent_channels),
                            ("base_channels", base_channels), ("num_res_blocks", num_res_blocks)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.block = block
        self.spatial_factor = 2 ** (len(channel_mult) - 1)
        self.temporal_factor = 2 ** sum(temporal_downsample)
        self.chunk_frames = chunk_frames
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        if chunk_frames is not None:
            self._check_chunk_frames(chunk_frames)
        if tile_size is not None:
            self._check_tiles(tile_size, tile_overlap)
        arch = (latent_channels, base_channels, channel_mult, temporal_downsample, num_res_blocks, mid_attention, norm,
                block)
        self.encoder = CausalEncoder(in_channels, *arch)
        self.decoder = CausalDecoder(in_channels, *arch)

    # ---- argument checks -------------------------------------------------------------------

    def _check_chunk_frames(self, chunk_frames: int) -> None:
        if chunk_frames < 1 or chunk_frames % self.temporal_factor:
            raise ValueError(
                f"chunk_frames={chunk_frames} must be a positive multiple of the temporal factor "
                f"{self.temporal_factor}"
            )

    def _check_tiles(self, tile_size: int, tile_overlap: int) -> None:
        sf = self.spatial_factor
        if tile_size < 1 or tile_size % sf:
            raise ValueError(f"tile_size={tile_size} must be a positive multiple of the spatial factor {sf}")
        if tile_overlap < 0 or tile_overlap % sf or tile_overlap >= tile_size:
            raise ValueError(
                f"tile_overlap={tile_overlap} must be a multiple of the spatial factor {sf} in [0, tile_size={tile_size})"
            )

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise ValueError(
                f"expected video (B, {self.in_channels}, T, H, W), got shape {tuple(video.shape)}"
            )
        self.latent_frames(video.shape[2])  # raises on a frame count that does not fit
        h, w = video.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"frame size {h}x{w} is not divisible by the spatial factor {self.spatial_factor}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, t, h, w), got shape {tuple(z.shape)}")

    # ---- encode ------------------------------------------------------------------------------

    def _encode_moments(self, video: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
        """(B, 3, T, H, W) -> moments (B, 2C, t, h, w); chunked in time when the clip is long."""
        if chunk_frames is None or video.shape[2] <= 1 + chunk_frames:
            return self.encoder(video)[0]
        cache, outs = None, []
        for start, stop in chunk_bounds(video.shape[2], 1 + chunk_frames, chunk_frames):
            out, cache = self.encoder(video[:, :, start:stop], cache)
            outs.append(out)
        return torch.cat(outs, dim=2)

    def chunked_encode(self, video: torch.Tensor, chunk_frames: int) -> DiagonalGaussian:
        """Encode (B, 3, T, H, W) in temporal chunks carrying causal caches -> raw posterior over
        (B, C, t, h, w). Chunks: the first ``1 + chunk_frames`` frames, then ``chunk_frames`` at a time.
        Equals the one-pass result up to float rounding."""
        self._check_video(video)
        self._check_chunk_frames(chunk_frames)
        return DiagonalGaussian.from_moments(self._encode_moments(video, chunk_frames))

    def tiled_encode(
        self, video: torch.Tensor, tile_size: int, tile_overlap: int, chunk_frames: int | None = None
    ) -> DiagonalGaussian:
        """Encode (B, 3, T, H, W) in overlapping spatial tiles -> raw posterior over (B, C, t, h, w).

        Each ``tile_size`` square is encoded alone (optionally in temporal chunks) and the
        moments are blended (``blend_tiles``) over ``tile_overlap / spatial_factor`` latent pixels.
        Exact for a local network (``norm="rms"``, no mid attention) whose receptive field fits
        in a quarter of the overlap; otherwise approximate, since a tile's GroupNorm statistics
        and attention see only the tile.
        """
        self._check_video(video)
        self._check_tiles(tile_size, tile_overlap)
        sf = self.spatial_factor
        height, width = video.shape[-2:]
        tiles = []
        for top in tile_starts(height, tile_size, tile_overlap):
            for left in tile_starts(width, tile_size, tile_overlap):
                crop = video[..., top : top + tile_size, left : left + tile_size]
                tiles.append((self._encode_moments(crop, chunk_frames), top // sf, left // sf))
        moments = blend_tiles(tiles, height // sf, width // sf, tile_overlap // sf)
        return DiagonalGaussian.from_moments(moments)

    def encode_posterior(self, video: torch.Tensor) -> DiagonalGaussian:
        """Video (B, 3, T, H, W) -> raw (unscaled) posterior over (B, C, 1 + (T - 1) / tf, H / sf, W / sf).

        Tiles when a side exceeds ``tile_size`` and chunks when T exceeds ``1 + chunk_frames``.
        """
        self._check_video(video)
        if self.tile_size is not None and max(video.shape[-2:]) > self.tile_size:
            return self.tiled_encode(video, self.tile_size, self.tile_overlap, self.chunk_frames)
        return DiagonalGaussian.from_moments(self._encode_moments(video, self.chunk_frames))

    # ---- decode ------------------------------------------------------------------------------

    def _decode_frames(self, z: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> (B, 3, T, H, W); chunked in time when long."""
        latent_chunk = None if chunk_frames is None else chunk_frames // self.temporal_factor
        if latent_chunk is None or z.shape[2] <= 1 + latent_chunk:
            return self.decoder(z)[0]
        cache, outs = None, []
        for start, stop in chunk_bounds(z.shape[2], 1 + latent_chunk, latent_chunk):
            out, cache = self.decoder(z[:, :, start:stop], cache)
            outs.append(out)
        return torch.cat(outs, dim=2)

    def chunked_decode(self, z: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> video (B, 3, T, H, W), decoding ``chunk_frames / tf``
        latent frames at a time (after a first chunk of ``1 + chunk_frames / tf``) with causal caches.
        Equals the one-pass result up to float rounding."""
        self._check_latents(z)
        self._check_chunk_frames(chunk_frames)
        return self._decode_frames(z, chunk_frames)

    def tiled_decode(
        self, z: torch.Tensor, tile_size: int, tile_overlap: int, chunk_frames: int | None = None
    ) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> video (B, 3, T, H, W) from overlapping latent tiles of
        ``tile_size / sf`` (overlap ``tile_overlap / sf``), blended over ``tile_overlap`` pixels.
        Approximate, like ``tiled_encode``."""
        self._check_latents(z)
        self._check_tiles(tile_size, tile_overlap)
        sf = self.spatial_factor
        tile, overlap = tile_size // sf, tile_overlap // sf
        height, width = z.shape[-2:]
        tiles = []
        for top in tile_starts(height, tile, overlap):
            for left in tile_starts(width, tile, overlap):
                crop = z[..., top : top + tile, left : left + tile]
                tiles.append((self._decode_frames(crop, chunk_frames), top * sf, left * sf))
        return blend_tiles(tiles, height * sf, width * sf, tile_overlap)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> video (B, 3, 1 + (t - 1) * tf, h * sf, w * sf).

        Tiles and chunks as configured (see ``encode_posterior``).
        """
        self._check_latents(z)
        if self.tile_size is not None and max(z.shape[-2:]) > self.tile_size // self.spatial_factor:
            return self.tiled_decode(z, self.tile_size, self.tile_overlap, self.chunk_frames)
        return self._decode_frames(z, self.chunk_frames)
