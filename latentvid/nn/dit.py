"""A spacetime-patch diffusion transformer (DiT, Peebles & Xie 2023; Sora-style video patches).

The video (latents) (B, C, T, H, W) is cut into p_t x p_h x p_w patches, each patch becomes one
token, and a stack of transformer blocks runs over the T' x H' x W' tokens:

- positions: 3D rotary embeddings (RoPE, Su et al. 2021) on queries and keys, the head channels
  split between the frame, row and column axes, so attention scores depend on offsets only;
- conditioning: adaLN-Zero (DiT) from the logSNR embedding (+ fps, + extra scalars): each block's
  norms are shifted / scaled per sample and each residual branch is gated, gates starting at zero;
- text: cross-attention to the caption tokens under the caption mask (no modulation, PixArt / Wan);
- attention: ``"full"`` spatiotemporal self-attention over all tokens, or ``"factorized"``: per
  frame over space, then per position over time (Latte / Open-Sora 1.x);
- frame mask: patches whose frames are all masked are masked keys; masked frames are zeroed at the
  input, so valid outputs do not depend on them (joint image-video training, as for the U-Net).

It is a drop-in denoiser for :class:`~latentvid.models.latent_diffusion.LatentDiffusion`: the same
``forward(x, logsnr, context, context_mask, fps, frame_mask, extra)`` and attributes as
:class:`~latentvid.nn.unet3d.UNet3D`, checked by the same :func:`check_denoiser_inputs`. All
attention runs through :func:`latentvid.nn.attention.attention` (xformers / SDPA / math).
:class:`DiTBlock` is the unit to wrap for FSDP and to checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from latentvid.nn.attention import MultiHeadAttention, attention, check_backend, num_heads
from latentvid.nn.layers import PositionEmbedding, ScalarEmbedding
from latentvid.nn.unet3d import FPS_RANGE, LOGSNR_RANGE, check_denoiser_inputs, frame_condition_input

ATTENTION_MODES = ("full", "factorized")


# ---- patches -----------------------------------------------------------------------------------
def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> tokens (B, T'*H'*W', C*pt*ph*pw), tokens in (t, h, w) raster order."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T', H', W', C, pt, ph, pw)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(tokens: Tensor, patch: tuple[int, int, int], grid: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`patchify`: tokens (B, T'*H'*W', C*pt*ph*pw) on ``grid`` (T', H', W') -> (B, C, T, H, W)."""
    b = tokens.shape[0]
    pt, ph, pw = patch
    gt, gh, gw = grid
    c = tokens.shape[-1] // (pt * ph * pw)
    x = tokens.reshape(b, gt, gh, gw, c, pt, ph, pw)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, T', pt, H', ph, W', pw)
    return x.reshape(b, c, gt * pt, gh * ph, gw * pw)


# ---- 3D rotary position embedding --------------------------------------------------------------
def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Head channels per axis (frames, rows, columns), each even: rows and columns get 2 * (d // 6)
    each and frames the rest (so time keeps the most low frequencies, as in Wan 2.1)."""
    if head_dim % 2:
        raise ValueError(f"3D RoPE needs an even head_dim, got {head_dim}")
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0,
                device: torch.device | None = None) -> Tensor:
    """Rotation angles (T'*H'*W', head_dim / 2) float32 for the integer positions of ``grid``.

    Each axis a with d_a channels rotates its d_a / 2 channel pairs by position_a * theta^(-2i / d_a).
    """
    angles = []
    for size, d, axis in zip(grid, rope_axis_dims(head_dim), range(3)):
        if d == 0:
            continue
        freqs = theta ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)  # (d/2,)
        pos = torch.arange(size, device=device, dtype=torch.float32)
        shape = [1, 1, 1]
        shape[axis] = size
        a = (pos[:, None] * freqs[None]).reshape(*shape, d // 2).expand(*grid, d // 2)  # (T', H', W', d/2)
        angles.append(a)
    return torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., N, d) by angles (N, d/2); computed in float32."""
    xf = x.float().unflatten(-1, (-1, 2))  # (..., N, d/2, 2)
    cos, sin = angles.cos(), angles.sin()  # (N, d/2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


# ---- blocks ------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned gain (for queries and keys: keeps logits bounded)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class RoPESelfAttention(nn.Module):
    """Multi-head self-attention with q/k RMS norms and 3D RoPE, on the shared backends.

    Args:
        dim: token channels.
        head_dim: channels per head (heads = dim // head_dim).
        backend: attention backend (``"auto"`` or one of ``latentvid.nn.attention.BACKENDS``).
    """

    def __init__(self, dim: int, head_dim: int = 64, backend: str = "auto") -> None:
        super().__init__()
        check_backend(backend)
        self.heads, self.head_dim, self.backend = num_heads(dim, head_dim), head_dim, backend
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, angles: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (N, L, dim), angles (L, head_dim / 2), mask bool broadcastable to (N, heads, L, L) -> (N, L, dim)."""
        n, length, dim = x.shape
        q, k, v = self.to_qkv(x).view(n, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (N, h, L, d)
        q, k = apply_rope(self.norm_q(q), angles), apply_rope(self.norm_k(k), angles)
        out = attention(q, k, v, mask=mask, backend=self.backend)  # (N, h, L, d)
        return self.to_out(out.transpose(1, 2).reshape(n, length, dim))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, N, D) * (1 + scale) + shift, with shift / scale (B, D) per sample."""
    return x * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """One transformer block: [adaLN self-attention (full, or space then time)] -> cross-attention
    -> adaLN MLP, each a gated residual. The unit for FSDP wrapping and gradient checkpointing.

    Args:
        dim: token channels D.
        cond_dim: width of the conditioning vector (logSNR + fps embedding).
        head_dim: channels per attention head.
        context_dim: text token width; None = no cross-attention.
        mlp_ratio: MLP hidden width as a multiple of D.
        attention_mode: ``"full"`` or ``"factorized"``.
        backend: attention backend.
    """

    def __init__(self, dim: int, cond_dim: int, head_dim: int = 64, context_dim: int | None = None,
                 mlp_ratio: float = 4.0, attention_mode: str = "full", backend: str = "auto") -> None:
        super().__init__()
        self.factorized = attention_mode == "factorized"
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = RoPESelfAttention(dim, head_dim, backend)
        n_mod = 6
        if self.factorized:
            self.norm_t = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.attn_t = RoPESelfAttention(dim, head_dim, backend)
            n_mod = 9
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross = MultiHeadAttention(dim, context_dim, head_dim, backend)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(cond_dim, n_mod * dim)
        nn.init.zeros_(self.modulation.weight)  # adaLN-Zero: every residual branch starts closed
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, cond: Tensor, grid: tuple[int, int, int], angles: Tensor,
                token_mask: Tensor | None, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        """x (B, N, D) tokens on ``grid`` (T', H', W'), cond (B, cond_dim) (already SiLU'd), angles
        (N, head_dim / 2), token_mask (B, N) bool or None (all valid), context (B, L, Dc),
        context_mask (B, L) bool or None -> (B, N, D)."""
        b, n, d = x.shape
        gt, gh, gw = grid
        mods = self.modulation(cond).chunk(9 if self.factorized else 6, dim=-1)  # each (B, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods[:6]
        h = modulate(self.norm1(x), shift1, scale1)
        if not self.factorized:
            mask = None if token_mask is None else token_mask[:, None, None, :]  # (B, 1, 1, N): valid keys
            x = x + gate1[:, None] * self.attn(h, angles, mask)
        else:
            # space: one sequence per frame; a frame's tokens are all valid or all masked, so no mask
            hs = h.reshape(b * gt, gh * gw, d)  # (B*T', H'*W', D)
            a_s = angles.view(gt, gh * gw, -1)[0]  # the frame axis rotates every token alike: it cancels
            x = x + gate1[:, None] * self.attn(hs, a_s, None).reshape(b, n, d)
            shift_t, scale_t, gate_t = mods[6:]
            ht = modulate(self.norm_t(x), shift_t, scale_t).view(b, gt, gh * gw, d).transpose(1, 2)  # (B, H'W', T', D)
            ht = ht.reshape(b * gh * gw, gt, d)
            a_t = angles.view(gt, gh * gw, -1)[:, 0]  # (T', d/2): positions along time
            mask = None
            if token_mask is not None:
                frames = token_mask.view(b, gt, gh * gw)[:, :, 0]  # (B, T')
                mask = frames.repeat_interleave(gh * gw, dim=0)[:, None, None, :]  # (B*H'W', 1, 1, T')
            out = self.attn_t(ht, a_t, mask).view(b, gh * gw, gt, d).transpose(1, 2).reshape(b, n, d)
            x = x + gate_t[:, None] * out
        if self.cross is not None:
            cmask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L)
            x = x + self.cross(self.norm_cross(x), context, mask=cmask)
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


# ---- the network -------------------------------------------------------------------------------
class DiT3D(nn.Module):
    """Spacetime-patch diffusion transformer with UNet3D's interface (see the module docstring).

    Args:
        in_channels: input (latent) channels C.
        out_channels: output channels (usually C).
        patch_size: (p_t, p_h, p_w); T must be divisible by p_t, H and W by p_h = p_w.
        dim: token width D.
        depth: number of :class:`DiTBlock` s.
        head_dim: channels per attention head (heads = dim // head_dim; even, for RoPE).
        mlp_ratio: MLP hidden width / D.
        context_dim: width of the text tokens (B, L, D_c); None disables text conditioning.
        attention_mode: ``"full"`` (all T'H'W' tokens attend to each other) or ``"factorized"``
            (space within each frame, then time at each position: much cheaper for long clips).
        fps_conditioning: add an fps embedding to the conditioning vector.
        num_extra_conditions: extra scalar conditions (B, n) (e.g. an SR stage's augmentation level).
        frame_conditioning: also take known frames (``known``, ``known_mask`` in ``forward``): their
            values (zero where unknown) and the mask as one more channel are patchified and embedded
            by their own zero-initialised ``frame_input``, added to the patch tokens, so the network
            starts as (and loads the checkpoints of) the one without it (as UNet3D's option).
        rope_theta: RoPE base period.
        position_embedding: also add learned embeddings of each token's absolute patch position,
            ``"none"`` (RoPE's relative positions only), ``"frame"`` or ``"spacetime"``
            (:class:`~latentvid.nn.layers.PositionEmbedding`, zero at initialisation): at high noise
            the caption's mean clip differs from frame to frame, which relative positions alone
            express only through the sequence's edges (README, "What the demo shows").
        gradient_checkpointing: recompute each block in the backward pass (training only); True or
            ``"block"`` (the U-Net's names; ``"attention"`` is treated as ``"block"`` here).
        attention_backend: ``"auto"`` or one of ``latentvid.nn.attention.BACKENDS``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        dim: int = 256,
        depth: int = 8,
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        context_dim: int | None = 512,
        attention_mode: str = "full",
        fps_conditioning: bool = True,
        num_extra_conditions: int = 0,
        frame_conditioning: bool = False,
        rope_theta: float = 10000.0,
        position_embedding: str = "none",
        gradient_checkpointing: bool | str = False,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, got {attention_mode!r}")
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != 3 or min(patch_size) < 1 or patch_size[1] != patch_size[2]:
            raise ValueError(f"patch_size must be (p_t, p, p) with positive entries, got {patch_size}")
        if gradient_checkpointing not in (False, True, "none", "block", "attention"):
            raise ValueError(f"gradient_checkpointing must be a bool, 'none', 'block' or 'attention', "
                             f"got {gradient_checkpointing!r}")
        rope_axis_dims(head_dim)  # validates head_dim
        self.in_channels, self.out_channels = in_channels, out_channels
        self.patch_size = patch_size
        self.downsample_factor = patch_size[1]  # what check_denoiser_inputs checks H and W against
        self.context_dim = context_dim
        self.num_extra_conditions = num_extra_conditions
        self.attention_mode = attention_mode
        self.head_dim, self.rope_theta = head_dim, rope_theta
        self.gradient_checkpointing = gradient_checkpointing not in (False, "none")
        patch_numel = patch_size[0] * patch_size[1] * patch_size[2]
        cond_dim = dim
        self.patch_embed = nn.Linear(in_channels * patch_numel, dim)
        self.frame_conditioning = frame_conditioning
        self.frame_input = None
        if frame_conditioning:  # separate from patch_embed, so old checkpoints load as they are
            self.frame_input = nn.Linear((in_channels + 1) * patch_numel, dim)
            nn.init.zeros_(self.frame_input.weight)  # starts as the network without known frames
            nn.init.zeros_(self.frame_input.bias)
        self.position_embed = PositionEmbedding(dim, position_embedding)
        self.logsnr_embed = ScalarEmbedding(cond_dim, LOGSNR_RANGE, freq_dim=256)
        self.fps_embed = ScalarEmbedding(cond_dim, FPS_RANGE, freq_dim=256) if fps_conditioning else None
        self.extra_embed = None
        if num_extra_conditions:
            self.extra_embed = ScalarEmbedding(cond_dim, LOGSNR_RANGE, num_extra_conditions, freq_dim=256)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, cond_dim, head_dim, context_dim, mlp_ratio, attention_mode, attention_backend)
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(cond_dim, 2 * dim)
        self.out_proj = nn.Linear(dim, out_channels * patch_numel)
        for layer in (self.out_modulation, self.out_proj):  # DiT: the network starts as the zero function
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

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
        """Predict from a noisy video (arguments as :meth:`latentvid.nn.unet3d.UNet3D.forward`).

        Args:
            x: (B, C_in, T, H, W); T divisible by p_t, H and W by p_h.
            logsnr: (B,), clipped to [-20, 20] for the embedding.
            context: (B, L, D_c) text tokens; required iff ``context_dim`` is set.
            context_mask: (B, L) bool, True = real token; None = all real.
            fps: (B,) or None.
            frame_mask: (B, T) bool, True = valid frame; None = all valid. A patch is a valid token
                if any of its frames is; masked frames are zeroed first.
            extra: (B, num_extra_conditions) or None.
            known, known_mask: (B, C_in, T, H, W) known frames and (B, T) bool mask
                (``frame_conditioning`` only; None: no frame known).

        Returns:
            (B, C_out, T, H, W).
        """
        check_denoiser_inputs(self, x, logsnr, context, context_mask, fps, frame_mask, extra)
        frames = frame_condition_input(self, x, known, known_mask)  # (B, C_in + 1, T, H, W) or None
        b, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        if t % pt:
            raise ValueError(f"{type(self).__name__}: T={t} must be divisible by the temporal patch size {pt}")
        grid = (t // pt, h // ph, w // pw)
        token_mask = None
        if frame_mask is not None and not bool(frame_mask.all()):
            x = torch.where(frame_mask[:, None, :, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            if frames is not None:
                frames = torch.where(frame_mask[:, None, :, None, None], frames, torch.zeros((), dtype=x.dtype,
                                                                                              device=x.device))
            patch_valid = frame_mask.view(b, grid[0], pt).any(dim=2)  # (B, T')
            token_mask = patch_valid[:, :, None].expand(b, grid[0], grid[1] * grid[2]).reshape(b, -1)  # (B, N)
        cond = self.logsnr_embed(logsnr)  # (B, D)
        if fps is not None:
            cond = cond + self.fps_embed(fps)
        if self.extra_embed is not None:
            cond = cond + self.extra_embed(extra)
        cond = F.silu(cond)
        tokens = self.patch_embed(patchify(x, self.patch_size).to(self.patch_embed.weight.dtype))  # (B, N, D)
        if frames is not None:
            tokens = tokens + self.frame_input(patchify(frames, self.patch_size).to(tokens.dtype))  # (B, N, D)
        if len(self.position_embed.axes):
            pos = self.position_embed(grid, tokens.dtype, tokens.device).expand(1, -1, *grid)  # (1, D, T', H', W')
            tokens = tokens + pos.flatten(2).transpose(1, 2)  # (1, N, D) in patchify's (t, h, w) order
        angles = rope_angles(grid, self.head_dim, self.rope_theta, device=x.device)  # (N, head_dim/2)
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            args = (tokens, cond, grid, angles, token_mask, context, context_mask)
            tokens = checkpoint(block, *args, use_reentrant=False) if use_ckpt else block(*args)
        shift, scale = self.out_modulation(cond).chunk(2, dim=-1)
        out = self.out_proj(modulate(self.norm_out(tokens), shift, scale))  # (B, N, C_out*pt*ph*pw)
        return unpatchify(out, self.patch_size, grid).to(x.dtype)
