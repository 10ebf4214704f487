"""Pictures of sampled videos: each clip as a row of its frames, for a README or a report."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["frame_grid", "write_frame_grid"]


def frame_grid(videos: torch.Tensor, scale: int = 2, gap: int = 2, background: int = 255) -> np.ndarray:
    """Videos (N, 3, T, H, W) in [-1, 1] -> one uint8 image (N*(H*s + g) - g, T*(W*s + g) - g, 3):
    row n holds the frames of video n left to right, each enlarged ``scale`` times (nearest neighbour,
    so small frames stay sharp), with ``gap`` pixels of ``background`` between frames and rows."""
    from latentvid.data.video import to_uint8

    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"expected videos (N, 3, T, H, W), got {tuple(videos.shape)}")
    if scale < 1 or gap < 0:
        raise ValueError(f"need scale >= 1 and gap >= 0, got {scale=} {gap=}")
    n, _, t, h, w = videos.shape
    cell_h, cell_w = h * scale, w * scale
    out = np.full((n * (cell_h + gap) - gap, t * (cell_w + gap) - gap, 3), background, dtype=np.uint8)
    for i, video in enumerate(videos):
        frames = to_uint8(video.float().cpu()).repeat(scale, axis=1).repeat(scale, axis=2)  # (T, H*s, W*s, 3)
        for k in range(t):
            y, x = i * (cell_h + gap), k * (cell_w + gap)
            out[y:y + cell_h, x:x + cell_w] = frames[k]
    return out


def write_frame_grid(videos: torch.Tensor, path: str | os.PathLike, scale: int = 2, gap: int = 2) -> None:
    """Write :func:`frame_grid` of ``videos`` (N, 3, T, H, W) as a PNG (atomically)."""
    from latentvid.data.video import write_png

    write_png(path, frame_grid(videos, scale, gap))
