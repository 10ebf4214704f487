"""Synthetic "shapes" video-text data: the embedded default data set and a quality probe.

One filled shape (circle, square or triangle) in a pure colour moves in a straight line at
constant speed over a dark gray background. Captions follow a fixed grammar,
``a {colour} {shape} moving {direction}`` for clips and ``a {colour} {shape}`` for stills, so
generated samples can be judged by pixel statistics (dominant foreground colour, direction of
the foreground centroid's motion).

Everything here is deterministic from a seed and uses numpy only for drawing; files are
written through :mod:`latentvid.data.video` (PyAV for mp4, PIL for png).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentvid.files import write_text_atomic

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
BACKGROUND: tuple[int, int, int] = (32, 32, 32)

# Combinations kept out of training and used as evaluation prompts. Every colour, shape and
# direction still appears in training with other partners, so a model that generalises
# compositionally can render these; each shape is held out twice and each direction at least once.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "right"),
    ("green", "square", "up"),
    ("blue", "triangle", "left"),
    ("yellow", "circle", "down"),
    ("white", "triangle", "up"),
    ("red", "square", "left"),
)

# Training captions added to the evaluation prompts: one per direction, varied colour and shape.
EVAL_TRAIN_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("blue", "circle", "left"),
    ("yellow", "square", "right"),
    ("red", "triangle", "up"),
    ("white", "circle", "down"),
)

# Radius range as a fraction of the frame side, and total travel over the clip as a fraction of
# the frame side (large enough for the motion to be obvious at 8 frames).
RADIUS_RANGE: tuple[float, float] = (1 / 5, 1 / 4)
TRAVEL_RANGE: tuple[float, float] = (0.30, 0.50)
FPS: int = 8  # the data's frame rate: TRAVEL_RANGE is the travel over a clip at this rate

COMPLETE_MARKER = ".complete"

_MOTION: dict[str, tuple[int, int]] = {  # direction -> (dx, dy); image rows grow downward
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}


# --------------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------------


def video_caption(colour: str, shape: str, direction: str) -> str:
    """Caption of a clip, e.g. ``"a red circle moving left"``."""
    _check_words(colour=colour, shape=shape, direction=direction)
    return f"a {colour} {shape} moving {direction}"


def image_caption(colour: str, shape: str) -> str:
    """Caption of a still, e.g. ``"a red circle"``."""
    _check_words(colour=colour, shape=shape)
    return f"a {colour} {shape}"


def parse_caption(caption: str) -> dict[str, str]:
    """Inverse of :func:`video_caption` / :func:`image_caption`.

    Returns ``{"colour", "shape"}`` plus ``"direction"`` for clip captions; raises ``ValueError``
    quoting the caption when it does not follow the grammar.
    """
    words = caption.split(" ")
    ok = (len(words) == 3 or (len(words) == 5 and words[3] == "moving")) and words[0] == "a"
    ok = ok and words[1] in COLOURS and words[2] in SHAPES
    if ok and len(words) == 5:
        ok = words[4] in DIRECTIONS
    if not ok:
        raise ValueError(
            f"caption {caption!r} does not match 'a {{colour}} {{shape}}[ moving {{direction}}]' "
            f"with colour in {tuple(COLOURS)}, shape in {SHAPES}, direction in {DIRECTIONS}"
        )
    out = {"colour": words[1], "shape": words[2]}
    if len(words) == 5:
        out["direction"] = words[4]
    return out


def all_combos() -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction) triple, in a fixed order."""
    return [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def training_combos() -> list[tuple[str, str, str]]:
    """All combos except :data:`HELD_OUT`, in a fixed order."""
    held = set(HELD_OUT)
    return [combo for combo in all_combos() if combo not in held]


def eval_prompts() -> list[str]:
    """Evaluation captions: the held-out combos first, then a few training combos."""
    return [video_caption(*c) for c in HELD_OUT] + [video_caption(*c) for c in EVAL_TRAIN_COMBOS]


def _check_words(**words: str) -> None:
    vocab = {"colour": tuple(COLOURS), "shape": SHAPES, "direction": DIRECTIONS}
    for kind, word in words.items():
        if word not in vocab[kind]:
            raise ValueError(f"unknown {kind} {word!r}; expected one of {vocab[kind]}")


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask (H, W) = (size, size) of a filled shape, sampled at pixel centres.

    ``(cx, cy)`` is the centre of the shape's bounding box in continuous pixel coordinates
    (the frame spans ``[0, size]``; pixel ``i`` covers ``[i, i + 1]``), ``r`` its half-extent.
    circle: disc of radius r; square: side 2r; triangle: apex up, base 2r, height 2r.
    Pixels are either in or out (no anti-aliasing), so colours stay pure.
    """
    _check_words(shape=shape)
    coords = np.arange(size, dtype=np.float64) + 0.5
    x = coords[None, :] - cx  # (1, W)
    y = coords[:, None] - cy  # (H, 1)
    if shape == "circle":
        return x**2 + y**2 <= r * r
    if shape == "square":
        return (np.abs(x) <= r) & (np.abs(y) <= r)
    # triangle: the half-width grows linearly from 0 at the apex (y = -r) to r at the base (y = r)
    return (y <= r) & (np.abs(x) <= (y + r) / 2)


def _paint(masks: np.ndarray, colour: str) -> np.ndarray:
    """Masks (T, H, W) bool -> frames (T, H, W, 3) uint8: colour on the background."""
    frames = np.empty(masks.shape + (3,), dtype=np.uint8)
    frames[:] = np.asarray(BACKGROUND, dtype=np.uint8)
    frames[masks] = np.asarray(COLOURS[colour], dtype=np.uint8)
    return frames


def _sample_radius(size: int, rng: np.random.Generator) -> float:
    return float(rng.uniform(RADIUS_RANGE[0] * size, RADIUS_RANGE[1] * size))


def render_clip(
    colour: str,
    shape: str,
    direction: str,
    num_frames: int = 8,
    size: int = 32,
    rng: np.random.Generator | None = None,
    extend_to: int | None = None,
    leave_frame: bool = False,
    travel_range: tuple[float, float] = TRAVEL_RANGE,
) -> np.ndarray:
    """Render one clip as uint8 frames (T, H, W, 3) with T = num_frames, H = W = size.

    The shape's radius is drawn from ``RADIUS_RANGE * size``, the total travel over the clip from
    ``travel_range * size`` (default ``TRAVEL_RANGE``; capped so the shape stays fully inside the
    frame), the start position
    uniformly among those that keep every frame inside. The centre moves by the same amount each
    frame ("left": x decreases, "up": y decreases).

    ``extend_to`` (> num_frames) renders T = extend_to frames: the same clip (its first num_frames
    frames are what ``extend_to=None`` gives for the same ``rng``) with the motion continued at the
    same per-frame step, the shape leaving the frame when it gets there. This is the true
    continuation that video extension is scored against.

    ``leave_frame``: the travel is not capped and the start is drawn anywhere inside, so the shape
    may leave the frame during the clip (a model that never saw a shape leave cannot continue a clip
    that reaches the border: it turns the shape instead).
    """
    _check_words(colour=colour, shape=shape, direction=direction)
    if num_frames < 1 or size < 8:
        raise ValueError(f"need num_frames >= 1 and size >= 8, got {num_frames=} {size=}")
    if extend_to is not None and (num_frames < 2 or extend_to <= num_frames):
        raise ValueError(f"extend_to needs num_frames >= 2 and extend_to > num_frames, got {num_frames=} {extend_to=}")
    check_travel_range(travel_range)
    rng = np.random.default_rng() if rng is None else rng
    r = _sample_radius(size, rng)
    room = size - 2 * r  # range of centre positions that keep the shape inside
    travel = float(rng.uniform(*travel_range)) * size
    travel = travel if leave_frame else min(travel, room)
    dx, dy = _MOTION[direction]
    # position along the motion axis, measured in the direction of motion from its start
    along0 = r + float(rng.uniform(0.0, room if leave_frame else room - travel))
    across = r + float(rng.uniform(0.0, room))
    steps = np.linspace(0.0, travel, num_frames) if num_frames > 1 else np.zeros(1)
    if extend_to is not None:
        # the first frames exactly as without extend_to, then the same step onwards
        steps = np.concatenate([steps, np.arange(num_frames, extend_to) * (travel / (num_frames - 1))])
    masks = np.empty((len(steps), size, size), dtype=bool)
    for t, step in enumerate(steps):
        along = along0 + step
        if dx != 0:
            cx, cy = (along if dx > 0 else size - along), across
        else:
            cx, cy = across, (along if dy > 0 else size - along)
        masks[t] = shape_mask(shape, size, cx, cy, r)
    return _paint(masks, colour)


def check_leave_ratio(leave_ratio: float) -> float:
    """``leave_ratio`` if in [0, 1]; ValueError naming it otherwise."""
    if not 0.0 <= leave_ratio <= 1.0:
        raise ValueError(f"leave_ratio must be in [0, 1], got {leave_ratio}")
    return leave_ratio


def check_travel_range(travel_range: tuple[float, float]) -> tuple[float, float]:
    """``(lo, hi)`` as floats if 0 < lo <= hi <= 1 (fractions of the frame side); ValueError naming it otherwise."""
    try:
        lo, hi = (float(v) for v in travel_range)
    except (TypeError, ValueError):
        raise ValueError(f"travel_range must be two numbers (lo, hi), got {travel_range!r}") from None
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"travel_range must satisfy 0 < lo <= hi <= 1 (fractions of the frame side), got {travel_range!r}")
    return lo, hi


def check_frame_rates(frame_rates: Sequence[float] | None, fps: float,
                      travel_range: tuple[float, float] = TRAVEL_RANGE) -> tuple[float, ...]:
    """``frame_rates`` as a tuple of positive floats (None: ``(fps,)``) none so slow that a clip of
    ``travel_range`` at ``fps`` would cross more than the frame; ValueError naming it otherwise."""
    if frame_rates is None:
        return (float(fps),)
    try:
        rates = tuple(float(r) for r in frame_rates)
    except (TypeError, ValueError):
        raise ValueError(f"frame_rates must be a list of numbers, got {frame_rates!r}") from None
    if not rates or min(rates) <= 0:
        raise ValueError(f"frame_rates must be a non-empty list of positive frame rates, got {frame_rates!r}")
    most = travel_range[1] * fps / min(rates)  # a slower rate covers more of the frame per clip
    if most > 1.0:
        raise ValueError(f"frame_rates: at {min(rates):g} fps a clip would travel up to {most:g} frame sides "
                         f"(the data's {travel_range[1]:g} at {fps:g} fps); use rates of at least "
                         f"{travel_range[1] * fps:g}")
    return rates


def render_image(
    colour: str, shape: str, size: int = 32, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Render one still as a uint8 image (H, W, 3), H = W = size, shape fully inside the frame."""
    _check_words(colour=colour, shape=shape)
    rng = np.random.default_rng() if rng is None else rng
    r = _sample_radius(size, rng)
    cx, cy = r + rng.uniform(0.0, size - 2 * r, size=2)
    return _paint(shape_mask(shape, size, float(cx), float(cy), r)[None], colour)[0]


# --------------------------------------------------------------------------------------------
# data set on disk
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent generator per item, so any subset is reproducible regardless of order."""
    return np.random.default_rng([seed, *stream])


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def read_marker(root: str | os.PathLike) -> dict[str, Any] | None:
    """Generation parameters stored in ``root/.complete``, or None when the folder is incomplete."""
    marker = Path(root) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a corrupt marker means we cannot trust the folder


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="shapes", unit="file")


def generate_shapes_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    clips_per_combo: int = 4,
    num_frames: int = 9,
    size: int = 32,
    fps: int = FPS,
    images_per_combo: int = 2,
    heldout_clips_per_combo: int = 4,
    overwrite: bool = False,
    progress: bool = False,
    leave_ratio: float = 0.0,
    travel_range: tuple[float, float] = TRAVEL_RANGE,
    frame_rates: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Write the shapes data set under ``root`` and return a summary dict.

    Layout (paths in the JSONL files are relative to ``root``)::

        videos/{key}.mp4, videos.jsonl     training clips (every combo except HELD_OUT)
            {"key", "path", "caption", "fps", "num_frames", "colour", "shape", "direction"}
        images/{key}.png, images.jsonl     stills, every (colour, shape) pair
            {"key", "path", "caption", "colour", "shape"}
        heldout/{key}.mp4, heldout.jsonl   clips of the HELD_OUT combos, for evaluation
                                           (ordered clip-major, so any prefix covers all combos)
        eval_prompts.txt                   held-out captions, then a few training captions
        .complete                          generation parameters (JSON), written last

    ``leave_ratio``: the share of each combination's training clips (the first
    ``round(leave_ratio * clips_per_combo)``) rendered with ``leave_frame``, so the shape may leave the
    frame (for extension: a model must have seen it to continue a clip that reaches the border). The
    held-out clips and the stills never leave.

    ``travel_range``: the training clips' travel over the clip, as fractions of the frame side (default
    ``TRAVEL_RANGE``). A wider range down to slow clips teaches a model to extend motion slow enough to
    stay in view over many more frames. The held-out clips keep ``TRAVEL_RANGE``.

    ``frame_rates``: the training clips' frame rates, cycled over each combination's clips (clip k at
    ``frame_rates[k % len(frame_rates)]``, so repeating a rate weighs it; None: all at ``fps``). A clip
    at r fps shows the same motion per second sampled r / fps times as densely: its travel over the
    clip is ``travel_range`` x fps / r, and its file and row say r fps. A model conditioned on the
    frame rate learns from them how far a shape moves per frame at each rate, which it cannot read
    reliably from a few frames of sub-pixel motion (extension of dense clips, README "Conditioning
    on given frames"). The held-out clips and the stills stay at ``fps``.

    Deterministic from ``seed``. If ``root`` already holds a complete data set made with the same
    parameters it is left alone; with different parameters a ``ValueError`` is raised unless
    ``overwrite`` is set. A folder without the marker (e.g. an interrupted run) is regenerated.
    """
    from latentvid.data.video import write_png, write_video

    if size % 2:
        raise ValueError(f"size must be even for yuv420p H.264, got {size}")
    for name, value in [("clips_per_combo", clips_per_combo), ("num_frames", num_frames),
                        ("fps", fps), ("images_per_combo", images_per_combo)]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    check_leave_ratio(leave_ratio)
    travel_range = check_travel_range(travel_range)
    rates = check_frame_rates(frame_rates, fps, travel_range)
    root = Path(root)
    params = {
        "seed": seed, "clips_per_combo": clips_per_combo, "num_frames": num_frames, "size": size,
        "fps": fps, "images_per_combo": images_per_combo,
        "heldout_clips_per_combo": heldout_clips_per_combo, "held_out": [list(c) for c in HELD_OUT],
    }
    leaving = round(leave_ratio * clips_per_combo)
    if leave_ratio:  # recorded only when used, so folders made before the option still match
        params["leave_ratio"] = leave_ratio
    if travel_range != TRAVEL_RANGE:  # likewise
        params["travel_range"] = list(travel_range)
    if rates != (float(fps),):  # likewise
        params["frame_rates"] = list(rates)
    existing = read_marker(root)
    if existing is not None and not overwrite:
        if existing.get("params") == params:
            return existing
        raise ValueError(
            f"{root} already holds a shapes data set made with {existing.get('params')}; "
            f"requested {params}. Pass overwrite=True (--overwrite) or choose another folder."
        )

    (root / COMPLETE_MARKER).unlink(missing_ok=True)  # incomplete from here until the end
    for sub in ("videos", "images", "heldout"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    combos = all_combos()
    index = {combo: i for i, combo in enumerate(combos)}  # stable stream ids for the rngs
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    train = training_combos()
    # clip-major order for the held-out clips: any prefix covers every held-out combo
    heldout_items = [(combo, k) for k in range(heldout_clips_per_combo) for combo in HELD_OUT]
    total = len(train) * clips_per_combo + len(pairs) * images_per_combo + len(heldout_items)
    bar = _progress(total, progress)

    def clip_row(combo: tuple[str, str, str], k: int, folder: str) -> dict[str, Any]:
        colour, shape, direction = combo
        key = f"{colour}_{shape}_{direction}_{k:02d}"
        rel = f"{folder}/{key}.mp4"
        training = folder == "videos"
        stream = 0 if training else 2  # held-out clips draw from their own streams
        rate = rates[k % len(rates)] if training else float(fps)
        travel = (travel_range[0] * fps / rate, travel_range[1] * fps / rate) if training else TRAVEL_RANGE
        frames = render_clip(colour, shape, direction, num_frames, size, _rng(seed, stream, index[combo], k),
                             leave_frame=training and k < leaving, travel_range=travel)
        write_video(root / rel, frames, fps=rate)
        if bar is not None:
            bar.update()
        return {"key": key, "path": rel, "caption": video_caption(*combo), "fps": rate,
                "num_frames": num_frames, "colour": colour, "shape": shape, "direction": direction}

    videos = [clip_row(combo, k, "videos") for combo in train for k in range(clips_per_combo)]
    heldout = [clip_row(combo, k, "heldout") for combo, k in heldout_items]
    images = []
    for p, (colour, shape) in enumerate(pairs):
        for k in range(images_per_combo):
            key = f"{colour}_{shape}_{k:02d}"
            rel = f"images/{key}.png"
            write_png(root / rel, render_image(colour, shape, size, _rng(seed, 1, p, k)))
            if bar is not None:
                bar.update()
            images.append({"key": key, "path": rel, "caption": image_caption(colour, shape),
                           "colour": colour, "shape": shape})
    if bar is not None:
        bar.close()

    write_text_atomic(root / "videos.jsonl", _jsonl(videos))
    write_text_atomic(root / "images.jsonl", _jsonl(images))
    write_text_atomic(root / "heldout.jsonl", _jsonl(heldout))
    write_text_atomic(root / "eval_prompts.txt", "".join(p + "\n" for p in eval_prompts()))

    # drop files left by an earlier run with other parameters (only our own kinds of file)
    keep = {row["path"] for row in videos + heldout + images}
    for sub, ext in (("videos", ".mp4"), ("heldout", ".mp4"), ("images", ".png")):
        for path in (root / sub).iterdir():
            if path.suffix == ext and f"{sub}/{path.name}" not in keep:
                path.unlink()

    files = [root / p for p in keep]
    summary = {
        "params": params,
        "num_videos": len(videos),
        "num_images": len(images),
        "num_heldout": len(heldout),
        "num_bytes": sum(f.stat().st_size for f in files),
    }
    write_text_atomic(root / COMPLETE_MARKER, json.dumps(summary, indent=2) + "\n")
    return summary
