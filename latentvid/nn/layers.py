"""Building blocks of the factorized space-time U-Net.

Everything here keeps video features as ``(B, C, T, H, W)``. Spatial operators act on each frame
alone; the only operators that mix frames are the temporal convolution of ``PseudoConv3d`` (and the
temporal attention in ``attention.py``), and both honour a frame mask ``(B, T)`` bool (True = valid):
valid frames' outputs never depend on masked frames' content.

Memory layout. Every layer accepts any strides and returns the same values; it is fastest on
*channels-last* video, ``x.contiguous(memory_format=torch.channels_last_3d)``, i.e. memory order
(B, T, H, W, C), which ``UNet3D`` uses throughout. In that order one frame is a channels-last image
(``(B*T, C, H, W)`` is a view), the clip is a channels-last ``(B, C, T, H*W)`` image for the
temporal convolution, and tokens ``(B, T, H*W, C)`` for attention and feed-forward layers are
views too: no layer copies its input to change layout, and convolutions run as 2D convolutions,
the best-optimised kernels on every backend (NHWC tensor-core kernels on CUDA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_channels_last(x: Tensor) -> bool:
    """True when the 5D tensor ``x`` (B, C, T, H, W) is laid out in memory as (B, T, H, W, C)."""
    return x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)


def frames_view(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), one image per frame: a view for channels-last input."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def unframe(frames: Tensor, batch: int) -> Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W), inverse of :func:`frames_view` (always a view)."""
    return frames.view(batch, -1, *frames.shape[1:]).transpose(1, 2)


def conv_per_frame(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """Apply a Conv3d whose kernel is 1 frame deep, x (B, C, T, H, W) -> (B, C', T, H', W').

    Channels-last input runs as one 2D convolution over the (B*T) frames, on a view; other
    layouts call the Conv3d itself. Both compute the same function.
    """
    if conv.kernel_size[0] != 1 or conv.padding[0] != 0 or conv.stride[0] != 1:
        raise ValueError(f"conv_per_frame needs a (1, k, k) Conv3d without temporal padding, got {conv}")
    if not is_channels_last(x):
        return conv(x)
    weight = conv.weight.squeeze(2)  # (C', C, k, k)
    out = F.conv2d(frames_view(x), weight, conv.bias, conv.stride[1:], conv.padding[1:], conv.dilation[1:], conv.groups)
    return unframe(out, x.shape[0])


def conv_over_time(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """Apply a (k, 1, 1) Conv3d along T at every pixel, x (B, C, T, H, W) -> (B, C', T, H, W).

    Channels-last input runs as a (k, 1) 2D convolution of the channels-last image
    (B, C, T, H*W), a view; other layouts call the Conv3d itself.
    """
    if conv.kernel_size[1:] != (1, 1) or conv.stride != (1, 1, 1) or conv.padding[1:] != (0, 0):
        raise ValueError(f"conv_over_time needs a (k, 1, 1) Conv3d with stride 1, got {conv}")
    if not is_channels_last(x):
        return conv(x)
    b, c, t, h, w = x.shape
    seq = x.reshape(b, c, t, h * w)  # (B, C, T, H*W), channels-last view
    out = F.conv2d(seq, conv.weight.squeeze(-1), conv.bias, 1, (conv.padding[0], 0), (conv.dilation[0], 1), conv.groups)
    return out.view(b, -1, t, h, w)


def group_norm_channels_last(
    x: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> Tensor:
    """GroupNorm of images x (N, C, H, W) computed without changing their layout.

    The same function as ``F.group_norm``; used for channels-last input on CUDA, whose native
    kernel copies such input to (N, C, H, W) order and returns that order. Statistics accumulate
    in float32 (float16 / bfloat16 input is not upcast as a copy: the reductions accumulate in
    float32), and the output keeps x's dtype and layout: one pass for the statistics, one for
    ``x * scale + shift``.
    """
    n, c, h, w = x.shape
    cg = c // num_groups
    tokens = x.permute(0, 2, 3, 1).reshape(n, h * w, num_groups, cg)  # (N, HW, G, C/G): a view if channels-last
    if x.dtype in (torch.float32, torch.float64):
        var, mean = torch.var_mean(tokens, dim=(1, 3), correction=0)  # (N, G)
    else:
        count = h * w * cg
        mean = tokens.sum(dim=(1, 3), dtype=torch.float32) / count
        mean_sq = torch.linalg.vector_norm(tokens, 2, dim=(1, 3), dtype=torch.float32).square() / count
        var = (mean_sq - mean.square()).clamp_min(0.0)
    scale = torch.rsqrt(var + eps)[:, None, :, None]  # (N, 1, G, 1)
    if weight is not None:
        scale = scale * weight.view(1, 1, num_groups, cg)  # (N, 1, G, C/G)
    shift = -mean[:, None, :, None] * scale
    if bias is not None:
        shift = shift + bias.view(1, 1, num_groups, cg)
    out = torch.addcmul(shift.to(x.dtype), tokens, scale.to(x.dtype))  # (N, HW, G, C/G)
    return out.reshape(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, H, W), channels-last


def frame_mask_5d(frame_mask: Tensor) -> Tensor:
    """Frame mask (B, T) bool -> (B, 1, T, 1, 1), broadcastable against (B, C, T, H, W)."""
    return frame_mask[:, None, :, None, None]


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm applied to each frame separately, so frames never share statistics.

    Folding T into the batch keeps one frame's normalisation independent of the others (a masked
    frame cannot shift a valid frame's mean) and makes a T-frame clip behave like T images.
    Channels-last input keeps its layout: on CUDA through :func:`group_norm_channels_last`
    (whose output keeps the input dtype, also under autocast), unless the class attribute
    ``cuda_channels_last_kernel`` is set to ``"native"`` (CUDA's kernel, with its layout copies;
    ``tools/benchmark.py unet --variants ours-gn-native`` measures the two).

    Args:
        num_groups: number of channel groups; must divide ``num_channels``.
        num_channels: feature channels C.
        eps: added to the variance.
    """

    cuda_channels_last_kernel = "decomposed"  # or "native"

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        if num_groups <= 0 or num_channels % num_groups:
            raise ValueError(f"norm_groups={num_groups} must divide the channel count {num_channels}")
        super().__init__(num_groups, num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T, H, W), in x's layout when x is channels-last."""
        frames = frames_view(x)  # (B*T, C, H, W): a view if channels-last, else a copy
        if x.is_cuda and is_channels_last(x) and self.cuda_channels_last_kernel != "native":
            # CUDA's native kernel would copy to (N, C, H, W) order and answer in that order
            out = group_norm_channels_last(frames, self.num_groups, self.weight, self.bias, self.eps)
        else:
            out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return unframe(out, x.shape[0])  # (B, C, T, H, W)


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
        h = conv_per_frame(self.spatial, x)
        if self.temporal is None:
            return h
        if frame_mask is not None:
            # a select rather than a product: no NaN or gradient can pass from a masked frame
            # (and unlike masked_fill, torch.where keeps the channels-last layout)
            h = torch.where(frame_mask_5d(frame_mask), h, 0.0)
        return conv_over_time(self.temporal, h)


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
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # norm2(h) * (1 + scale) + shift, one pass
        h = self.conv2(self.dropout(F.silu(h)), frame_mask)
        skip = x if isinstance(self.skip, nn.Identity) else conv_per_frame(self.skip, x)
        return skip + h


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


POSITION_EMBEDDINGS = ("none", "frame", "spacetime")


class PositionEmbedding(nn.Module):
    """Learned embeddings of absolute positions on a (T, H, W) grid, summed over axes.

    ``"frame"`` embeds the frame index only, ``"spacetime"`` also the row and the column, ``"none"``
    nothing. Each axis maps its index through a :class:`ScalarEmbedding` (sinusoids, index k as
    step k, then an MLP) whose output layer starts at zero, so a network gaining this module starts
    as the network without it.

    Args:
        dim: width of the embedding (the features it is added to).
        mode: one of :data:`POSITION_EMBEDDINGS`.
        freq_dim: sinusoid width per axis.
    """

    def __init__(self, dim: int, mode: str = "frame", freq_dim: int = 64) -> None:
        super().__init__()
        if mode not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {mode!r}")
        self.axes = nn.ModuleList()  # frame (T), then row (H) and column (W)
        for _ in range({"none": 0, "frame": 1, "spacetime": 3}[mode]):
            embed = ScalarEmbedding(dim, (0.0, 1000.0), freq_dim=freq_dim)
            nn.init.zeros_(embed.mlp[-1].weight)
            nn.init.zeros_(embed.mlp[-1].bias)
            self.axes.append(embed)

    def forward(self, grid: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Grid (T, H, W) -> embedding broadcastable to (1, dim, T, H, W): (1, dim, T, 1, 1) for
        ``"frame"``; 0 for ``"none"``."""
        out = 0
        for axis, embed in enumerate(self.axes):
            index = torch.arange(grid[axis], device=device, dtype=torch.float32)  # (n,)
            shape = [1, -1, 1, 1, 1]
            shape[2 + axis] = grid[axis]
            out = out + embed(index).to(dtype).T.reshape(shape)  # (1, dim, n on this axis, 1, 1)
        return out


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
        return conv_per_frame(self.conv, x)


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
        if not is_channels_last(x):
            return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))
        # per frame as images: 2D nearest upsampling keeps channels-last on every backend
        up = unframe(F.interpolate(frames_view(x), scale_factor=2.0, mode="nearest"), x.shape[0])
        return conv_per_frame(self.conv, up)


class FeedForward(nn.Module):
    """Token-wise GEGLU feed-forward with a pre-LayerNorm and a residual, as in transformer blocks.

    ``x + W_out(dropout(a * gelu(g)))`` with ``[a | g] = W_in(layernorm(x))`` at every position of
    every frame (no mixing across positions or frames). Channels-last input makes the tokens a view.

    Args:
        channels: feature channels C.
        mult: hidden width as a multiple of C (the input projection is 2 * mult * C wide).
        dropout: dropout probability on the hidden activations.
    """

    def __init__(self, channels: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if mult < 1:
            raise ValueError(f"feed-forward mult must be >= 1, got {mult}")
        inner = mult * channels
        self.norm = nn.LayerNorm(channels)
        self.proj_in = nn.Linear(channels, 2 * inner)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T, H, W)."""
        tokens = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C): contiguous when x is channels-last
        value, gate = self.proj_in(self.norm(tokens)).chunk(2, dim=-1)  # (B, T, H, W, mult*C) each
        out = self.proj_out(self.dropout(value * F.gelu(gate)))  # (B, T, H, W, C)
        return x + out.permute(0, 4, 1, 2, 3)
