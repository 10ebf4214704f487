"""From a video (or image) file to a fixed-shape training clip: the clip spec and its pure steps.

A :class:`ClipSpec` says what a clip is (``T`` frames of ``H x W``, at a target frame rate or a
fixed stride, where it starts, what happens when a file is too short, how it is cropped and
which reader decodes it). It is shared by the folder and shard datasets and appears in
configs as a nested option (``clip: {num_frames: 16, size: 256, fps: 8}``).

The steps are separate, pure functions, so each is tested on its own:

* :func:`sample_frame_indices`: which source frames to take (target fps resampled from the
  file's real rate, or a fixed stride; random / centred / first start) and the effective fps;
* :func:`sample_frame_times`: the same by presentation time, for variable frame rate files
  (the frame nearest each wanted time, see :mod:`latentvid.data.timestamps`);
* :func:`crop_box` + :func:`resize_crop`: resize the shorter side to the target and crop
  (random or centred), computed as one crop-then-resize so only the kept pixels are resized;
* :func:`pad_clip` / :func:`image_to_clip`: uint8 frames -> float ``(3, T, H, W)`` in [-1, 1]
  plus a ``(T,)`` frame mask (short clips padded and masked; stills as one-frame videos or
  static clips).

:func:`load_clip` and :func:`load_image` chain them for one file (path or bytes);
:func:`probe_clip` and :func:`probe_image` say what a file offers (frame size, frames at the
clip's rate) without decoding it, which is what bucketing (:mod:`latentvid.data.buckets`) needs.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch

from latentvid.data.readers import (BACKENDS, Source, TimestampError, VideoReader, VideoReadError, open_video,
                                    source_name)
from latentvid.data.timestamps import frames_at_times, is_constant_rate, note_fallback
from latentvid.data.video import from_uint8, resize_frames


class ClipError(ValueError):
    """A sample that cannot become a clip (unreadable, too short, ...); the message names the file."""


@dataclass(frozen=True)
class ClipSpec:
    """What one training clip is, and how it is read.

    Args:
        num_frames: frames per clip (T).
        size: output frame size, an int (square) or ``[height, width]``; the shorter side is
            resized to fit and the rest cropped (aspect ratio kept).
        fps: target frame rate: frames are resampled from the file's real rate (never above
            it: a slower file is read at its own rate) and the rate actually obtained is
            reported as the sample's ``fps``. A variable frame rate file (unevenly spaced
            timestamps) takes the frames nearest the wanted times. ``None``: use ``stride`` instead.
        stride: take every ``stride``-th frame when ``fps`` is None (reported fps = file fps / stride).
        start: where the clip starts in the file (or in its ``start``..``end`` window):
            ``"random"``, ``"center"`` or ``"first"``.
        short: a file with fewer than T frames at this rate: ``"pad"`` (keep its frames, pad
            with zeros, frame mask False there) or ``"skip"`` (skip the sample, counted).
        crop: ``"random"`` or ``"center"`` crop after resizing the shorter side.
        backend: video reader, ``"decord"`` or ``"pyav"``.
        fallback: read a file that the backend cannot open or decode again with PyAV.
        threads: decoder threads per reader (keep 1 when many DataLoader workers decode).
        image_mode: how a still becomes a clip: ``"mask"`` (frame 0 = the image, frames 1..T-1
            zero and masked, fps 0) or ``"static"`` (the image repeated T times, all valid).
        static_fps: the fps reported for ``"static"`` stills.
    """

    num_frames: int = 16
    size: int | tuple[int, int] = 256
    fps: float | None = None
    stride: int = 1
    start: Literal["random", "center", "first"] = "random"
    short: Literal["pad", "skip"] = "pad"
    crop: Literal["random", "center"] = "random"
    backend: Literal["decord", "pyav"] = "decord"
    fallback: bool = True
    threads: int = 1
    image_mode: Literal["mask", "static"] = "mask"
    static_fps: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.size, list):
            object.__setattr__(self, "size", tuple(self.size))  # frozen: a spec is shared by every source
        checks = {
            "num_frames": self.num_frames >= 1,
            "size": all(int(s) >= 1 for s in self.hw) and (isinstance(self.size, int) or len(self.size) == 2),
            "fps": self.fps is None or (math.isfinite(self.fps) and self.fps > 0),
            "stride": self.stride >= 1,
            "start": self.start in ("random", "center", "first"),
            "short": self.short in ("pad", "skip"),
            "crop": self.crop in ("random", "center"),
            "backend": self.backend in BACKENDS,
            "threads": self.threads >= 0,
            "image_mode": self.image_mode in ("mask", "static"),
            "static_fps": self.static_fps >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ClipSpec: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the output frames."""
        if isinstance(self.size, int):
            return self.size, self.size
        h, w = self.size
        return int(h), int(w)

    def deterministic(self) -> ClipSpec:
        """The same spec with centred start and crop (validation, evaluation)."""
        return dataclasses.replace(self, start="center", crop="center")


# --------------------------------------------------------------------------------------------
# pure steps
# --------------------------------------------------------------------------------------------


def _uniform_int(high: int, generator: torch.Generator | None) -> int:
    """An integer uniform in [0, high]."""
    if high <= 0:
        return 0
    return int(torch.randint(0, high + 1, (1,), generator=generator).item())


def sample_frame_indices(
    num_available: int,
    source_fps: float,
    num_frames: int,
    *,
    target_fps: float | None = None,
    stride: int = 1,
    start: str = "random",
    first: int = 0,
    last: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[int], float]:
    """Source frame indices of one clip and the frame rate they represent.

    Frames ``first .. last - 1`` of a file with ``num_available`` frames at ``source_fps`` are
    eligible. With ``target_fps`` the step between taken frames is ``source_fps / target_fps``
    source frames (at least 1: a file slower than the target is read at its own rate); frame
    k is the one on screen at time k / target_fps after the start, i.e. index
    ``start + floor(k * step)``. Without it the step is ``stride``. The start frame is chosen
    ``"random"`` (uniform over all starts that fit, from ``generator``), ``"center"`` or
    ``"first"``.

    Returns:
        (indices, effective_fps): up to ``num_frames`` increasing indices (fewer when the
        window is too short: as many as fit from its first frame) and ``source_fps / step``.
    """
    if num_frames < 1 or stride < 1 or not source_fps > 0:
        raise ValueError(f"invalid sampling: {num_frames=} {stride=} {source_fps=}")
    last = num_available if last is None else min(last, num_available)
    first = max(0, first)
    avail = last - first
    if avail < 1:
        return [], 0.0
    step = float(stride) if target_fps is None else max(source_fps / target_fps, 1.0)
    effective = source_fps / step
    offsets = [math.floor(k * step + 1e-6) for k in range(num_frames)]  # frame on screen at k / target
    if offsets[-1] < avail:
        slack = avail - 1 - offsets[-1]
        if start == "random":
            begin = _uniform_int(slack, generator)
        elif start == "center":
            begin = slack // 2
        elif start == "first":
            begin = 0
        else:
            raise ValueError(f"unknown start {start!r}; use 'random', 'center' or 'first'")
    else:
        begin = 0
        offsets = [o for o in offsets if o < avail]
    return [first + begin + o for o in offsets], effective


def sample_frame_times(
    timestamps: np.ndarray,
    source_fps: float,
    num_frames: int,
    target_fps: float,
    *,
    start: str = "random",
    start_s: float | None = None,
    end_s: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[int], float]:
    """Source frame indices of one clip chosen by presentation time (variable frame rate files).

    ``timestamps`` (N,) are the frames' times in seconds (strictly increasing, frame 0 at 0).
    The frames shown in ``start_s .. end_s`` are eligible: from the one on screen at ``start_s``
    to the last that starts before ``end_s``. The clip's rate is ``target_fps``, but never above
    ``source_fps`` (the file's average rate), as in :func:`sample_frame_indices`. The clip
    starts on an eligible frame ``b`` from which ``num_frames`` samples fit (``"random"``:
    uniform over them, from ``generator``; ``"center"``: the one nearest the centre of the
    window's slack; ``"first"``), and frame k is the one whose time is nearest
    ``timestamps[b] + k / rate`` (:func:`~latentvid.data.timestamps.frames_at_times`), so a
    frame shown for longer than one step may repeat.

    Returns:
        (indices, effective_fps): up to ``num_frames`` non-decreasing indices (fewer when the
        window is too short: as many as fit from its first frame) and the rate they represent.
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)  # (N,)
    if num_frames < 1 or not source_fps > 0 or not target_fps > 0:
        raise ValueError(f"invalid sampling: {num_frames=} {source_fps=} {target_fps=}")
    eps = 1e-6  # seconds: times from a rational time base, compared as floats
    first = max(int(np.searchsorted(ts, start_s + eps, side="right")) - 1, 0) if start_s else 0
    last = int(np.searchsorted(ts, end_s - eps, side="left")) if end_s else ts.size
    if last - first < 1:
        return [], 0.0
    rate = min(float(target_fps), float(source_fps))
    offsets = np.arange(num_frames) / rate  # (T,) seconds after the clip's first frame
    lo, hi = ts[first], ts[last - 1]
    fits = np.flatnonzero(ts[first:last] + offsets[-1] <= hi + eps) + first  # start frames with room for T
    if fits.size:
        if start == "random":
            begin = int(fits[_uniform_int(fits.size - 1, generator)])
        elif start == "center":
            begin = int(fits[frames_at_times(ts[fits], [lo + (ts[fits[-1]] - lo) / 2])[0]])
        elif start == "first":
            begin = int(fits[0])
        else:
            raise ValueError(f"unknown start {start!r}; use 'random', 'center' or 'first'")
    else:
        begin = first
        offsets = offsets[lo + offsets <= hi + eps]
    indices = frames_at_times(ts[first:last], ts[begin] + offsets) + first  # (T,)
    return [int(i) for i in indices], rate


def crop_box(height: int, width: int, out_h: int, out_w: int, mode: str = "center",
             generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """The source region ``(top, left, crop_h, crop_w)`` that "resize the shorter side to fit
    ``out_h x out_w``, then crop" keeps; resizing that region to ``(out_h, out_w)`` is the result.

    The scale is ``max(out_h / height, out_w / width)``, so the crop has the output's aspect
    ratio and spans the whole source along the side that limits it. ``mode``: ``"center"`` or
    ``"random"`` (offsets uniform, from ``generator``).
    """
    if min(height, width, out_h, out_w) < 1:
        raise ValueError(f"invalid sizes for a crop: source {height}x{width}, output {out_h}x{out_w}")
    scale = max(out_h / height, out_w / width)
    crop_h = min(height, max(1, round(out_h / scale)))
    crop_w = min(width, max(1, round(out_w / scale)))
    if mode == "center":
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    elif mode == "random":
        top, left = _uniform_int(height - crop_h, generator), _uniform_int(width - crop_w, generator)
    else:
        raise ValueError(f"unknown crop {mode!r}; use 'center' or 'random'")
    return top, left, crop_h, crop_w


def resize_crop(frames: np.ndarray, size: int | tuple[int, int], mode: str = "center",
                generator: torch.Generator | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, h, w, 3): shorter side resized to fit ``size``, then cropped."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    top, left, ch, cw = crop_box(frames.shape[1], frames.shape[2], out_h, out_w, mode, generator)
    return resize_frames(frames[:, top: top + ch, left: left + cw], (out_h, out_w))  # (T, h, w, 3)


def pad_clip(frames: np.ndarray, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (t, H, W, 3), t <= T -> float clip (3, T, H, W) in [-1, 1] zero-padded, and a
    frame mask (T,) bool, True for the t real frames."""
    clip = from_uint8(frames)  # (3, t, H, W)
    t = clip.shape[1]
    if t > num_frames:
        raise ValueError(f"{t} frames do not fit a clip of {num_frames}")
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[:t] = True
    if t < num_frames:
        pad = clip.new_zeros(clip.shape[0], num_frames - t, *clip.shape[2:])
        clip = torch.cat([clip, pad], dim=1)  # (3, T, H, W)
    return clip, mask


def image_to_clip(image: np.ndarray, num_frames: int, mode: str = "mask",
                  static_fps: float = 8.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """uint8 (H, W, 3) still -> (clip (3, T, H, W), frame mask (T,), fps).

    ``"mask"``: a one-frame video (frame 0 valid, the rest zero and masked), fps 0.
    ``"static"``: the still repeated T times, every frame valid, fps ``static_fps``.
    """
    if mode == "mask":
        clip, mask = pad_clip(image[None], num_frames)
        return clip, mask, 0.0
    if mode == "static":
        clip = from_uint8(image[None]).expand(-1, num_frames, -1, -1).contiguous()  # (3, T, H, W)
        return clip, torch.ones(num_frames, dtype=torch.bool), float(static_fps)
    raise ValueError(f"unknown image_mode {mode!r}; use 'mask' or 'static'")


# --------------------------------------------------------------------------------------------
# one file
# --------------------------------------------------------------------------------------------


class Clip(NamedTuple):
    """A decoded clip: uint8 ``frames`` (t, h, w, 3) with 1 <= t <= T, its ``fps`` (effective
    rate) and the source frame ``indices`` taken."""

    frames: np.ndarray
    fps: float
    indices: list[int]


def _variable_times(reader: VideoReader, spec: ClipSpec, fps: float | None) -> np.ndarray | None:
    """The frame times (N,) of a variable frame rate file when the clip is sampled by time; None
    to sample by the average rate (constant rate, a stride, a given ``fps``, unusable timestamps)."""
    if spec.fps is None or fps or reader.num_frames < 3:
        return None  # a stride counts frames; a given fps overrides the file's timing
    try:
        times = reader.timestamps()  # (N,)
    except TimestampError as err:
        note_fallback(reader.name, err.kind, str(err).removeprefix(f"{reader.name}: "))
        return None
    return None if is_constant_rate(times) else times


def _read_clip(source: Source, spec: ClipSpec, backend: str, name: str, generator: torch.Generator | None,
               window: tuple[float | None, float | None], fps: float | None) -> Clip:
    with open_video(source, backend, spec.threads, name) as reader:
        source_fps = float(fps) if fps else reader.fps
        start_s, end_s = window
        times = _variable_times(reader, spec, fps)
        if times is not None:
            indices, effective = sample_frame_times(times, source_fps, spec.num_frames, spec.fps, start=spec.start,
                                                    start_s=start_s, end_s=end_s, generator=generator)
        else:
            first = math.floor(start_s * source_fps) if start_s else 0
            last = math.ceil(end_s * source_fps) if end_s else None
            indices, effective = sample_frame_indices(
                reader.num_frames, source_fps, spec.num_frames, target_fps=spec.fps, stride=spec.stride,
                start=spec.start, first=first, last=last, generator=generator)
        if not indices:
            raise ClipError(f"{name}: no frames in the window {start_s}..{end_s} s "
                            f"({reader.num_frames} frames at {source_fps:g} fps)")
        if len(indices) < spec.num_frames and spec.short == "skip":
            raise ClipError(f"{name}: too short: {len(indices)} of {spec.num_frames} frames at "
                            f"{effective:g} fps ({reader.num_frames} frames at {source_fps:g} fps; short='skip')")
        return Clip(reader.read(indices), effective, indices)


def load_clip(source: Source, spec: ClipSpec, generator: torch.Generator | None = None, name: str | None = None,
              window: tuple[float | None, float | None] = (None, None), fps: float | None = None) -> Clip:
    """Decode one clip of ``source`` (path or bytes) as ``spec`` says, resized and cropped.

    ``window``: (start, end) seconds to sample from (None = the whole file); ``fps``: the
    file's frame rate if known better than its header (e.g. a CSV column; frames are then
    taken by that rate, not by the file's timestamps). A variable frame rate file is sampled
    by its timestamps (:func:`sample_frame_times`), or by its average rate, counted and logged
    (:func:`~latentvid.data.timestamps.note_fallback`), when they are unusable. A file the chosen
    backend cannot read is retried with PyAV when ``spec.fallback``. Raises
    ``FileNotFoundError`` or :class:`ClipError` naming the file.
    """
    name = source_name(source, name)
    try:
        clip = _read_clip(source, spec, spec.backend, name, generator, window, fps)
    except VideoReadError as err:
        if not spec.fallback or spec.backend == "pyav":
            raise ClipError(str(err)) from err
        try:
            clip = _read_clip(source, spec, "pyav", name, generator, window, fps)
        except VideoReadError as err2:
            reason = str(err2).removeprefix(f"{name}: ")
            raise ClipError(f"{err}; PyAV fallback: {reason}") from err2
    frames = resize_crop(clip.frames, spec.hw, spec.crop, generator)  # (t, h, w, 3)
    return Clip(frames, clip.fps, clip.indices)


class ClipShape(NamedTuple):
    """What a file offers a clip before anything is decoded but its first frame: the displayed
    frame size and how many frames a clip at the spec's rate can take from it (its window)."""

    height: int
    width: int
    frames: int


def available_frames(num_available: int, source_fps: float, target_fps: float | None = None, stride: int = 1) -> int:
    """How many frames :func:`sample_frame_indices` can take from ``num_available`` source frames at
    most: those whose offset ``floor(k * step)`` falls inside them."""
    if num_available < 1:
        return 0
    step = float(stride) if target_fps is None else max(source_fps / target_fps, 1.0)
    return math.ceil((num_available - 1e-6) / step)  # the offsets' own 1e-6 guard, as in sample_frame_indices


def _probe(source: Source, spec: ClipSpec, backend: str, name: str, window: tuple[float | None, float | None],
           fps: float | None) -> ClipShape:
    with open_video(source, backend, spec.threads, name) as reader:
        source_fps = float(fps) if fps else reader.fps
        start_s, end_s = window
        first = max(0, math.floor(start_s * source_fps)) if start_s else 0
        last = min(reader.num_frames, math.ceil(end_s * source_fps)) if end_s else reader.num_frames
        frames = available_frames(last - first, source_fps, spec.fps, spec.stride)
        if frames < 1:
            raise ClipError(f"{name}: no frames in the window {start_s}..{end_s} s "
                            f"({reader.num_frames} frames at {source_fps:g} fps)")
        height, width = reader.read([0]).shape[1:3]  # decoded: the display rotation is applied
    return ClipShape(int(height), int(width), frames)


def probe_clip(source: Source, spec: ClipSpec, name: str | None = None,
               window: tuple[float | None, float | None] = (None, None), fps: float | None = None) -> ClipShape:
    """The :class:`ClipShape` of ``source`` (path or bytes) for clips of ``spec``'s rate, decoding
    only its first frame. Frames are counted at the file's average rate (a variable frame rate
    file may give a frame more or less when the clip is sampled by time). ``window`` and ``fps``
    as in :func:`load_clip`; the same PyAV fallback; ``FileNotFoundError`` or :class:`ClipError`
    naming the file."""
    name = source_name(source, name)
    try:
        return _probe(source, spec, spec.backend, name, window, fps)
    except VideoReadError as err:
        if not spec.fallback or spec.backend == "pyav":
            raise ClipError(str(err)) from err
        try:
            return _probe(source, spec, "pyav", name, window, fps)
        except VideoReadError as err2:
            raise ClipError(f"{err}; PyAV fallback: {str(err2).removeprefix(f'{name}: ')}") from err2


def _image_file(source: Source, name: str) -> io.BytesIO | str:
    """What PIL opens for a still given as a path or bytes; a clear error for none or an empty one."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ClipError(f"{name}: empty file (0 bytes)")
        return io.BytesIO(bytes(source))
    file = os.fspath(source)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"image file not found: {file}")
    return file


def probe_image(source: Source, name: str | None = None) -> tuple[int, int]:
    """(height, width) of a still as :func:`load_image` sees it (EXIF orientation applied), from its
    header only."""
    from PIL import Image

    name = source_name(source, name)
    file = _image_file(source, name)
    try:
        with Image.open(file) as img:
            width, height = img.size
            turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
    except Exception as err:  # PIL.UnidentifiedImageError, truncated data, ...
        raise ClipError(f"{name}: cannot decode image ({type(err).__name__}: {str(err)[:120]})") from err
    return (width, height) if turned else (height, width)


def load_image(source: Source, spec: ClipSpec, generator: torch.Generator | None = None,
               name: str | None = None) -> np.ndarray:
    """Decode a still (path or bytes; any PIL format, EXIF orientation applied, grayscale / alpha
    converted to RGB) resized and cropped to ``spec.size``: uint8 (h, w, 3)."""
    from PIL import Image, ImageOps

    name = source_name(source, name)
    file = _image_file(source, name)
    try:
        with Image.open(file) as img:
            image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except Exception as err:  # PIL.UnidentifiedImageError, truncated data, ...
        raise ClipError(f"{name}: cannot decode image ({type(err).__name__}: {str(err)[:120]})") from err
    return resize_crop(image[None], spec.hw, spec.crop, generator)[0]  # (h, w, 3)
