"""Attention: the one place that picks a kernel, and the U-Net's spatial / cross / temporal blocks.

``attention(q, k, v, mask, bias, backend)`` is the only function that runs scaled dot-product
attention in latentvid. Backends, in order of preference:

- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (layout (B, L, heads, d), dense bias);
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``;
- ``"math"``: ``softmax(q k^T / sqrt(d) + bias) v`` written out; the reference the others must match.

``"auto"`` probes each backend once per (device type, dtype, has mask, has bias) with a tiny real
forward and backward call checked against ``"math"``, caches the first that works, and logs it.
Any backend other than ``"math"`` that raises at call time (e.g. xformers installed without
kernels for this device) is marked broken for that setting and the call falls through to the next.

Query rows whose mask allows no key at all (a masked frame in temporal attention) return zeros,
and neither their forward values nor their gradients can be NaN.

Inside ``torch.compile`` there is no probing and no fallback: ``"auto"`` (and ``"xformers"``)
mean SDPA, the kernel the compiler knows.

Layouts. The attention modules project q, k and v with one fused matrix whose output rows are
grouped per head (``(heads, {q, k, v}, head_dim)``), so a single view splits heads and the
(N, heads, L, d) operands SDPA takes are strided views of the projection, never copies.
``TemporalAttention`` folds the H*W positions into SDPA's head dimension instead of its batch, so
channels-last video (memory order (B, T, H*W, C)) needs no transpose at all, and its frame mask
stays a compact (B, 1, T, T).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor, nn

from latentvid.nn.layers import FrameGroupNorm

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("xformers", "sdpa", "math")
"""Backends in order of preference; ``"math"`` is last and always works."""

MAX_GROUPED_HEADS = 65535
"""Most (groups x heads) one grouped attention call takes: CUDA's fused kernels put the head index
on a grid axis limited to 65535 blocks; more groups run in chunks."""

_Impl = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None], Tensor]
_SettingKey = tuple[str, torch.dtype, bool, bool]  # (device type, dtype, has mask, has bias)


def _math_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None) -> Tensor:
    """Reference attention. q (B, h, Lq, d), k/v (B, h, Lk, d) -> (B, h, Lq, d)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, h, Lq, Lk)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


def _additive_bias(mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Fold a bool mask into an additive float bias (-inf where not allowed); shapes broadcast."""
    if mask is None:
        return None if bias is None else bias.to(dtype)
    base = torch.zeros((), dtype=dtype, device=mask.device) if bias is None else bias.to(dtype)
    return torch.where(mask, base, torch.tensor(float("-inf"), dtype=dtype, device=mask.device))


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None) -> Tensor:
    """PyTorch SDPA. A lone bool mask is passed as is, so SDPA may keep its fused kernels."""
    attn_mask = mask if bias is None else _additive_bias(mask, bias, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None) -> Tensor:
    """xformers memory-efficient attention; raises ImportError when xformers is absent."""
    import xformers.ops as xops

    attn_bias = _additive_bias(mask, bias, q.dtype)
    if attn_bias is not None:
        b, heads, lq, _ = q.shape
        lk = k.shape[-2]
        # xformers wants a materialised (B, h, Lq, Lk) bias whose rows start 8-element aligned.
        aligned = -(-lk // 8) * 8
        attn_bias = q.new_empty(b, heads, lq, aligned)[..., :lk].copy_(attn_bias.expand(b, heads, lq, lk))
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=attn_bias
    )  # (B, Lq, h, d)
    return out.transpose(1, 2)  # (B, h, Lq, d)


# Exceptions torch raises through our code on purpose: non-reentrant checkpointing stops a
# recomputation early by raising one. Never read as "this backend is broken".
_CONTROL_FLOW: tuple[type[BaseException], ...] = tuple(
    cls for cls in (getattr(torch.utils.checkpoint, "_StopRecomputationError", None),) if cls is not None
)

_IMPLS: dict[str, _Impl] = {"xformers": _xformers_attention, "sdpa": _sdpa_attention, "math": _math_attention}
_auto_choice: dict[_SettingKey, str] = {}
_broken: set[tuple[_SettingKey, str]] = set()


def reset_backend_cache() -> None:
    """Forget probed choices and backends marked broken (e.g. after installing xformers)."""
    _auto_choice.clear()
    _broken.clear()


def _probe_inputs(device: torch.device, dtype: torch.dtype, has_mask: bool, has_bias: bool):
    """Tiny fixed q, k, v (2, 2, 5, 8) requiring grad, and a mask / bias when asked for."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
    mask = bias = None
    if has_mask:  # random pattern that keeps every row's diagonal, so no row is empty
        mask = ((torch.rand(2, 1, 5, 5, generator=gen) > 0.5) | torch.eye(5, dtype=torch.bool)).to(device)
    if has_bias:
        bias = torch.randn(1, 2, 5, 5, generator=gen).to(device, dtype)
    return q, k, v, mask, bias


def _probe(name: str, device: torch.device, dtype: torch.dtype, has_mask: bool, has_bias: bool) -> bool:
    """Run backend ``name`` forward and backward on a tiny input; True if it works and matches math."""
    autocast_off = (
        torch.autocast(device.type, enabled=False)
        if torch.amp.is_autocast_available(device.type)
        else contextlib.nullcontext()
    )
    # The first call may come from inside no_grad / inference_mode (sampling); probe training too.
    # It may also come from inside a checkpointed block, whose saved-tensor hooks would record the
    # probe's tensors and then miss them when the block is recomputed (the probe is cached by then):
    # identity hooks keep the probe out of the checkpoint's bookkeeping.
    with torch.inference_mode(False), torch.enable_grad(), autocast_off, \
            torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        q, k, v, mask, bias = _probe_inputs(device, dtype, has_mask, has_bias)
        try:
            out = _IMPLS[name](q, k, v, mask, bias)
            out.float().sum().backward()
        except Exception as err:  # any failure just means "not this backend"
            logger.debug(
                "attention backend %r unusable on %s/%s: %s: %s", name, device.type, dtype, type(err).__name__, err
            )
            return False
        with torch.no_grad():
            ref = _math_attention(q.float(), k.float(), v.float(), mask, None if bias is None else bias.float())
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2
    ok = out.shape == ref.shape and torch.allclose(out.detach().float(), ref, atol=tol, rtol=tol)
    if not ok:
        logger.warning(
            "attention backend %r disagrees with the math reference on %s/%s; not using it", name, device.type, dtype
        )
    return ok


def select_backend(device: torch.device, dtype: torch.dtype, has_mask: bool, has_bias: bool) -> str:
    """The backend ``"auto"`` uses for this setting: probed on first use, then cached."""
    key: _SettingKey = (device.type, dtype, has_mask, has_bias)
    if key not in _auto_choice:
        name = next((n for n in BACKENDS[:-1] if _probe(n, device, dtype, has_mask, has_bias)), BACKENDS[-1])
        _auto_choice[key] = name
        logger.info("attention backend for %s/%s (mask=%s, bias=%s): %s", device.type, dtype, has_mask, has_bias, name)
    return _auto_choice[key]


def check_backend(backend: str, argument: str = "attention backend") -> None:
    """Raise ValueError unless ``backend`` is ``"auto"`` or one of ``BACKENDS``."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"{argument} must be 'auto' or one of {BACKENDS}, got {backend!r}")


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, bias: Tensor | None, backend: str) -> None:
    """Raise ValueError on inputs that no backend could take, so a backend failure means the backend."""
    check_backend(backend)
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention expects q (B, h, Lq, d) and k, v (B, h, Lk, d); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    scores_shape = (*q.shape[:3], k.shape[2])
    for name, t in (("mask", mask), ("bias", bias)):
        if t is None:
            continue
        if name == "mask" and t.dtype != torch.bool:
            raise ValueError(f"attention mask must be bool (True = may attend), got {t.dtype}")
        try:
            ok = torch.broadcast_shapes(t.shape, scores_shape) == scores_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"attention {name} of shape {tuple(t.shape)} does not broadcast to {scores_shape}")


def attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, bias: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """Scaled dot-product attention with a chosen or probed backend.

    Args:
        q: queries (B, heads, Lq, d).
        k: keys (B, heads, Lk, d).
        v: values (B, heads, Lk, d).
        mask: bool, broadcastable to (B, heads, Lq, Lk); True = may attend. Rows with no True
            give zero output (and zero gradients).
        bias: float, broadcastable to (B, heads, Lq, Lk), added to the scaled scores.
        backend: ``"auto"`` or one of ``BACKENDS``. A named backend is used if it works here;
            otherwise the call falls through to the next one in ``BACKENDS`` with a warning.

    Returns:
        (B, heads, Lq, d).
    """
    _check_inputs(q, k, v, mask, bias, backend)
    row_valid = None
    if mask is not None:
        row_valid = mask.any(dim=-1, keepdim=True)  # (..., Lq, 1): does the query see any key?
        # An all-False row would be softmax(-inf, ...) = NaN, in the forward pass and in every
        # gradient it touches. Let such rows attend everywhere instead and zero their output below.
        mask = mask | ~row_valid
    if torch.compiler.is_compiling():
        # no probing or try/except inside a traced graph
        out = _IMPLS["math" if backend == "math" else "sdpa"](q, k, v, mask, bias)
        return out if row_valid is None else out.masked_fill(~row_valid, 0.0)
    key: _SettingKey = (q.device.type, q.dtype, mask is not None, bias is not None)
    first = select_backend(q.device, q.dtype, key[2], key[3]) if backend == "auto" else backend
    candidates = [n for n in BACKENDS[BACKENDS.index(first) :] if (key, n) not in _broken]
    out = None
    for name, fallback in zip(candidates[:-1], candidates[1:]):
        try:
            out = _IMPLS[name](q, k, v, mask, bias)
            break
        except (torch.OutOfMemoryError, *_CONTROL_FLOW):
            raise  # a smaller kernel will not fit either / checkpoint's early stop: not the backend's fault
        except Exception as err:
            _broken.add((key, name))
            logger.warning(
                "attention backend %r failed on %s/%s (%s: %s); using %r for this setting from now on",
                name, key[0], key[1], type(err).__name__, err, fallback,
            )
    if out is None:
        out = _IMPLS[candidates[-1]](q, k, v, mask, bias)  # "math": errors here are real errors
    if row_valid is not None:
        out = out.masked_fill(~row_valid, 0.0)
    return out


def num_heads(channels: int, head_dim: int) -> int:
    """Heads for ``channels`` features split into heads of ``head_dim``; must divide exactly."""
    if head_dim <= 0 or channels % head_dim:
        raise ValueError(f"head_dim={head_dim} must divide the attention channels {channels}")
    return channels // head_dim


def fuse_projections(weights: list[Tensor], heads: int) -> Tensor:
    """Stack per-role projection weights [(dim, in), ...] (e.g. q, k, v) into one fused weight.

    Rows of the result are ordered (head, role, head_dim), so one view of the fused output
    ``(..., heads, roles, head_dim)`` splits heads and roles. Inverse of :func:`split_projections`.
    """
    stacked = torch.stack(weights)  # (roles, dim, in)
    roles, dim, fan_in = stacked.shape
    per_head = stacked.view(roles, heads, dim // heads, fan_in).transpose(0, 1)  # (heads, roles, d, in)
    return per_head.reshape(roles * dim, fan_in)


def split_projections(fused: Tensor, heads: int, roles: int) -> list[Tensor]:
    """Fused weight (roles*dim, in) in (head, role, head_dim) row order -> [(dim, in)] per role."""
    rows, fan_in = fused.shape
    per_role = fused.view(heads, roles, rows // (heads * roles), fan_in).transpose(0, 1)  # (roles, heads, d, in)
    return list(per_role.reshape(roles, rows // roles, fan_in).unbind(0))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with fused q / k / v projections and an output projection
    (no norm, no residual).

    Self-attention has one ``to_qkv`` projection (dim -> 3*dim), cross-attention ``to_q``
    (dim -> dim) and ``to_kv`` (context_dim -> 2*dim); fused rows are ordered (head, role,
    head_dim) (:func:`fuse_projections`), so heads split by a single view. State dicts with the
    separate ``to_q`` / ``to_k`` / ``to_v`` weights of earlier versions (and of diffusers'
    ``Attention``) load unchanged: they are fused on load. :meth:`projection_weights` gives the
    separate matrices back.

    Args:
        dim: query (and output) channels.
        context_dim: key/value source channels; None = self-attention (``dim``).
        head_dim: channels per head; heads = dim // head_dim. Multiples of 8 suit tensor cores
            (64 or 128 best for flash attention).
        backend: attention backend (``"auto"`` or one of ``BACKENDS``).
        zero_init_output: start the output projection at zero, so the block begins as a no-op.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        head_dim: int = 32,
        backend: str = "auto",
        zero_init_output: bool = False,
    ) -> None:
        super().__init__()
        check_backend(backend)
        self.heads = num_heads(dim, head_dim)
        self.head_dim = head_dim
        self.backend = backend
        self.is_cross = context_dim is not None
        # build the three matrices as nn.Linear would, then fuse them
        kv_dim = dim if context_dim is None else context_dim
        q, k, v = (nn.Linear(fan_in, dim, bias=False).weight for fan_in in (dim, kv_dim, kv_dim))
        with torch.no_grad():
            if self.is_cross:
                self.to_q = nn.Linear(dim, dim, bias=False)
                self.to_q.weight.copy_(q)
                self.to_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
                self.to_kv.weight.copy_(fuse_projections([k, v], self.heads))
            else:
                self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
                self.to_qkv.weight.copy_(fuse_projections([q, k, v], self.heads))
        self.to_out = nn.Linear(dim, dim)
        if zero_init_output:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)
        self.register_load_state_dict_pre_hook(self._fuse_legacy_weights)

    def _fuse_legacy_weights(self, module, state_dict, prefix, *args) -> None:
        """Load hook: fuse separate ``to_q`` / ``to_k`` / ``to_v`` weights (older checkpoints)."""
        names = ("to_k", "to_v") if self.is_cross else ("to_q", "to_k", "to_v")
        keys = [f"{prefix}{n}.weight" for n in names]
        if all(key in state_dict for key in keys):
            fused = fuse_projections([state_dict.pop(key) for key in keys], self.heads)
            state_dict[f"{prefix}{'to_kv' if self.is_cross else 'to_qkv'}.weight"] = fused

    def projection_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The separate (dim, in) q, k, v projection matrices (views of the fused weights)."""
        if self.is_cross:
            return (self.to_q.weight, *split_projections(self.to_kv.weight, self.heads, 2))
        return tuple(split_projections(self.to_qkv.weight, self.heads, 3))

    def _heads(self, projected: Tensor, roles: int) -> list[Tensor]:
        """(N, L, heads*roles*d) -> ``roles`` views (N, heads, L, d)."""
        split = projected.unflatten(-1, (self.heads, roles, self.head_dim))  # (N, L, h, roles, d)
        return [split[..., i, :].transpose(1, 2) for i in range(roles)]

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """x (N, Lq, dim), context (N, Lk, context_dim) or None (self-attention),
        mask bool / bias float broadcastable to (N, heads, Lq, Lk) -> (N, Lq, dim)."""
        n, lq, dim = x.shape
        source = x if context is None else context
        if self.is_cross:
            (q,) = self._heads(self.to_q(x), 1)  # (N, h, Lq, d)
            k, v = self._heads(self.to_kv(source), 2)  # (N, h, Lk, d) each
        elif context is None:
            q, k, v = self._heads(self.to_qkv(x), 3)  # (N, h, L, d) each
        else:  # a self-attention module given a context: q from x, k and v from the context
            weight = self.to_qkv.weight.view(self.heads, 3, self.head_dim, dim)
            (q,) = self._heads(F.linear(x, weight[:, :1].reshape(dim, dim)), 1)
            k, v = self._heads(F.linear(context, weight[:, 1:].reshape(2 * dim, dim)), 2)
        out = attention(q, k, v, mask=mask, bias=bias, backend=self.backend)  # (N, h, Lq, d)
        return self.to_out(out.transpose(1, 2).reshape(n, lq, dim))

    def forward_grouped(self, x: Tensor, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """Self-attention over dim 1 of x (N, L, S, dim), separately for each of the S groups.

        The S groups are folded into SDPA's head dimension (S*heads "heads" of length L), which
        needs no copy when x is contiguous: the fused (head, role, d) row order makes the
        (N, S*heads, L, d) operands views. ``mask`` / ``bias`` broadcast to (N, S*heads, L, L),
        with the combined head index ``s * heads + h``. Returns (N, L, S, dim).
        """
        if self.is_cross:
            raise ValueError("forward_grouped is self-attention; this module was built for cross-attention")
        n, length, groups, dim = x.shape
        if groups * self.heads > MAX_GROUPED_HEADS:  # e.g. temporal attention on a 128 x 128 grid
            step = max(1, MAX_GROUPED_HEADS // self.heads)
            chunks = []
            for start in range(0, groups, step):
                stop = min(start + step, groups)

                def heads_of(t: Tensor | None) -> Tensor | None:  # this chunk's slice of a per-head tensor
                    if t is None or t.shape[1] == 1:
                        return t
                    return t[:, start * self.heads : stop * self.heads]

                chunks.append(self.forward_grouped(x[:, :, start:stop], heads_of(mask), heads_of(bias)))
            return torch.cat(chunks, dim=2)  # (N, L, S, dim)
        split = self.to_qkv(x).unflatten(-1, (self.heads, 3, self.head_dim))  # (N, L, S, h, 3, d)
        q, k, v = (split[..., i, :].flatten(2, 3).transpose(1, 2) for i in range(3))  # (N, S*h, L, d) views
        out = attention(q, k, v, mask=mask, bias=bias, backend=self.backend)  # (N, S*h, L, d)
        return self.to_out(out.transpose(1, 2).reshape(n, length, groups, dim))


def frames_to_tokens(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, H*W, C): one token sequence per frame."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)


def tokens_to_frames(tokens: Tensor, shape: torch.Size) -> Tensor:
    """(B*T, H*W, C) -> (B, C, T, H, W), inverse of ``frames_to_tokens`` for a video of ``shape``."""
    b, c, t, h, w = shape
    return tokens.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class SpatialSelfAttention(nn.Module):
    """Self-attention among the H*W positions of each frame (frames folded into the batch).

    ``x + attn(norm(x))`` with a per-frame GroupNorm.

    Args:
        channels: feature channels C.
        head_dim: channels per head.
        norm_groups: GroupNorm groups.
        backend: attention backend.
    """

    def __init__(self, channels: int, head_dim: int = 32, norm_groups: int = 32, backend: str = "auto") -> None:
        super().__init__()
        self.norm = FrameGroupNorm(norm_groups, channels)
        self.attn = MultiHeadAttention(channels, head_dim=head_dim, backend=backend)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, T, H, W) -> (B, C, T, H, W)."""
        out = self.attn(frames_to_tokens(self.norm(x)))  # (B*T, H*W, C)
        return x + tokens_to_frames(out, x.shape)


class CrossAttention(nn.Module):
    """Attention from every spatial position of every frame to the text tokens.

    Each query attends to the context independently of other queries, so attending from all
    T*H*W tokens of a clip at once is the same as repeating the context per frame, without the
    copies. ``x + attn(layernorm(x), context)``.

    Args:
        channels: feature channels C.
        context_dim: channels D of the text context.
        head_dim: channels per head.
        backend: attention backend.
    """

    def __init__(self, channels: int, context_dim: int, head_dim: int = 32, backend: str = "auto") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = MultiHeadAttention(channels, context_dim=context_dim, head_dim=head_dim, backend=backend)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """x (B, C, T, H, W), context (B, L, D), context_mask (B, L) bool (True = real token) -> (B, C, T, H, W)."""
        b, c, t, h, w = x.shape
        tokens = frames_to_tokens(x).reshape(b, t * h * w, c)  # (B, T*H*W, C)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L)
        out = self.attn(self.norm(tokens), context=context, mask=mask)  # (B, T*H*W, C)
        return x + tokens_to_frames(out, x.shape)


class RelativePositionBias(nn.Module):
    """Learned per-head bias of attention scores on the signed frame offset j - i.

    Offsets beyond ``max_distance`` share the bias of +-max_distance. Starts at zero.

    Args:
        heads: attention heads.
        max_distance: largest offset with its own bias.
    """

    def __init__(self, heads: int, max_distance: int = 32) -> None:
        super().__init__()
        if max_distance < 1:
            raise ValueError(f"max_temporal_distance must be >= 1, got {max_distance}")
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(2 * max_distance + 1, heads))  # offset -max..max -> heads

    def forward(self, length: int) -> Tensor:
        """Sequence length T -> bias (heads, T, T); entry [h, i, j] is for query i and key j."""
        pos = torch.arange(length, device=self.table.device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance)  # (T, T): j - i
        return self.table[offset + self.max_distance].permute(2, 0, 1)  # (heads, T, T)


class TemporalAttention(nn.Module):
    """Self-attention along time at each spatial position (space folded into the batch).

    ``x + attn(layernorm(x), bias=relative positions, mask=valid frame pairs)``. LayerNorm works
    per token, so no statistic crosses frames. Masked frames neither attend nor are attended to
    (their own output is their input plus the projection bias). The output projection starts at
    zero, so at initialisation the block is the identity.

    Args:
        channels: feature channels C.
        head_dim: channels per head.
        max_distance: clipping distance of the relative position bias.
        backend: attention backend.
    """

    def __init__(self, channels: int, head_dim: int = 32, max_distance: int = 32, backend: str = "auto") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = MultiHeadAttention(channels, head_dim=head_dim, backend=backend, zero_init_output=True)
        self.rel_bias = RelativePositionBias(self.attn.heads, max_distance)

    def forward(self, x: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """x (B, C, T, H, W), frame_mask (B, T) bool (True = valid) or None -> (B, C, T, H, W)."""
        b, c, t, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c)  # (B, T, H*W, C): a view if channels-last
        heads = self.attn.heads
        # the H*W positions ride in SDPA's head dimension (index s * heads + head): see forward_grouped
        bias = self.rel_bias(t)[None, None].expand(1, h * w, heads, t, t).reshape(1, h * w * heads, t, t)
        mask = None
        if frame_mask is not None:
            mask = (frame_mask[:, :, None] & frame_mask[:, None, :])[:, None]  # (B, 1, T, T): query and key valid
        out = self.attn.forward_grouped(self.norm(tokens), mask=mask, bias=bias)  # (B, T, H*W, C)
        return x + out.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)
