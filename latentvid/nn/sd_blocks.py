"""Building blocks of :class:`latentvid.nn.inflated_unet.InflatedUNet3D`: Stable Diffusion's U-Net layers
under diffusers' module names, and the temporal layers inflation adds.

Spatial layers run on the frames of a clip folded into the batch, ``(B*T, C, H, W)``, and carry
exactly the submodule names (and so state-dict keys) of diffusers' ``UNet2DConditionModel`` pieces
(``ResnetBlock2D``, ``Transformer2DModel`` / ``BasicTransformerBlock`` / ``Attention`` /
``FeedForward``, ``Downsample2D``, ``Upsample2D``, ``TimestepEmbedding``). Temporal layers live under
names SD does not use (``temporal_conv1`` / ``temporal_conv2`` in ResNet blocks,
``temporal_attentions`` in blocks) and see the clip through :class:`ClipLayout`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from latentvid.nn.attention import attention
from latentvid.nn.layers import frame_mask_5d


class ClipLayout(NamedTuple):
    """How the frames folded into the batch form clips, passed down to every temporal layer."""

    b: int
    t: int
    frame_mask: Tensor | None  # (B, T) bool or None
    checkpoint: bool  # recompute layers in backward


def run_layer(video: ClipLayout, fn, *args):
    """fn(*args), recomputed in backward when gradient checkpointing is on.

    Recomputation runs to the end of the layer (no early stop): the early stop works by raising an
    exception from inside the layer, which ``attention()``'s backend fallback would take for a
    failing kernel.
    """
    if video.checkpoint and torch.is_grad_enabled():
        with set_checkpoint_early_stop(False):
            return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# ---------------------------------------------------------------------------------------------
# spatial modules, laid out like diffusers' so SD state dicts load as they are
# ---------------------------------------------------------------------------------------------
class SDAttention(nn.Module):
    """SD's attention (``to_q``, ``to_k``, ``to_v`` without bias, ``to_out.0`` with bias), run by ``attention()``.

    Args:
        dim: query channels.
        heads: attention heads (head width dim // heads).
        context_dim: key/value source channels; None = self-attention.
        dropout: dropout after the output projection (``to_out.1``).
        backend: attention backend.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0,
                 backend: str = "auto") -> None:
        super().__init__()
        self.heads, self.backend = heads, backend
        kv = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv, dim, bias=False)
        self.to_v = nn.Linear(kv, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x (N, Lq, dim), context (N, Lk, context_dim) or None, mask bool broadcastable to
        (N, heads, Lq, Lk) -> (N, Lq, dim)."""
        src = x if context is None else context
        n, lq, dim = x.shape
        q = self.to_q(x).view(n, lq, self.heads, -1).transpose(1, 2)  # (N, h, Lq, d)
        k = self.to_k(src).view(n, src.shape[1], self.heads, -1).transpose(1, 2)  # (N, h, Lk, d)
        v = self.to_v(src).view(n, src.shape[1], self.heads, -1).transpose(1, 2)  # (N, h, Lk, d)
        out = attention(q, k, v, mask=mask, backend=self.backend).transpose(1, 2).reshape(n, lq, dim)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """``a * gelu(b)`` with ``[a | b] = proj(x)``: (N, L, dim_in) -> (N, L, dim_out)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """SD's GEGLU MLP, ``net = [GEGLU(dim, 4 dim), Dropout, Linear(4 dim, dim)]``: (N, L, dim) -> (N, L, dim)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention within a frame, cross-attention to the text, GEGLU MLP; pre-LayerNorm residuals."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float, backend: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SDAttention(dim, heads, None, dropout, backend)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = SDAttention(dim, heads, context_dim, dropout, backend)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None, b: int) -> Tensor:
        """x (B*T, H*W, C) tokens of every frame, context (B, L, D), context_mask (B, L) -> (B*T, H*W, C)."""
        x = x + self.attn1(self.norm1(x))
        n, hw, c = x.shape
        # each query attends to the text alone: attend from all T*H*W tokens of a clip at once
        # instead of copying the context per frame
        q = self.norm2(x).reshape(b, (n // b) * hw, c)  # (B, T*H*W, C)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L)
        x = x + self.attn2(q, context, mask).reshape(n, hw, c)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """SD's spatial transformer: GroupNorm, proj_in (1x1 conv or linear), blocks, proj_out, residual."""

    def __init__(self, channels: int, heads: int, context_dim: int, layers: int, groups: int,
                 linear_projection: bool, dropout: float, backend: str) -> None:
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        def proj() -> nn.Module:  # SD 2.x: linear on tokens; SD 1.x: 1x1 conv on the feature map
            return nn.Linear(channels, channels) if linear_projection else nn.Conv2d(channels, channels, 1)

        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, context_dim, dropout, backend) for _ in range(layers)
        )
        self.proj_out = proj()

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None, b: int) -> Tensor:
        """x (B*T, C, H, W), context (B, L, D) -> (B*T, C, H, W)."""
        n, c, h, w = x.shape
        hs = self.norm(x)
        if not self.linear_projection:
            hs = self.proj_in(hs)
        hs = hs.permute(0, 2, 3, 1).reshape(n, h * w, c)  # (B*T, H*W, C)
        if self.linear_projection:
            hs = self.proj_in(hs)
        for block in self.transformer_blocks:
            hs = block(hs, context, context_mask, b)
        if self.linear_projection:
            hs = self.proj_out(hs)
        hs = hs.reshape(n, h, w, c).permute(0, 3, 1, 2)  # (B*T, C, H, W)
        if not self.linear_projection:
            hs = self.proj_out(hs.contiguous())
        return hs + x


# ---------------------------------------------------------------------------------------------
# temporal modules
# ---------------------------------------------------------------------------------------------
class TemporalConv(nn.Conv3d):
    """Kernel-3 convolution over time at every pixel, initialised to the identity.

    The temporal half of :class:`latentvid.nn.layers.PseudoConv3d`: masked frames are zeroed first,
    so they act exactly like the zero padding at the clip's ends and valid frames never depend on them.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        nn.init.dirac_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """x (B, C, T, H, W), frame_mask (B, T) bool or None -> (B, C, T, H, W)."""
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask_5d(frame_mask), 0.0)
        return super().forward(x)


class TemporalLayer(nn.Module):
    """A temporal layer applied to frames folded into the batch, optionally alpha-blended (Video LDM).

    ``out = alpha * x + (1 - alpha) * layer(x)``, ``alpha = sigmoid(mix_logit)`` when ``mix_init`` is
    given, else ``out = layer(x)``.

    Args:
        layer: a module called as ``layer(x (B, C, T, H, W), frame_mask (B, T) or None)``.
        mix_init: initial alpha in (0, 1), or None for no blending.
    """

    def __init__(self, layer: nn.Module, mix_init: float | None) -> None:
        super().__init__()
        self.layer = layer
        self.mix_logit: nn.Parameter | None = None
        if mix_init is not None:
            self.mix_logit = nn.Parameter(torch.tensor(math.log(mix_init / (1.0 - mix_init))))

    @property
    def alpha(self) -> Tensor | None:
        """The blending weight of the input, sigmoid(mix_logit), or None without blending."""
        return None if self.mix_logit is None else torch.sigmoid(self.mix_logit)

    def forward(self, x: Tensor, video: ClipLayout) -> Tensor:
        """x (B*T, C, H, W) -> (B*T, C, H, W)."""
        n, c, h, w = x.shape
        clip = x.view(video.b, video.t, c, h, w).transpose(1, 2)  # (B, C, T, H, W)
        out = self.layer(clip, video.frame_mask)
        if self.mix_logit is not None:
            a = torch.sigmoid(self.mix_logit).to(out.dtype)
            out = a * clip + (1.0 - a) * out
        return out.transpose(1, 2).reshape(n, c, h, w)  # (B*T, C, H, W)


class ResnetBlock(nn.Module):
    """SD's ResnetBlock2D (GroupNorm, SiLU, 3x3 conv, additive time embedding) with temporal convs.

    ``h = conv1(silu(norm1(x))) [-> temporal_conv1] + time_emb_proj(silu(emb));
    h = conv2(drop(silu(norm2(h)))) [-> temporal_conv2];  out = shortcut(x) + h``.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, eps: float, dropout: float,
                 temporal_conv: bool, mix_init: float | None) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.temporal_conv1 = TemporalLayer(TemporalConv(c_out), mix_init) if temporal_conv else None
        self.temporal_conv2 = TemporalLayer(TemporalConv(c_out), mix_init) if temporal_conv else None

    def forward(self, x: Tensor, emb: Tensor, video: ClipLayout) -> Tensor:
        """x (B*T, C_in, H, W), emb (B*T, E) -> (B*T, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temporal_conv1 is not None:
            h = self.temporal_conv1(h, video)
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.temporal_conv2 is not None:
            h = self.temporal_conv2(h, video)
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Resample(nn.Module):
    """SD's Downsample2D (stride-2 3x3 conv) / Upsample2D (nearest x2, then 3x3 conv); key ``conv``."""

    def __init__(self, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B*T, C, H, W) -> (B*T, C, H/2, W/2) down or (B*T, C, 2H, 2W) up."""
        return self.conv(x if self.down else F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Block(nn.Module):
    """A down, mid or up block: ``resnets``, optional ``attentions`` (+ ``temporal_attentions``),
    ``downsamplers`` / ``upsamplers``, under diffusers' names."""

    def __init__(self, resnets: list[ResnetBlock], attentions: list[Transformer2D] | None,
                 temporal: list[TemporalLayer] | None, resample: Resample | None, resample_name: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.temporal_attentions = nn.ModuleList(temporal) if temporal else None
        if resample_name is not None:
            setattr(self, resample_name, nn.ModuleList([resample]))
        self.resample_name = resample_name

    def _attend(self, i: int, h: Tensor, context: Tensor, context_mask: Tensor | None, video: ClipLayout) -> Tensor:
        if self.attentions is None:
            return h
        h = run_layer(video, self.attentions[i], h, context, context_mask, video.b)
        if self.temporal_attentions is not None:
            h = run_layer(video, self.temporal_attentions[i], h, video)
        return h

    def _resample(self, h: Tensor) -> Tensor:
        return getattr(self, self.resample_name)[0](h)


class DownBlock(_Block):
    def forward(self, h: Tensor, emb: Tensor, context: Tensor, context_mask: Tensor | None,
                video: ClipLayout) -> tuple[Tensor, list[Tensor]]:
        """h (B*T, C, H, W) -> (h', skips): the output of every layer, and of the downsampler."""
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = run_layer(video, resnet, h, emb, video)
            h = self._attend(i, h, context, context_mask, video)
            skips.append(h)
        if self.resample_name is not None:
            h = self._resample(h)
            skips.append(h)
        return h, skips


class MidBlock(_Block):
    def forward(self, h: Tensor, emb: Tensor, context: Tensor, context_mask: Tensor | None,
                video: ClipLayout) -> Tensor:
        """resnet, transformer (+ temporal attention), resnet: (B*T, C, H, W) -> (B*T, C, H, W)."""
        h = run_layer(video, self.resnets[0], h, emb, video)
        h = self._attend(0, h, context, context_mask, video)
        return run_layer(video, self.resnets[1], h, emb, video)


class UpBlock(_Block):
    def forward(self, h: Tensor, skips: list[Tensor], emb: Tensor, context: Tensor, context_mask: Tensor | None,
                video: ClipLayout) -> Tensor:
        """h (B*T, C, H, W) and the down path's skips (consumed from the end) -> (B*T, C', H', W')."""
        for i, resnet in enumerate(self.resnets):
            h = run_layer(video, resnet, torch.cat([h, skips.pop()], dim=1), emb, video)
            h = self._attend(i, h, context, context_mask, video)
        if self.resample_name is not None:
            h = self._resample(h)
        return h


class TimestepEmbedding(nn.Module):
    """``linear_2(silu(linear_1(x)))``: (B, C0) sinusoids -> (B, E)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
