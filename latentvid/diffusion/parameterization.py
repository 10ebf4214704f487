"""eps / x0 / v / flow conversions and the masked diffusion loss.

With z = alpha x0 + sigma eps for any process (variance preserving, alpha^2 + sigma^2 = 1, or
rectified flow, alpha + sigma = 1), and r^2 = alpha^2 + sigma^2:

    v    = alpha eps - sigma x0                 (Salimans & Ho, 2022; r = 1 in VP)
    flow = eps - x0                             (flow matching's velocity, dz/dt of the flow)
    x0   = (alpha z - sigma v) / r^2            = (z - sigma eps) / alpha     = (z - sigma flow) / (alpha + sigma)
    eps  = (sigma z + alpha v) / r^2            = (z - alpha x0) / sigma      = (z + alpha flow) / (alpha + sigma)

``alpha`` and ``sigma`` are per-sample (B,) tensors; they broadcast over the trailing dimensions.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Target = Literal["eps", "x0", "v", "flow"]
TARGETS: tuple[str, ...] = ("eps", "x0", "v", "flow")


def _b(a: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like`` (B, ...)."""
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def v_from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """v = alpha eps - sigma x0; x0, eps (B, ...), alpha, sigma (B,)."""
    return _b(alpha, x0) * eps - _b(sigma, x0) * x0


def x0_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0 = (alpha z - sigma v) / (alpha^2 + sigma^2) (the division is by 1 in VP)."""
    return (_b(alpha, z) * z - _b(sigma, z) * v) / _b(alpha**2 + sigma**2, z)


def eps_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = (sigma z + alpha v) / (alpha^2 + sigma^2)."""
    return (_b(sigma, z) * z + _b(alpha, z) * v) / _b(alpha**2 + sigma**2, z)


def flow_from_x0_eps(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching velocity eps - x0, (B, ...)."""
    return eps - x0


def x0_from_flow(z: Tensor, flow: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0 = (z - sigma flow) / (alpha + sigma) (z - t flow on the rectified flow)."""
    return (z - _b(sigma, z) * flow) / _b(alpha + sigma, z)


def eps_from_flow(z: Tensor, flow: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = (z + alpha flow) / (alpha + sigma)."""
    return (z + _b(alpha, z) * flow) / _b(alpha + sigma, z)


def x0_from_eps(z: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x0 = (z - sigma eps) / alpha (ill-conditioned as alpha -> 0; prefer v)."""
    return (z - _b(sigma, z) * eps) / _b(alpha, z)


def eps_from_x0(z: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = (z - alpha x0) / sigma (ill-conditioned as sigma -> 0)."""
    return (z - _b(alpha, z) * x0) / _b(sigma, z)


def prediction_to_x0(pred: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor, target: Target) -> Tensor:
    """A network output of kind ``target`` at noisy ``z`` -> the implied x0 estimate, (B, ...)."""
    if target == "v":
        return x0_from_v(z, pred, alpha, sigma)
    if target == "eps":
        return x0_from_eps(z, pred, alpha, sigma)
    if target == "x0":
        return pred
    if target == "flow":
        return x0_from_flow(z, pred, alpha, sigma)
    raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")


def training_target(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor, target: Target) -> Tensor:
    """The regression target of kind ``target`` for clean ``x0`` and noise ``eps``, (B, ...)."""
    if target == "v":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "flow":
        return flow_from_x0_eps(x0, eps)
    raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")


def diffuse(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Forward process sample z_t = alpha x0 + sigma eps, (B, ...)."""
    return _b(alpha, x0) * x0 + _b(sigma, x0) * eps


def masked_mse(pred: Tensor, target: Tensor, frame_mask: Tensor | None = None, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over valid frames only.

    Args:
        pred, target: (B, C, T, H, W).
        frame_mask: (B, T) bool, True = valid frame; None = all valid.
        weight: optional per-sample loss weight (B,), e.g. :func:`snr_loss_weight`.

    Returns:
        Scalar: each sample's error is averaged over its valid frames (and C, H, W), then samples are
        averaged, so an image (one valid frame) weighs as much as a full clip. Masked frames contribute
        neither value nor gradient.
    """
    diff = pred - target
    if frame_mask is None:
        frame_mask = torch.ones(diff.shape[0], diff.shape[2], dtype=torch.bool, device=diff.device)
    # where() before squaring, so a NaN/inf in a masked frame cannot leak through 0 * inf (forward or backward)
    diff = torch.where(frame_mask[:, None, :, None, None], diff, torch.zeros_like(diff))
    per_frame = diff.pow(2).mean(dim=(1, 3, 4))  # (B, T)
    per_sample = per_frame.sum(dim=1) / frame_mask.sum(dim=1).clamp_min(1).to(per_frame.dtype)  # (B,)
    if weight is not None:
        per_sample = per_sample * weight
    return per_sample.mean()


def snr_loss_weight(
    logsnr: Tensor, target: Target, gamma: float | None = None, sigma: Tensor | None = None, floor: float | None = None
) -> Tensor:
    """Optional per-sample loss weight (B,) expressed for the chosen target.

    With ``gamma`` set, this is Min-SNR-gamma weighting (Hang et al., 2023): the x0-space weight
    min(SNR, gamma) times (d x0 / d prediction)^2, i.e. eps: /SNR, v: /(SNR + 1) (VP; in general
    /((SNR + 1)^2 sigma^2), so pass the process's ``sigma`` (B,) for a non-VP v model), flow:
    /(sqrt(SNR) + 1)^2 (any process). ``None`` -> ones.

    ``floor`` clamps the x0-space weight from below as well, min(max(SNR, floor), gamma): with
    floor = 1 the noisiest levels keep the weight the plain v loss gives them (Salimans & Ho's
    truncated SNR, max(SNR, 1)) instead of Min-SNR's SNR -> 0. Those levels are where a video's
    motion is decided (README, "What the demo shows"). ``gamma=None`` with a floor is truncated SNR.
    """
    if gamma is None and floor is None:
        return torch.ones_like(logsnr)
    snr = logsnr.exp()
    w = snr.clamp(min=floor, max=gamma)
    if target == "eps":
        return w / snr
    if target == "v":
        return w / (snr + 1.0) if sigma is None else w / ((snr + 1.0) ** 2 * sigma**2)
    if target == "flow":
        return w / ((0.5 * logsnr).exp() + 1.0) ** 2
    return w
