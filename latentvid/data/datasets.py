"""Map-style video-text and image-text datasets over a folder with a JSONL index.

Both yield the same item so they can be mixed in one batch (an image is a one-frame video)::

    {"video": float32 (3, T, H, W) in [-1, 1], "caption": str, "fps": float32 scalar tensor,
     "frame_mask": bool (T,), "key": str}

Frames beyond a clip's length are zeros with ``frame_mask`` False.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from latentvid.data.clips import pad_clip
from latentvid.data.video import read_frames, read_image, video_info

Size = int | tuple[int, int] | None


def read_index(
    root: str | os.PathLike, index: str, required: tuple[str, ...] = ("key", "path", "caption")
) -> list[dict[str, Any]]:
    """Parse ``root/index`` (JSON lines) and check every row.

    Each row needs the ``required`` keys; ``path`` is resolved against ``root`` and must exist.
    Errors name the file, the line number and the offending key or path.
    """
    index_path = Path(root) / index
    if not index_path.is_file():
        raise FileNotFoundError(f"index file not found: {index_path}")
    rows = []
    with open(index_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{index_path}:{lineno}: invalid JSON ({err})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{index_path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(
                    f"{index_path}:{lineno}: missing key(s) {missing} (required: {list(required)})"
                )
            file = Path(root) / row["path"]
            if not file.is_file():
                raise FileNotFoundError(f"{index_path}:{lineno}: file not found: {file}")
            rows.append({**row, "path": str(file)})
    if not rows:
        raise ValueError(f"index file {index_path} has no entries")
    return rows


class _IndexedDataset(Dataset):
    """Rows of a JSONL index decoded to padded clips; subclasses say how one row decodes."""

    default_index = ""

    def __init__(
        self,
        root: str,
        index: str | None = None,
        num_frames: int = 8,
        size: Size = None,
        cache: bool = True,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.root = str(root)
        self.rows = read_index(root, index or self.default_index)
        self.num_frames = num_frames
        self.size = size
        self.cache = cache
        self._decoded: dict[int, tuple[np.ndarray, float]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _decode(self, row: dict[str, Any]) -> tuple[np.ndarray, float]:
        """One row -> uint8 frames (t, H, W, 3) with t <= num_frames, and its fps."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item with ``video`` (3, T, H, W), ``frame_mask`` (T,), ``caption``, ``fps``, ``key``."""
        decoded = self._decoded.get(i)
        if decoded is None:
            decoded = self._decode(self.rows[i])
            if self.cache:
                self._decoded[i] = decoded
        frames, fps = decoded
        video, mask = pad_clip(frames, self.num_frames)
        row = self.rows[i]
        return {"video": video, "caption": row["caption"], "fps": torch.tensor(fps, dtype=torch.float32),
                "frame_mask": mask, "key": row["key"]}


class VideoTextDataset(_IndexedDataset):
    """Clips listed in a JSONL index, each decoded once and kept in memory as uint8.

    Args:
        root: folder holding the index; ``path`` entries are relative to it.
        index: JSONL file name inside ``root``; rows need ``key``, ``path``, ``caption`` and may
            give ``fps`` (otherwise read from the file).
        num_frames: frames per item (T); longer clips keep their first T frames, shorter ones
            are zero-padded and masked.
        size: resize frames to this (int: square, or (h, w)); None keeps the file's size.
        cache: keep decoded uint8 frames in memory (each worker process holds its own copy).
    """

    default_index = "videos.jsonl"

    def _decode(self, row: dict[str, Any]) -> tuple[np.ndarray, float]:
        frames = read_frames(row["path"], self.num_frames, size=self.size, allow_fewer=True)
        fps = float(row["fps"]) if "fps" in row else video_info(row["path"])["fps"]
        return frames, fps


class ImageTextDataset(_IndexedDataset):
    """Stills listed in a JSONL index, served as one-frame videos for joint training.

    Item: ``video`` (3, T, H, W) with frame 0 = the image and frames 1..T-1 zero,
    ``frame_mask`` = [True, False, ...], ``fps`` = 0.

    Args:
        root: folder holding the index; ``path`` entries are relative to it.
        index: JSONL file name inside ``root``; rows need ``key``, ``path``, ``caption``.
        num_frames: length T of the padded video.
        size: resize images to this (int: square, or (h, w)); None keeps the file's size.
        cache: keep decoded uint8 images in memory.
    """

    default_index = "images.jsonl"

    def _decode(self, row: dict[str, Any]) -> tuple[np.ndarray, float]:
        return read_image(row["path"], self.size)[None], 0.0  # (1, H, W, 3), no frame rate
