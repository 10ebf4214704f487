"""Random known-frame masks for training a frame-conditioned denoiser (issue 18; Make-A-Video's masked frames).

One model does image-to-video (the first frame known), extension (the first k frames known: the end of the
previous window) and interpolation (every k-th frame known) if it is trained on all of these, plus the
unconditional case (no frame known), which keeps text-to-video working and makes the training-free
methods of :mod:`latentvid.diffusion.known_frames` usable on the same model. Masks are over *latent*
frames: with a causal VAE latent frame 0 encodes pixel frame 0 alone, so an image is exactly a known
first latent frame, and a known pixel prefix of 1 + 4m frames is exactly m + 1 known latent frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MASK_KINDS: tuple[str, ...] = ("none", "first", "first_k", "last_k", "every_k")


@dataclass(frozen=True)
class FrameMasks:
    """How often each kind of known-frame mask is drawn (a config object for LightningCLI).

    The probabilities are relative weights (normalised by their sum). k is drawn uniformly per
    sample: 2 .. n - 1 for ``first_k`` (k = 1 is ``first``), 1 .. n - 1 for ``last_k`` and 2 .. n - 1
    for ``every_k`` (frames 0, k, 2k, ...), n being the sample's valid frames (capped by ``max_k``).
    At least one valid frame always stays unknown; a kind that cannot be drawn for a sample (a
    clip too short for it, an image) gives no known frame.

    Attributes:
        none: weight of "no frame known" (text-to-video).
        first: weight of "the first frame known" (image-to-video).
        first_k: weight of "the first k frames known" (extension forwards).
        last_k: weight of "the last k frames known" (extension backwards).
        every_k: weight of "every k-th frame known, from frame 0" (interpolation).
        max_k: the largest k drawn (None: n - 1).
    """

    none: float = 0.2
    first: float = 0.3
    first_k: float = 0.2
    last_k: float = 0.1
    every_k: float = 0.2
    max_k: int | None = None

    def __post_init__(self) -> None:
        weights = self.weights()
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"frame mask probabilities must be >= 0 with a positive sum, got {self}")
        if self.max_k is not None and self.max_k < 1:
            raise ValueError(f"frame masks: max_k must be >= 1 or null, got {self.max_k}")

    def weights(self) -> tuple[float, ...]:
        """The weights in the order of :data:`MASK_KINDS`."""
        return tuple(float(getattr(self, k)) for k in MASK_KINDS)


def known_positions(kind: str, n: int, k: int) -> list[int]:
    """The known positions among ``n`` valid frames for a mask of ``kind`` with parameter ``k``."""
    if kind == "none":
        return []
    if kind == "first":
        return [0]
    if kind == "first_k":
        return list(range(k))
    if kind == "last_k":
        return list(range(n - k, n))
    if kind == "every_k":
        return list(range(0, n, k))
    raise ValueError(f"unknown frame mask kind {kind!r}; expected one of {MASK_KINDS}")


def _k_range(kind: str, n: int, max_k: int | None) -> tuple[int, int]:
    """(lowest, highest) k of ``kind`` on n valid frames; lowest > highest when it cannot be drawn."""
    lo = 1 if kind == "last_k" else 2  # first_k with k = 1 is "first"; every_k with k = 1 is every frame
    hi = n - 1 if max_k is None else min(n - 1, max_k)  # k <= n - 1 keeps a frame unknown
    return lo, hi


def draw_frame_masks(valid: Tensor, spec: FrameMasks, generator: torch.Generator | None = None) -> Tensor:
    """Known-frame masks (B, T) bool for clips whose valid frames are ``valid`` (B, T) bool.

    Per sample: a kind with probability ``spec``'s weight, then its k; positions count the sample's
    valid frames in order (an image padded to T frames has one, so it gets no known frame). Known
    frames are always valid and never all of them. ``generator`` (CPU) makes it reproducible.
    """
    if valid.ndim != 2 or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a (B, T) bool frame mask, got {valid.dtype} {tuple(valid.shape)}")
    probs = torch.tensor(spec.weights(), dtype=torch.float64)
    kinds = torch.multinomial(probs / probs.sum(), valid.shape[0], replacement=True, generator=generator)
    u = torch.rand(valid.shape[0], generator=generator, dtype=torch.float64)  # (B,) picks k
    known = torch.zeros(valid.shape, dtype=torch.bool)
    frames = valid.cpu()
    for i in range(valid.shape[0]):
        index = frames[i].nonzero().flatten()  # (n,) the valid frames
        n, kind = len(index), MASK_KINDS[int(kinds[i])]
        if n < 2 or kind == "none":
            continue
        k = 0
        if kind in ("first_k", "last_k", "every_k"):
            lo, hi = _k_range(kind, n, spec.max_k)
            if hi < lo:
                continue
            k = lo + min(int(u[i] * (hi - lo + 1)), hi - lo)
        known[i, index[known_positions(kind, n, k)]] = True
    return known.to(valid.device)
