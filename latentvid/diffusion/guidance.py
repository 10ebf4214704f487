"""Denoiser wrappers: classifier-free guidance and clipping.

A *conditional model function* is ``model(z, logsnr, **cond) -> x0_hat`` with z (B, ...), logsnr
(B,) and each conditioning tensor batched along dim 0. These wrappers turn it into the plain
``denoise(z, logsnr) -> x0_hat`` that samplers take.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from latentvid.diffusion.samplers import Denoiser

ModelFn = Callable[..., Tensor]


def _cat(a: Tensor | None, b: Tensor | None, key: str) -> Tensor | None:
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError(f"conditioning {key!r} is given for only one of the two branches")
    if a.shape[1:] != b.shape[1:]:
        # e.g. text tokens of different lengths: pad the shorter along dim 1 (masks pad with False)
        if a.ndim < 2 or a.shape[2:] != b.shape[2:]:
            raise ValueError(f"conditioning {key!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match")
        n = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(x, (0, 0) * (x.ndim - 2) + (0, n - x.shape[1])) for x in (a, b))
    return torch.cat([a, b], dim=0)


def classifier_free_guidance(
    model: ModelFn, cond: Mapping[str, Tensor | None], uncond: Mapping[str, Tensor | None], scale: float | Tensor
) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans, 2021) as a denoiser.

    x0_guided = x0_uncond + scale * (x0_cond - x0_uncond), computed in ONE batched forward
    (conditional and unconditional halves concatenated along the batch). Guiding x0 equals guiding
    eps or v: at fixed z each is an affine function of the others with weights that sum to one.
    ``scale = 1`` is plain conditional sampling and skips the unconditional half.

    Args:
        model: ``model(z, logsnr, **cond) -> x0_hat``.
        cond, uncond: keyword conditioning for the two branches (same keys; tensors (B, ...)).
        scale: guidance weight w (1 = none; Imagen Video uses large values with clipping), or a (B,)
            tensor of one weight per sample (the targets of guidance distillation draw w per sample).
    """
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
    if not isinstance(scale, Tensor) and scale == 1.0:
        return lambda z, logsnr: model(z, logsnr, **cond)
    both = {k: _cat(cond[k], uncond[k], k) for k in cond}

    def denoise(z: Tensor, logsnr: Tensor) -> Tensor:
        x_c, x_u = model(torch.cat([z, z]), torch.cat([logsnr, logsnr]), **both).chunk(2)
        w = scale.to(x_c).reshape(-1, *(1,) * (x_c.ndim - 1)) if isinstance(scale, Tensor) else scale  # (B, 1, ...)
        return x_u + w * (x_c - x_u)

    return denoise


def clip_denoised(denoise: Denoiser, limit: float = 1.0) -> Denoiser:
    """Clamp x0_hat to [-limit, limit] (static thresholding; useful in pixel space with strong guidance)."""
    return lambda z, logsnr: denoise(z, logsnr).clamp(-limit, limit)
