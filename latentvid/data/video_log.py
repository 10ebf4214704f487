"""Videos written for people to look at: file-name slugs, mp4 files, TensorBoard animated images.

Shared by the sample-video callback, the VAE's reconstruction videos, the cascade and the tools,
so it sits below all of them. Frames are uint8 (T, H, W, 3).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from latentvid.data.video import write_video


def slug(text: str, max_len: int = 48) -> str:
    """A file-name-safe short form of a caption."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or "empty"


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """uint8 (T, H, W, 3) -> animated GIF bytes (what TensorBoard shows as a video)."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / max(fps, 1)), loop=0)
    return buf.getvalue()


def log_tensorboard_video(logger: TensorBoardLogger, tag: str, frames: np.ndarray, fps: float, step: int) -> None:
    """Write uint8 (T, H, W, 3) frames as an animated image summary (no moviepy needed)."""
    from torch.utils.tensorboard.summary import Summary

    t, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
    logger.experiment.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def save_and_log_video(path: Path, frames: np.ndarray, fps: float, loggers: Iterable[Any], tag: str, step: int) -> Path:
    """Write uint8 (T, H, W, 3) ``frames`` as the mp4 ``path`` and, to every TensorBoard logger among
    ``loggers`` (others are skipped), as the animated image ``tag`` at ``step`` -> ``path``."""
    write_video(path, frames, fps=fps)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            log_tensorboard_video(logger, tag, frames, fps, step)
    return path
