"""Pixel-statistics probe for the synthetic "shapes" data: did the sample follow its caption?

A shapes clip is one filled shape on a dark gray background moving in a straight line; its
caption reads ``a {colour} {shape} moving {direction}`` (``a {colour} {shape}`` for stills).
:func:`classify_video` reads colour, shape and direction back from pixels alone:

* foreground: pixels whose RGB is farther than ``fg_threshold`` (0-255 units) from the
  background gray;
* colour: palette colour nearest to the per-channel median of all foreground pixels;
* shape: moments of each frame's foreground mask about its centroid: the larger |skewness|
  along x or y (a triangle's width grows linearly from apex to base: ~0.57; discs and squares
  are symmetric: 0), then the ratio of 4th moments along the diagonals to those along the
  axes (a square reaches farther along its diagonals: 4/3; a disc is isotropic: 1); averaged
  over frames, leaving out frames where the shape touches the border when others exist;
* direction: least-squares velocity of the foreground centroid over the frames, times the
  frame span, i.e. the fitted displacement from first to last frame; the dominant axis and its
  sign give left/right/up/down ("left" = x decreases, "up" = row index decreases), "static"
  when it is below ``min_motion`` of the frame size.

This module defines its own palette; it must agree with the data generator's
(``latentvid.data``), which it deliberately does not import.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

__all__ = [
    "BACKGROUND",
    "PALETTE",
    "SHAPES",
    "DIRECTIONS",
    "parse_caption",
    "foreground_mask",
    "classify_video",
    "ShapesProbe",
]

BACKGROUND: tuple[int, int, int] = (32, 32, 32)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

_CAPTION = re.compile(r"^a (\w+) (\w+)(?: moving (\w+))?$")
# Shape decision thresholds on foreground-mask moments (see classify_video). Measured on
# pixelated shapes of radius >= 3 px: |skewness| is ~0.57 for a triangle (>= 0.4 when sharp,
# ~0.23 when blurred at 16 px), <= 0.2 for discs and squares; the diagonal/axis 4th-moment
# ratio is 4/3 for a square (>= 1.27), 1 for a disc (<= 1.15).
_MIN_TRIANGLE_SKEW = 0.25
_MIN_SQUARE_RATIO = 1.2


def parse_caption(caption: str) -> dict[str, str | None]:
    """``"a red circle moving left"`` -> ``{"colour": "red", "shape": "circle", "direction": "left"}``.

    Stills (``"a red circle"``) give ``direction=None``. Raises ValueError on anything else.
    """
    match = _CAPTION.match(caption.strip())
    if match is None:
        raise ValueError(
            f"not a shapes caption ('a {{colour}} {{shape}} [moving {{direction}}]'): {caption!r}"
        )
    colour, shape, direction = match.groups()
    bad_direction = direction is not None and direction not in DIRECTIONS
    if colour not in PALETTE or shape not in SHAPES or bad_direction:
        raise ValueError(
            f"unknown word in shapes caption {caption!r}: colours {list(PALETTE)}, shapes "
            f"{list(SHAPES)}, directions {list(DIRECTIONS)}"
        )
    return {"colour": colour, "shape": shape, "direction": direction}


def _to_rgb255(video: torch.Tensor) -> np.ndarray:
    """``(3, T, H, W)`` in [-1, 1] -> numpy ``(T, H, W, 3)`` float in [0, 255].

    numpy from here on: these small per-clip ops are dominated by torch's per-op overhead.
    """
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be (3, T, H, W); got shape {tuple(video.shape)}")
    frames = video.detach().cpu().float().numpy().transpose(1, 2, 3, 0)  # (T, H, W, 3)
    return (np.clip(frames, -1.0, 1.0) + 1.0) * 127.5


def _mask(rgb: np.ndarray, fg_threshold: float) -> np.ndarray:
    """``(T, H, W, 3)`` in [0, 255] -> ``(T, H, W)`` bool, far from the background gray."""
    diff = rgb - np.asarray(BACKGROUND, dtype=rgb.dtype)
    return np.sqrt((diff**2).sum(axis=-1)) > fg_threshold


def foreground_mask(video: torch.Tensor, fg_threshold: float = 80.0) -> torch.Tensor:
    """Pixels far from the background gray.

    Args:
        video: ``(3, T, H, W)`` in ``[-1, 1]``.
        fg_threshold: Euclidean RGB distance (0-255 units) above which a pixel is foreground.

    Returns:
        ``(T, H, W)`` bool.
    """
    return torch.from_numpy(_mask(_to_rgb255(video), fg_threshold))


def _frame_moments(mask: np.ndarray) -> tuple[float, float, bool] | None:
    """Shape cues of one frame's ``mask (H, W)``: (skewness, diagonal/axis 4th-moment ratio,
    touches the border); None for degenerate masks (a single row or column)."""
    ys, xs = np.nonzero(mask)
    x = xs - xs.mean()
    y = ys - ys.mean()
    var_x, var_y = np.mean(x**2), np.mean(y**2)
    if var_x == 0 or var_y == 0:
        return None
    skew = max(abs(np.mean(x**3)) / var_x**1.5, abs(np.mean(y**3)) / var_y**1.5)
    u, v = (x + y) / np.sqrt(2), (x - y) / np.sqrt(2)  # the two diagonals
    ratio = (np.mean(u**4) + np.mean(v**4)) / (np.mean(x**4) + np.mean(y**4))
    h, w = mask.shape
    touches = bool(ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1)
    return float(skew), float(ratio), touches


def classify_video(
    video: torch.Tensor,
    fg_threshold: float = 80.0,
    min_pixels: int = 4,
    min_motion: float = 0.03,
) -> dict[str, str | None]:
    """Read colour, shape and motion direction of a shapes clip from its pixels.

    Args:
        video: ``(3, T, H, W)`` in ``[-1, 1]``.
        fg_threshold: foreground distance threshold (see :func:`foreground_mask`).
        min_pixels: frames with fewer foreground pixels are ignored.
        min_motion: displacements below this fraction of ``max(H, W)`` count as static.

    Returns:
        ``{"colour": str | None, "shape": str | None, "direction": str | None}``: colour in
        :data:`PALETTE`, shape in :data:`SHAPES`, direction in :data:`DIRECTIONS` or
        ``"static"``; None where there is no foreground (direction: also for one usable frame).
    """
    rgb = _to_rgb255(video)  # (T, H, W, 3)
    mask = _mask(rgb, fg_threshold)  # (T, H, W)
    t, h, w = mask.shape
    counts = mask.reshape(t, -1).sum(axis=1)  # (T,)
    frames = [i for i in range(t) if counts[i] >= min_pixels]
    if not frames:
        return {"colour": None, "shape": None, "direction": None}

    # Colour: nearest palette entry to the median foreground colour.
    median = np.median(rgb[mask], axis=0)  # (3,)
    names = list(PALETTE)
    palette = np.array([PALETTE[n] for n in names], dtype=np.float64)  # (5, 3)
    colour = names[int(np.linalg.norm(palette - median, axis=1).argmin())]

    # Shape: moments averaged over frames, frames with the shape clipped by the border left out
    # when others exist.
    moments = [m for m in (_frame_moments(mask[i]) for i in frames) if m is not None]
    shape = None
    if moments:
        inside = [m for m in moments if not m[2]] or moments
        skew = float(np.mean([m[0] for m in inside]))
        ratio = float(np.mean([m[1] for m in inside]))
        if skew > _MIN_TRIANGLE_SKEW:
            shape = "triangle"
        elif ratio > _MIN_SQUARE_RATIO:
            shape = "square"
        else:
            shape = "circle"

    # Direction: least-squares centroid velocity times the frame span.
    direction = None
    if len(frames) >= 2:
        idx = np.asarray(frames, dtype=np.float64)
        m = mask[frames].astype(np.float64)  # (F, H, W)
        n = m.sum(axis=(1, 2))
        cy = (m.sum(axis=2) * np.arange(h)).sum(axis=1) / n  # (F,)
        cx = (m.sum(axis=1) * np.arange(w)).sum(axis=1) / n  # (F,)
        tc = idx - idx.mean()
        span = idx[-1] - idx[0]
        dx = float((tc * cx).sum() / (tc**2).sum() * span)
        dy = float((tc * cy).sum() / (tc**2).sum() * span)
        if max(abs(dx), abs(dy)) < min_motion * max(h, w):
            direction = "static"
        elif abs(dx) >= abs(dy):
            direction = "left" if dx < 0 else "right"
        else:
            direction = "up" if dy < 0 else "down"
    return {"colour": colour, "shape": shape, "direction": direction}


class ShapesProbe(Metric):
    """Caption-following accuracy on shapes clips, from pixel statistics.

    ``update(videos (B, 3, T, H, W) in [-1, 1], captions)`` classifies each clip with
    :func:`classify_video` and compares with its caption. ``compute()`` returns a dict of
    fractions: ``"colour"``, ``"shape"``, ``"direction"`` (over clips whose caption names a
    direction; NaN if none did) and ``"all"`` (every attribute the caption names is right).

    Args:
        fg_threshold: foreground distance from the background gray, in 0-255 RGB units.
        min_pixels: frames with fewer foreground pixels are ignored.
        min_motion: displacement (fraction of the frame size) below which a clip is static.
        kwargs: passed on to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(
        self, fg_threshold: float = 80.0, min_pixels: int = 4, min_motion: float = 0.03, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.fg_threshold = fg_threshold
        self.min_pixels = min_pixels
        self.min_motion = min_motion
        for name in ("num_clips", "num_moving", "colour_ok", "shape_ok", "direction_ok", "all_ok"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, videos: torch.Tensor, captions: list[str]) -> None:
        """Score clips against their captions.

        Args:
            videos: ``(B, 3, T, H, W)`` in ``[-1, 1]``.
            captions: ``B`` shapes captions.
        """
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"videos must be (B, 3, T, H, W); got shape {tuple(videos.shape)}")
        if isinstance(captions, str) or len(captions) != videos.shape[0]:
            raise ValueError(f"need one caption per video: {videos.shape[0]} videos, captions={captions!r}")
        for video, caption in zip(videos, captions):
            want = parse_caption(caption)
            got = classify_video(video, self.fg_threshold, self.min_pixels, self.min_motion)
            colour_ok = got["colour"] == want["colour"]
            shape_ok = got["shape"] == want["shape"]
            everything = colour_ok and shape_ok
            self.num_clips += 1
            self.colour_ok += int(colour_ok)
            self.shape_ok += int(shape_ok)
            if want["direction"] is not None:
                direction_ok = got["direction"] == want["direction"]
                everything = everything and direction_ok
                self.num_moving += 1
                self.direction_ok += int(direction_ok)
            self.all_ok += int(everything)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"colour", "shape", "direction", "all"}`` accuracies as float tensors."""
        if self.num_clips == 0:
            raise RuntimeError("ShapesProbe.compute() called before any update()")
        n = self.num_clips.double()
        moving = self.num_moving.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        direction = self.direction_ok / moving if moving > 0 else nan
        return {
            "colour": self.colour_ok / n,
            "shape": self.shape_ok / n,
            "direction": direction,
            "all": self.all_ok / n,
        }
