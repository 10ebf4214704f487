"""Tests for latentvid/metrics/shapes.py on clips drawn by an independent renderer."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch

from latentvid.metrics.shapes import ShapesProbe, classify_video, parse_caption

# The data spec, written out again here: background, palette, vocabulary.
GRAY = np.array([32, 32, 32], dtype=np.float64)
RGB = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
SHAPE_NAMES = ("circle", "square", "triangle")
MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), rows grow down


def coverage(shape: str, size: int, cx: float, cy: float, r: float, flip: bool, ss: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the shape, by ss x ss supersampling -> (H, W) in [0, 1]."""
    sub = (np.arange(size * ss) + 0.5) / ss
    x, y = sub[None, :] - cx, sub[:, None] - cy
    if shape == "circle":
        inside = x**2 + y**2 <= r**2
    elif shape == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    else:  # isosceles triangle, apex up (or down when flipped), base 2r, height 2r
        y = -y if flip else y
        inside = (np.abs(y) <= r) & (np.abs(x) <= (y + r) / 2)
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render(colour: str, shape: str, direction: str | None, frames: int, size: int, rng) -> torch.Tensor:
    """Anti-aliased clip (3, T, H, W) in [-1, 1]; direction None gives a still shape."""
    r = rng.uniform(0.15, 0.25) * size
    travel = min(rng.uniform(0.3, 0.45) * size, size - 2 * r - 1) if direction else 0.0
    dx, dy = MOVES[direction] if direction else (0, 0)
    lo, hi = r + 0.5, size - r - 0.5
    # start so that the whole path stays inside the frame
    x0 = rng.uniform(lo + max(-dx, 0) * travel, hi - max(dx, 0) * travel)
    y0 = rng.uniform(lo + max(-dy, 0) * travel, hi - max(dy, 0) * travel)
    flip = bool(rng.integers(2))
    clip = []
    for t in np.linspace(0.0, 1.0, frames):
        a = coverage(shape, size, x0 + dx * travel * t, y0 + dy * travel * t, r, flip)[..., None]
        clip.append(GRAY * (1 - a) + np.array(RGB[colour], dtype=np.float64) * a)
    video = np.stack(clip)  # (T, H, W, 3) in [0, 255]
    return torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1


@pytest.mark.parametrize("size", [20, 48])
def test_perfect_on_rendered_clips(size: int) -> None:
    rng = np.random.default_rng(size)
    combos = list(product(RGB, SHAPE_NAMES, MOVES))
    videos = torch.stack([render(c, s, d, 8, size, rng) for c, s, d in combos])
    captions = [f"a {c} {s} moving {d}" for c, s, d in combos]
    probe = ShapesProbe()
    probe.update(videos[:30], captions[:30])
    probe.update(videos[30:], captions[30:])
    result = probe.compute()
    assert {k: v.item() for k, v in result.items()} == {
        "colour": 1.0,
        "shape": 1.0,
        "direction": 1.0,
        "all": 1.0,
    }


def test_stills_score_colour_and_shape_only() -> None:
    rng = np.random.default_rng(0)
    combos = list(product(RGB, SHAPE_NAMES))
    stills = torch.stack([render(c, s, None, 1, 32, rng) for c, s in combos])
    for video, (c, s) in zip(stills, combos):
        assert classify_video(video) == {"colour": c, "shape": s, "direction": None}
    probe = ShapesProbe()
    probe.update(stills, [f"a {c} {s}" for c, s in combos])
    result = probe.compute()
    assert result["colour"].item() == result["shape"].item() == result["all"].item() == 1.0
    assert math.isnan(result["direction"].item())


def test_wrong_motion_is_caught() -> None:
    rng = np.random.default_rng(1)
    still = render("red", "square", None, 8, 32, rng)  # drawn without motion
    assert classify_video(still)["direction"] == "static"
    right = render("red", "square", "right", 8, 32, rng)
    probe = ShapesProbe()
    probe.update(torch.stack([still, right]), ["a red square moving left"] * 2)
    result = probe.compute()
    assert result["direction"].item() == 0.0 and result["all"].item() == 0.0
    assert result["colour"].item() == result["shape"].item() == 1.0


def test_near_chance_on_uniform_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    combos = list(product(RGB, SHAPE_NAMES, MOVES))
    noise = torch.rand(len(combos), 3, 8, 32, 32, generator=gen) * 2 - 1
    probe = ShapesProbe()
    probe.update(noise, [f"a {c} {s} moving {d}" for c, s, d in combos])
    result = {k: v.item() for k, v in probe.compute().items()}
    chance = {"colour": 1 / 5, "shape": 1 / 3, "direction": 1 / 4, "all": 1 / 60}
    for key, p in chance.items():
        assert result[key] <= p + 0.1, (key, result[key])


def test_agrees_with_the_data_generator() -> None:
    shapes = pytest.importorskip("latentvid.data.shapes", reason="data generator not written yet")
    rng = np.random.default_rng(3)
    combos = list(product(RGB, SHAPE_NAMES, MOVES))
    for size in (16, 32):
        clips = [shapes.render_clip(c, s, d, num_frames=8, size=size, rng=rng) for c, s, d in combos]
        videos = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        probe = ShapesProbe()
        probe.update(videos, [f"a {c} {s} moving {d}" for c, s, d in combos])
        assert all(v.item() == 1.0 for v in probe.compute().values()), (size, probe.compute())


def test_caption_grammar() -> None:
    assert parse_caption("a yellow triangle moving down") == {
        "colour": "yellow",
        "shape": "triangle",
        "direction": "down",
    }
    assert parse_caption("a white circle")["direction"] is None
    for bad in ("a purple circle", "a red hexagon moving up", "a red circle moving sideways", "red circle"):
        with pytest.raises(ValueError, match="caption"):
            parse_caption(bad)
