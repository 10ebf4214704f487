"""Video and image file I/O: decord for reading, PyAV (H.264) for writing, PIL for stills.

The readers themselves (decord and PyAV behind one interface) are in :mod:`latentvid.data.readers`.

Inside the library a clip is float ``(C, T, H, W)`` in ``[-1, 1]``; files hold uint8
``(T, H, W, C)`` frames. :func:`to_uint8` and :func:`from_uint8` are the only conversions
between the two.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latentvid.data.readers import DecordReader, unpad_rows
from latentvid.files import atomic_path

_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}

Size = int | tuple[int, int] | None


# --------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------


def to_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float clip (C, T, H, W) in [-1, 1] -> uint8 frames (T, H, W, C).

    A uint8 array / tensor is taken to be (T, H, W, C) already and returned as a numpy array.
    Values outside [-1, 1] are clipped.
    """
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        if video.dtype == torch.uint8:
            return video.numpy()
        video = video.float().numpy()
    video = np.asarray(video)
    if video.dtype == np.uint8:
        if video.ndim != 4:
            raise ValueError(f"uint8 video must be (T, H, W, C), got shape {video.shape}")
        return video
    if video.ndim != 4:
        raise ValueError(f"float video must be (C, T, H, W), got shape {video.shape}")
    scaled = np.rint((np.clip(video, -1.0, 1.0) + 1.0) * 127.5)
    return scaled.astype(np.uint8).transpose(1, 2, 3, 0)  # (T, H, W, C)


def from_uint8(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames (T, H, W, C) -> float32 clip (C, T, H, W) in [-1, 1]."""
    if not isinstance(frames, torch.Tensor):
        frames = torch.from_numpy(np.require(frames, requirements="W"))  # copies read-only arrays
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"expected uint8 (T, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)  # (C, T, H, W)


def _as_hw(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_frames(frames: np.ndarray, size: Size) -> np.ndarray:
    """Resize uint8 frames (T, H, W, C) to (T, h, w, C); ``size`` is an int (square) or (h, w).

    Bilinear with antialiasing when shrinking; returns the input unchanged when it already
    has that size or ``size`` is None.
    """
    hw = _as_hw(size)
    if hw is None or tuple(frames.shape[1:3]) == hw:
        return frames
    x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float()  # (T, C, H, W)
    x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, h, w, C)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _open_reader(path: str | os.PathLike, num_threads: int = 1) -> DecordReader:
    """decord over ``path``; FileNotFoundError / ValueError (:class:`VideoReadError`) naming the file."""
    return DecordReader(path, num_threads=num_threads)


def video_info(path: str | os.PathLike) -> dict[str, Any]:
    """``{"num_frames": int, "fps": float, "height": int, "width": int}`` of a video file."""
    with _open_reader(path) as reader:
        height, width = reader.read([0]).shape[1:3]
        return {"num_frames": reader.num_frames, "fps": reader.fps, "height": int(height), "width": int(width)}


def read_frames(
    path: str | os.PathLike,
    num_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    size: Size = None,
    num_threads: int = 1,
    allow_fewer: bool = False,
) -> np.ndarray:
    """Decode frames ``start, start + stride, ...`` as uint8 (T, H, W, 3).

    ``num_frames=None`` reads to the end. With ``allow_fewer`` a short file yields as many
    frames as it has (at least one) instead of raising. ``size``: int (square) or (h, w) to
    resize to, None to keep the file's size. (Clip sampling by frame rate, crops and the PyAV
    fallback live in :mod:`latentvid.data.clips`.)
    """
    if stride < 1 or start < 0 or (num_frames is not None and num_frames < 1):
        raise ValueError(f"invalid frame selection {num_frames=} {stride=} {start=} for {path}")
    with _open_reader(path, num_threads) as reader:
        total = reader.num_frames
        available = len(range(start, total, stride))
        wanted = available if num_frames is None else num_frames
        if available < 1 or (available < wanted and not allow_fewer):
            raise ValueError(
                f"video {os.fspath(path)} has {total} frames; need {wanted} from frame {start} "
                f"with stride {stride}"
            )
        frames = reader.read(list(range(start, total, stride))[:wanted])  # (T, H, W, 3) uint8
    # decord's own scaler fails on tiny frames too, so resize here
    return resize_frames(frames, size)


_unpad_rows = unpad_rows  # the decord row-padding repair lives with the readers


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    size: Size = None,
    num_threads: int = 1,
) -> torch.Tensor:
    """Read a clip as float32 (C, T, H, W) in [-1, 1].

    Frames ``start, start + stride, ...`` (``num_frames`` of them, or to the end when None).
    ``size``: int (square) or (h, w) to resize to. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` (naming the file) when it cannot be decoded or is too short.
    """
    return from_uint8(read_frames(path, num_frames, stride, start, size, num_threads))


def read_image(path: str | os.PathLike, size: Size = None) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3), optionally resized (int: square, or (h, w))."""
    from PIL import Image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
    except Exception as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err
    return resize_frames(image[None], size)[0]


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write_video(
    path: str | os.PathLike,
    video: torch.Tensor | np.ndarray,
    fps: float,
    crf: int = 12,
) -> None:
    """Encode a clip as H.264 (yuv420p) with PyAV, atomically, creating parent folders.

    ``video``: float (C, T, H, W) in [-1, 1] (torch or numpy) or uint8 (T, H, W, C) with C = 3.
    yuv420p needs even sides, so an odd height / width is padded by one replicated row / column
    (the file is then that much larger). ``crf``: x264 quality, 0 = lossless luma, 12 = near
    transparent. The container comes from the suffix (.mp4, .mov, .mkv).
    """
    import av

    container_format = _CONTAINERS.get(Path(path).suffix.lower())
    if container_format is None:
        raise ValueError(f"unsupported video suffix for {path}; use one of {tuple(_CONTAINERS)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps} for {path}")
    frames = to_uint8(video)
    if frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"need at least one RGB frame for {path}, got (T, H, W, C) = {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, keep_suffix=True) as tmp:
        with av.open(tmp, mode="w", format=container_format) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(image))
            container.mux(stream.encode())  # flush the encoder's delayed frames


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write a still atomically as PNG, creating parent folders.

    ``image``: float (C, H, W) in [-1, 1] (torch or numpy) or uint8 (H, W, C) with C = 3.
    """
    from PIL import Image

    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if image.ndim != 3:
            raise ValueError(f"float image must be (C, H, W), got {image.shape} for {path}")
        image = to_uint8(image[:, None])[0]  # (C, 1, H, W) -> (H, W, C)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"uint8 image must be (H, W, 3), got {image.shape} for {path}")
    with atomic_path(path, keep_suffix=True) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
