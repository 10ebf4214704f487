"""The factorized space-time U-Net (Video Diffusion Models / Imagen Video / Make-A-Video style).

Every layer is either spatial (acts on each frame alone: 1x3x3 convs, GroupNorm per frame, spatial
self-attention, cross-attention to the text) or temporal (identity-initialised kernel-3 convs over
time, zero-initialised temporal attention with a relative position bias). At initialisation the
temporal layers are identities, so the network is an image U-Net applied to every frame; with a
frame mask (B, T) the temporal layers see only valid frames, so an image padded to T frames is
processed exactly like a one-frame video.

Speed. Activations stay channels-last (memory order (B, T, H, W, C), see ``latentvid.nn.layers``),
so convolutions run as 2D convolutions on views and attention reads its tokens without copies;
a frame mask with every frame valid is dropped after one check, so clips without padding take
the mask-free kernels. ``gradient_checkpointing`` trades compute for memory per block or per
attention layer; ``compile=True`` hands the network body to ``torch.compile`` (fused norms,
activations and FiLM). Channel counts and head sizes that are multiples of 64 (head_dim 64 or 128)
suit tensor cores and flash attention; GroupNorm groups of 32 channels or more keep its
reductions efficient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from latentvid.nn.attention import CrossAttention, SpatialSelfAttention, TemporalAttention, check_backend
from latentvid.nn.layers import (
    Downsample,
    FeedForward,
    FrameGroupNorm,
    PositionEmbedding,
    ResBlock3D,
    ScalarEmbedding,
    Upsample,
    conv_per_frame,
)

LOGSNR_RANGE = (-20.0, 20.0)  # logSNR (and logSNR-like extra conditions) are clipped here before embedding
FPS_RANGE = (0.0, 120.0)  # frames per second
CHECKPOINTING = ("none", "block", "attention")
"""Gradient checkpointing granularities: none; every U-Net block (a ResBlock with its attention
layers, or a down / up sampler); every attention and feed-forward layer alone."""
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TEXT_POOLING = (None, "mean", "last")
"""How the caption's tokens are pooled into one vector for the embedding path (see ``UNet3D``):
none, the mean of the real tokens, or the last real token (a causal tower's end-of-text token)."""
_ATTENTION_LAYERS = (SpatialSelfAttention, CrossAttention, TemporalAttention, FeedForward)


def checkpointing_mode(value: bool | str) -> str:
    """Normalise ``gradient_checkpointing``: False -> "none", True -> "block", else one of CHECKPOINTING."""
    if value is False or value is True:
        return "block" if value else "none"
    if value not in CHECKPOINTING:
        raise ValueError(f"gradient_checkpointing must be a bool or one of {CHECKPOINTING}, got {value!r}")
    return value


class _Stage(nn.Sequential):
    """A run of layers called with the conditioning each one needs (the unit of checkpointing)."""

    def forward(
        self,
        x: Tensor,
        emb: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
        frame_mask: Tensor | None,
        checkpoint_attention: bool = False,
    ) -> Tensor:
        """x (B, C, T, H, W) -> (B, C', T, H', W'); emb (B, E), context (B, L, D), masks (B, L) / (B, T).

        ``checkpoint_attention`` recomputes each attention / feed-forward layer in backward."""
        for layer in self:
            if isinstance(layer, ResBlock3D):
                args: tuple = (x, emb, frame_mask)
            elif isinstance(layer, CrossAttention):
                args = (x, context, context_mask)
            elif isinstance(layer, TemporalAttention):
                args = (x, frame_mask)
            else:  # spatial attention, feed-forward, down / up sampling
                args = (x,)
            if checkpoint_attention and isinstance(layer, _ATTENTION_LAYERS):
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
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
        context_dim: width D of the text context (B, L, D); None disables text conditioning.
        cross_attention: attend to the text tokens from every attention block (per frame).
        text_pooling: also pool the text tokens into one vector and add an MLP of it to the
            logSNR embedding, which FiLM-modulates every ResBlock, temporal convolutions
            included (Imagen's pooled text embedding): ``"mean"`` of the real tokens, ``"last"``
            real token, or None (cross-attention only). Cross-attention reaches each frame alone,
            so a caption's *motion* words must otherwise be combined with frame order by later
            layers; the pooled path gives every layer the whole caption (README, "What the demo
            shows"). Its output layer starts at zero.
        temporal_attention: add temporal attention to attention blocks.
        temporal_conv: give the convolutions their identity-initialised temporal part; False makes
            every convolution purely spatial.
        max_temporal_distance: frame offset beyond which the relative position bias is shared.
        position_embedding: add a learned embedding of each token's absolute position to the
            features after the input convolution: ``"none"``, ``"frame"`` (the frame index) or
            ``"spacetime"`` (frame, row and column). Without it the network tells frames apart only
            by relative offsets (temporal attention) and the zero padding of the temporal
            convolutions (symmetric at initialisation), and places things only through the zero
            padding of its spatial convolutions. At high noise the input holds no trace of the
            clip, so the best prediction is the caption's mean clip, which for a moving object
            differs from frame to frame and across the frame; a network that cannot tell frames
            apart gains nothing from a motion word there (README, "What the demo shows"). The
            embeddings' output layers start at zero.
        fps_conditioning: add an embedding of the clip's frame rate when ``fps`` is given.
        num_extra_conditions: extra scalars per sample (e.g. the SR stages' conditioning-
            augmentation logSNR), embedded like logSNR (clipped to [-20, 20]).
        frame_conditioning: also take known frames (``known`` (B, C_in, T, H, W), ``known_mask``
            (B, T) in ``forward``): the known values, zero on unknown frames, and the mask as one
            more channel go through their own input convolution (``frame_input``), added to the
            input convolution's output. That layer starts at zero, so the network starts as the one
            without it, and a checkpoint of that network loads with only ``frame_input.*`` missing
            (image-to-video, extension and interpolation from one model; README).
        dropout: dropout inside ResBlocks.
        norm_groups: GroupNorm groups; must divide every level's channel count.
        gradient_checkpointing: recompute activations in the backward pass (training only):
            ``"none"`` / False, ``"block"`` / True (every block; least memory), or
            ``"attention"`` (only attention and feed-forward layers, whose activations are the
            largest per FLOP).
        attention_backend: ``"auto"`` or one of ``latentvid.nn.attention.BACKENDS``.
        ff_mult: hidden-width multiple of a GEGLU feed-forward layer after the cross-attention
            and after the temporal attention of every attention block (transformer-style);
            0 (default) adds none.
        channels_last: run on channels-last activations (memory order (B, T, H, W, C); weights
            of convolutions stored likewise). False keeps (B, C, T, H, W) order (Conv3d kernels).
            Same function either way.
        compile: run the network body through ``torch.compile`` (compiled on the first call,
            again for new input shapes). Off by default.
        compile_mode: ``torch.compile`` mode (None = default, ``"reduce-overhead"`` adds CUDA
            graphs, ``"max-autotune"``).
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
        cross_attention: bool = True,
        text_pooling: str | None = None,
        temporal_attention: bool = True,
        temporal_conv: bool = True,
        max_temporal_distance: int = 32,
        position_embedding: str = "none",
        fps_conditioning: bool = True,
        num_extra_conditions: int = 0,
        frame_conditioning: bool = False,
        dropout: float = 0.0,
        norm_groups: int = 32,
        gradient_checkpointing: bool | str = False,
        attention_backend: str = "auto",
        ff_mult: int = 0,
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {channel_mult}")
        if any(not 0 <= level < len(channel_mult) for level in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must index channel_mult {channel_mult}")
        check_backend(attention_backend, "attention_backend")
        if num_extra_conditions < 0:
            raise ValueError(f"num_extra_conditions must be >= 0, got {num_extra_conditions}")
        if ff_mult < 0:
            raise ValueError(f"ff_mult must be >= 0 (0 = no feed-forward layers), got {ff_mult}")
        if text_pooling not in TEXT_POOLING:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLING}, got {text_pooling!r}")
        if context_dim is None and text_pooling is not None:
            raise ValueError(f"text_pooling={text_pooling!r} needs text: set context_dim")
        if context_dim is not None and not cross_attention and text_pooling is None:
            raise ValueError("cross_attention=False without text_pooling would ignore the text: "
                             "set text_pooling or context_dim=None")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.context_dim = context_dim
        self.text_pooling = text_pooling
        self.num_extra_conditions = num_extra_conditions
        self.frame_conditioning = frame_conditioning
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        self.gradient_checkpointing = checkpointing_mode(gradient_checkpointing)
        self.channels_last = channels_last
        self.use_compile = compile  # (not `self.compile`: that is nn.Module's method)
        self.compile_mode = compile_mode
        emb_dim = 4 * model_channels

        self.logsnr_embed = ScalarEmbedding(emb_dim, LOGSNR_RANGE, freq_dim=model_channels)
        self.fps_embed = ScalarEmbedding(emb_dim, FPS_RANGE, freq_dim=model_channels) if fps_conditioning else None
        self.extra_embed = None
        if num_extra_conditions:
            self.extra_embed = ScalarEmbedding(emb_dim, LOGSNR_RANGE, num_extra_conditions, freq_dim=model_channels)
        self.text_embed = None
        if text_pooling is not None:
            self.text_embed = nn.Sequential(nn.Linear(context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.text_embed[-1].weight)  # starts as a network without the pooled path
            nn.init.zeros_(self.text_embed[-1].bias)

        self.position_embed = PositionEmbedding(model_channels, position_embedding, freq_dim=model_channels)

        def res_block(c_in: int, c_out: int) -> ResBlock3D:
            return ResBlock3D(c_in, c_out, emb_dim, dropout, norm_groups, temporal_conv)

        def attention_layers(channels: int) -> list[nn.Module]:
            layers: list[nn.Module] = [SpatialSelfAttention(channels, head_dim, norm_groups, attention_backend)]
            if context_dim is not None and cross_attention:
                layers.append(CrossAttention(channels, context_dim, head_dim, attention_backend))
            if ff_mult:
                layers.append(FeedForward(channels, ff_mult, dropout))
            if temporal_attention:
                layers.append(TemporalAttention(channels, head_dim, max_temporal_distance, attention_backend))
                if ff_mult:
                    layers.append(FeedForward(channels, ff_mult, dropout))
            return layers

        self.input_conv = nn.Conv3d(in_channels, model_channels, (1, 3, 3), padding=(0, 1, 1))
        self.frame_input = None
        if frame_conditioning:  # a separate layer, not a wider input_conv: old checkpoints load as they are
            self.frame_input = nn.Conv3d(in_channels + 1, model_channels, (1, 3, 3), padding=(0, 1, 1))
            nn.init.zeros_(self.frame_input.weight)  # starts as the network without known frames
            nn.init.zeros_(self.frame_input.bias)
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
        if channels_last:  # conv weights in the activations' order: no per-call weight transposes
            self.to(memory_format=torch.channels_last_3d)

    def __getstate__(self) -> dict:
        # a compiled function is rebuilt on demand, never copied (deepcopy for EMA, pickling)
        state = super().__getstate__().copy()
        state.pop("_compiled_body", None)
        return state

    def _run(self, stage: _Stage, x: Tensor, cond: tuple[Tensor | None, ...]) -> Tensor:
        """Apply one stage, recomputing it (or its attention layers) in backward when checkpointing."""
        mode = self.gradient_checkpointing if self.training and torch.is_grad_enabled() else "none"
        if mode == "block":
            return checkpoint(stage, x, *cond, use_reentrant=False)
        return stage(x, *cond, checkpoint_attention=mode == "attention")

    def forward(
        self,
        x: Tensor,
        logsnr: Tensor,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        fps: Tensor | None = None,
        frame_mask: Tensor | None = None,
        extra: Tensor | None = None,
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
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
            known: (B, C_in, T, H, W) the clean values of the known frames (``frame_conditioning``
                only); other frames are ignored. None: no frame is known.
            known_mask: (B, T) bool, True = known frame; needed with ``known``.

        Returns:
            (B, C_out, T, H, W).
        """
        check_denoiser_inputs(self, x, logsnr, context, context_mask, fps, frame_mask, extra)
        frames = frame_condition_input(self, x, known, known_mask)
        if frame_mask is not None and not torch.compiler.is_compiling() and bool(frame_mask.all()):
            frame_mask = None  # nothing to mask (one host sync): take the mask-free kernels
        body = self._body
        if self.use_compile and not torch.compiler.is_compiling():
            if self.__dict__.get("_compiled_body") is None:
                self.__dict__["_compiled_body"] = torch.compile(self._body, mode=self.compile_mode)
            body = self.__dict__["_compiled_body"]
        return body(x, logsnr, context, context_mask, fps, frame_mask, extra, frames)

    def _body(
        self,
        x: Tensor,
        logsnr: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
        fps: Tensor | None,
        frame_mask: Tensor | None,
        extra: Tensor | None,
        frames: Tensor | None = None,
    ) -> Tensor:
        """The network after input checks (what ``compile`` compiles); arguments as in ``forward``,
        ``frames`` (B, C_in + 1, T, H, W) from :func:`frame_condition_input`."""
        emb = self.logsnr_embed(logsnr)  # (B, E)
        if fps is not None:
            emb = emb + self.fps_embed(fps)
        if self.extra_embed is not None:
            emb = emb + self.extra_embed(extra)
        if self.text_embed is not None:
            emb = emb + self.text_embed(pool_tokens(context, context_mask, self.text_pooling))
        cond = (emb, context, context_mask, frame_mask)

        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)  # (B, C, T, H, W), memory (B, T, H, W, C)
        h = conv_per_frame(self.input_conv, x)  # (B, model_channels, T, H, W)
        if frames is not None:
            if self.channels_last:
                frames = frames.contiguous(memory_format=torch.channels_last_3d)
            h = h + conv_per_frame(self.frame_input, frames)
        if len(self.position_embed.axes):
            h = h + self.position_embed(x.shape[2:], h.dtype, h.device)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, cond)
            skips.append(h)
        h = self._run(self.middle, h, cond)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), cond)
        out = conv_per_frame(self.out_conv, F.silu(self.out_norm(h)))  # (B, C_out, T, H, W)
        return out.contiguous()  # callers get the usual layout (C_out is small)


def frame_condition_input(net: nn.Module, x: Tensor, known: Tensor | None, known_mask: Tensor | None
                          ) -> Tensor | None:
    """The extra input of a frame-conditioned denoiser: (B, C + 1, T, H, W), the known values (zero on
    unknown frames) and the mask as a channel; None for a network without ``frame_conditioning``.

    ``net`` provides ``frame_conditioning``; x (B, C, T, H, W) the noisy input; known (B, C, T, H, W)
    or None (no frame known); known_mask (B, T) bool. Raises ValueError naming what does not fit.
    """
    name = type(net).__name__
    if not getattr(net, "frame_conditioning", False):
        if known is not None or known_mask is not None:
            raise ValueError(f"{name}: known frames given but the model was built with frame_conditioning=False")
        return None
    b, _, t = x.shape[:3]
    if known is None:
        if known_mask is not None and bool(known_mask.any()):
            raise ValueError(f"{name}: known_mask marks known frames but known is None")
        return torch.zeros((b, x.shape[1] + 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    if known.shape != x.shape:
        raise ValueError(f"{name}: known must be shaped like x {tuple(x.shape)}, got {tuple(known.shape)}")
    if known_mask is None or known_mask.dtype != torch.bool or known_mask.shape != (b, t):
        got = None if known_mask is None else f"{known_mask.dtype} {tuple(known_mask.shape)}"
        raise ValueError(f"{name}: known_mask must be bool ({b}, {t}), got {got}")
    m = known_mask[:, None, :, None, None]  # (B, 1, T, 1, 1)
    values = torch.where(m, known.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))  # NaN-safe
    return torch.cat([values, m.to(x.dtype).expand(b, 1, *x.shape[2:])], dim=1)  # (B, C + 1, T, H, W)


def pool_tokens(context: Tensor, context_mask: Tensor | None, mode: str) -> Tensor:
    """Pool text tokens (B, L, D) with their mask (B, L) bool (None = all real) into (B, D).

    ``"mean"``: the mean of the real tokens; ``"last"``: the last real token (for a causal tower
    such as CLIP's, the end-of-text token, which has seen the whole caption)."""
    if context_mask is None:
        context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
    m = context_mask.to(context.dtype)  # (B, L)
    if mode == "mean":
        return (context * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    if mode == "last":
        positions = torch.arange(context.shape[1], device=context.device)  # (L,)
        last = torch.where(context_mask, positions, -1).amax(dim=1).clamp_min(0)  # (B,)
        return context[torch.arange(context.shape[0], device=context.device), last]
    raise ValueError(f"unknown text pooling {mode!r}; expected one of {TEXT_POOLING[1:]}")


def check_denoiser_inputs(
    net: nn.Module,
    x: Tensor,
    logsnr: Tensor,
    context: Tensor | None,
    context_mask: Tensor | None,
    fps: Tensor | None,
    frame_mask: Tensor | None,
    extra: Tensor | None,
) -> None:
    """Check the arguments of a video denoiser's ``forward`` (UNet3D's signature) against ``net``.

    ``net`` provides ``in_channels``, ``downsample_factor``, ``context_dim`` (None: no text),
    ``fps_embed`` (None: no fps conditioning) and ``num_extra_conditions``. Raises ValueError
    naming the network and the argument whose shape or presence is wrong.
    """
    name = type(net).__name__
    if x.ndim != 5 or x.shape[1] != net.in_channels:
        raise ValueError(f"{name}: x must be (B, {net.in_channels}, T, H, W), got {tuple(x.shape)}")
    b, _, t, h, w = x.shape
    f = net.downsample_factor
    if h % f or w % f:
        raise ValueError(f"{name}: H={h} and W={w} must be divisible by its down-sampling factor = {f}")
    if logsnr.shape != (b,):
        raise ValueError(f"{name}: logsnr must be ({b},), got {tuple(logsnr.shape)}")
    if net.context_dim is None and context is not None:
        raise ValueError(f"{name}: context given but the model was built with context_dim=None")
    if net.context_dim is not None:
        if context is None or context.ndim != 3 or context.shape[0] != b or context.shape[2] != net.context_dim:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"{name}: context must be ({b}, L, {net.context_dim}), got {got}")
        if context_mask is not None and (context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]):
            raise ValueError(f"{name}: context_mask must be bool {tuple(context.shape[:2])}, "
                             f"got {context_mask.dtype} {tuple(context_mask.shape)}")
    if fps is not None and (net.fps_embed is None or fps.shape != (b,)):
        raise ValueError(f"{name}: fps must be ({b},) with fps_conditioning=True, got {tuple(fps.shape)}")
    if frame_mask is not None and (frame_mask.dtype != torch.bool or frame_mask.shape != (b, t)):
        raise ValueError(f"{name}: frame_mask must be bool ({b}, {t}), got {frame_mask.dtype} {tuple(frame_mask.shape)}")
    n = net.num_extra_conditions
    if (extra is None) != (n == 0) or (extra is not None and extra.shape != (b, n)):
        got = None if extra is None else tuple(extra.shape)
        raise ValueError(f"{name}: extra must be ({b}, {n}) (None when num_extra_conditions=0), got {got}")
