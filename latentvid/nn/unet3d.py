"""The factorized space-time U-Net (Video Diffusion Models / Imagen Video / Make-A-Video style).

Every layer is either spatial (acts on each frame alone: 1x3x3 convs, GroupNorm per frame, spatial
self-attention, cross-attention to the text) or temporal (identity-initialised kernel-3 convs over
time, zero-initialised temporal attention with a relative position bias). At initialisation the
temporal layers are identities, so the network is an image U-Net applied to every frame; with a
frame mask (B, T) the temporal layers see only valid frames, so an image padded to T frames is
processed exactly like a one-frame video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from latentvid.nn.attention import CrossAttention, SpatialSelfAttention, TemporalAttention, check_backend
from latentvid.nn.layers import Downsample, FrameGroupNorm, ResBlock3D, ScalarEmbedding, Upsample

LOGSNR_RANGE = (-20.0, 20.0)  # logSNR (and logSNR-like extra conditions) are clipped here before embedding
FPS_RANGE = (0.0, 120.0)  # frames per second


class _Stage(nn.Sequential):
    """A run of layers called with the conditioning each one needs (the unit of checkpointing)."""

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor | None, context_mask: Tensor | None, frame_mask: Tensor | None
    ) -> Tensor:
        """x (B, C, T, H, W) -> (B, C', T, H', W'); emb (B, E), context (B, L, D), masks (B, L) / (B, T)."""
        for layer in self:
            if isinstance(layer, ResBlock3D):
                x = layer(x, emb, frame_mask)
            elif isinstance(layer, CrossAttention):
                x = layer(x, context, context_mask)
            elif isinstance(layer, TemporalAttention):
                x = layer(x, frame_mask)
            else:  # spatial attention, down / up sampling
                x = layer(x)
        return x


class UNet3D(nn.Module):
    """Factorized space-time U-Net predicting (B, C_out, T, H, W) from a noisy video and its logSNR.

    Args:
        in_channels: channels of the input video / latents.
        out_channels: channels of the prediction.
        model_channels: channels at the first level; the embedding width is 4x this.
        channel_mult: channel multiplier per level; each level but the last halves H and W.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_levels: indices into ``channel_mult`` whose blocks get attention (spatial self,
            cross, temporal); the middle block always has it.
        head_dim: channels per attention head (heads = channels // head_dim; must divide).
        context_dim: width D of the text context (B, L, D); None disables cross-attention.
        temporal_attention: add temporal attention to attention blocks.
        temporal_conv: give the convolutions their identity-initialised temporal part; False makes
            every convolution purely spatial.
        max_temporal_distance: frame offset beyond which the relative position bias is shared.
        fps_conditioning: add an embedding of the clip's frame rate when ``fps`` is given.
        num_extra_conditions: extra scalars per sample (e.g. the SR stages' conditioning-
            augmentation logSNR), embedded like logSNR (clipped to [-20, 20]).
        dropout: dropout inside ResBlocks.
        norm_groups: GroupNorm groups; must divide every level's channel count.
        gradient_checkpointing: recompute each block in the backward pass (training only).
        attention_backend: ``"auto"`` or one of ``latentvid.nn.attention.BACKENDS``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        model_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (1, 2),
        head_dim: int = 32,
        context_dim: int | None = 512,
        temporal_attention: bool = True,
        temporal_conv: bool = True,
        max_temporal_distance: int = 32,
        fps_conditioning: bool = True,
        num_extra_conditions: int = 0,
        dropout: float = 0.0,
        norm_groups: int = 32,
        gradient_checkpointing: bool = False,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {channel_mult}")
        if any(not 0 <= level < len(channel_mult) for level in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must index channel_mult {channel_mult}")
        check_backend(attention_backend, "attention_backend")
        if num_extra_conditions < 0:
            raise ValueError(f"num_extra_conditions must be >= 0, got {num_extra_conditions}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.context_dim = context_dim
        self.num_extra_conditions = num_extra_conditions
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        self.gradient_checkpointing = gradient_checkpointing
        emb_dim = 4 * model_channels

        self.logsnr_embed = ScalarEmbedding(emb_dim, LOGSNR_RANGE, freq_dim=model_channels)
        self.fps_embed = ScalarEmbedding(emb_dim, FPS_RANGE, freq_dim=model_channels) if fps_conditioning else None
        self.extra_embed = None
        if num_extra_conditions:
            self.extra_embed = ScalarEmbedding(emb_dim, LOGSNR_RANGE, num_extra_conditions, freq_dim=model_channels)

        def res_block(c_in: int, c_out: int) -> ResBlock3D:
            return ResBlock3D(c_in, c_out, emb_dim, dropout, norm_groups, temporal_conv)

        def attention_layers(channels: int) -> list[nn.Module]:
            layers: list[nn.Module] = [SpatialSelfAttention(channels, head_dim, norm_groups, attention_backend)]
            if context_dim is not None:
                layers.append(CrossAttention(channels, context_dim, head_dim, attention_backend))
            if temporal_attention:
                layers.append(TemporalAttention(channels, head_dim, max_temporal_distance, attention_backend))
            return layers

        self.input_conv = nn.Conv3d(in_channels, model_channels, (1, 3, 3), padding=(0, 1, 1))
        self.down = nn.ModuleList()
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if level in attention_levels:
                    layers += attention_layers(ch)
                self.down.append(_Stage(*layers))
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(_Stage(Downsample(ch)))
                skip_channels.append(ch)

        self.middle = _Stage(res_block(ch, ch), *attention_layers(ch), res_block(ch, ch))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * model_channels)]
                ch = mult * model_channels
                if level in attention_levels:
                    layers += attention_layers(ch)
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.up.append(_Stage(*layers))

        self.out_norm = FrameGroupNorm(norm_groups, ch)
        self.out_conv = nn.Conv3d(ch, out_channels, (1, 3, 3), padding=(0, 1, 1))
        nn.init.zeros_(self.out_conv.weight)  # start by predicting zero
        nn.init.zeros_(self.out_conv.bias)

    def _run(self, stage: _Stage, x: Tensor, cond: tuple[Tensor | None, ...]) -> Tensor:
        """Apply one stage, recomputing it in backward when gradient checkpointing is on."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, *cond, use_reentrant=False)
        return stage(x, *cond)

    def _check_inputs(
        self,
        x: Tensor,
        logsnr: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
        fps: Tensor | None,
        frame_mask: Tensor | None,
        extra: Tensor | None,
    ) -> None:
        """Raise ValueError naming the argument whose shape or presence is wrong."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D: x must be (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"UNet3D: H={h} and W={w} must be divisible by 2**(len(channel_mult)-1) = {f}")
        if logsnr.shape != (b,):
            raise ValueError(f"UNet3D: logsnr must be ({b},), got {tuple(logsnr.shape)}")
        if self.context_dim is None and context is not None:
            raise ValueError("UNet3D: context given but the model was built with context_dim=None")
        if self.context_dim is not None:
            if context is None or context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.context_dim:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"UNet3D: context must be ({b}, L, {self.context_dim}), got {got}")
            bad_mask = context_mask is not None and (
                context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]
            )
            if bad_mask:
                raise ValueError(
                    f"UNet3D: context_mask must be bool {tuple(context.shape[:2])}, "
                    f"got {context_mask.dtype} {tuple(context_mask.shape)}"
                )
        if fps is not None and (self.fps_embed is None or fps.shape != (b,)):
            raise ValueError(f"UNet3D: fps must be ({b},) with fps_conditioning=True, got {tuple(fps.shape)}")
        if frame_mask is not None and (frame_mask.dtype != torch.bool or frame_mask.shape != (b, t)):
            raise ValueError(
                f"UNet3D: frame_mask must be bool ({b}, {t}), got {frame_mask.dtype} {tuple(frame_mask.shape)}"
            )
        n = self.num_extra_conditions
        if (extra is None) != (n == 0) or (extra is not None and extra.shape != (b, n)):
            got = None if extra is None else tuple(extra.shape)
            raise ValueError(f"UNet3D: extra must be ({b}, {n}) (None when num_extra_conditions=0), got {got}")

    def forward(
        self,
        x: Tensor,
        logsnr: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        fps: Tensor | None = None,
        frame_mask: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> Tensor:
        """Predict from a noisy video.

        Args:
            x: noisy video or latents (B, C_in, T, H, W); H, W divisible by 2**(len(channel_mult)-1).
            logsnr: noise level (B,); +-inf allowed (clipped to [-20, 20]).
            context: text tokens (B, L, D); required iff ``context_dim`` is set.
            context_mask: (B, L) bool, True = real token; None = all real.
            fps: frame rate (B,) float; None leaves the fps embedding out.
            frame_mask: (B, T) bool, True = valid frame; None = all valid. Outputs on masked frames
                are meaningless and valid frames do not depend on them.
            extra: (B, num_extra_conditions) extra scalar conditions.

        Returns:
            (B, C_out, T, H, W).
        """
        self._check_inputs(x, logsnr, context, context_mask, fps, frame_mask, extra)
        emb = self.logsnr_embed(logsnr)  # (B, E)
        if fps is not None:
            emb = emb + self.fps_embed(fps)
        if self.extra_embed is not None:
            emb = emb + self.extra_embed(extra)
        cond = (emb, context, context_mask, frame_mask)

        h = self.input_conv(x)  # (B, model_channels, T, H, W)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, cond)
            skips.append(h)
        h = self._run(self.middle, h, cond)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), cond)
        return self.out_conv(F.silu(self.out_norm(h)))
