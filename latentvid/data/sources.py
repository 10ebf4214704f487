"""What a data source is to the streaming pipeline: samples grouped into units, and how one decodes.

A source (a folder + CSV/JSONL index, or a set of webdataset shards) splits its samples into
*units*: the shards themselves, or fixed blocks of index rows. :class:`~latentvid.data.stream.SampleStream`
hands units to ranks and DataLoader workers (each unit to exactly one of them per epoch) and
records which units were consumed, so every source gets the same splitting, shuffling, skip
counting and resume position. A source only has to say

* how many units it has (:meth:`Source.num_units`) and what each is called,
* what raw samples a unit holds (:meth:`Source.read_unit`: cheap records, e.g. a path or
  the bytes of a tar member; nothing decoded yet), and
* how one raw sample becomes an item (:meth:`Source.decode`), raising :class:`SampleError`
  naming the file (or shard and key) when it cannot, and
* for bucketed batching, what shape a raw sample has before it is decoded
  (:meth:`Source.measure`: frame size and frames at the clip's rate; None frames for a still).

Items are the dicts the models consume::

    {"video": float32 (3, T, H, W) in [-1, 1], "frame_mask": bool (T,), "fps": float32 (),
     "caption": str, "key": str}
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from latentvid.data.clips import (ClipError, ClipShape, ClipSpec, image_to_clip, load_clip, load_image, pad_clip,
                                  probe_clip, probe_image)
from latentvid.data.readers import Source as MediaSource

log = logging.getLogger("latentvid.data")


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from ints and strings, the same in every process (unlike ``hash``, which
    is salted per interpreter for strings)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class SampleError(ValueError):
    """One sample that cannot be used; the message names the file, or the shard and key."""


class DataError(ValueError):
    """A source that cannot work as configured (wrong column, nothing readable, ...)."""


# What a training set too small to fill one batch per reader does (every datamodule's ``small_data``):
# "repeat" draws / reads it again within the epoch until each reader has a full batch; "stop" ends
# the run before training with :func:`too_small_error`.
SMALL_DATA = ("repeat", "stop")


def check_small_data(policy: str) -> str:
    """``policy`` if it is one of :data:`SMALL_DATA`, else ValueError naming it."""
    if policy not in SMALL_DATA:
        raise ValueError(f"small_data must be one of {list(SMALL_DATA)}, got {policy!r}")
    return policy


class SmallDataError(DataError):
    """A training set too small for one batch per rank; every rank raises the same one."""


def too_small_error(what: str, num_samples: int | None, batch_size: int, workers: int,
                    ranks: int) -> SmallDataError:
    """The one-line error of a training set whose epoch would give some rank no full batch."""
    count = "an unknown number of" if num_samples is None else str(num_samples)
    return SmallDataError(f"{what}: {count} training samples give some rank no full batch of batch_size {batch_size} "
                     f"(num_workers {workers}, ranks {ranks}); add samples, lower batch_size / num_workers / "
                     "devices, or set small_data: repeat to reuse samples within an epoch")


@dataclass
class Raw:
    """One undecoded sample: ``name`` is what warnings call it (a path, or ``shard:key``);
    ``data`` is whatever the source needs to decode it (a row index, a tar sample dict, ...)."""

    name: str
    data: Any


class Source:
    """Base of every data source (see the module docstring). Subclasses: ``VideoSource`` /
    ``ImageSource`` and their folder / shard implementations."""

    kind: ClassVar[str] = ""
    shuffle_buffer: int = 0  # samples held for shuffling across units (shards); 0 for folders

    def num_units(self) -> int:
        raise NotImplementedError

    def unit_sizes(self) -> list[int] | None:
        """Samples in each unit (before decoding), or None when they are not known without reading
        the data (remote shards)."""
        return None

    def unit_name(self, unit: int) -> str:
        return f"{self.describe()} unit {unit}"

    def read_unit(self, unit: int, epoch: int, seed: int, shuffle: bool) -> Iterator[Raw]:
        """The raw samples of ``unit`` in epoch ``epoch``. May raise :class:`SampleError` for a
        unit that cannot be read at all (it is skipped and counted once)."""
        raise NotImplementedError

    def decode(self, raw: Raw, clip: ClipSpec, generator: torch.Generator | None = None) -> dict[str, Any]:
        """One raw sample -> item; raises :class:`SampleError` (or ``FileNotFoundError``)."""
        raise NotImplementedError

    def measure(self, raw: Raw, clip: ClipSpec) -> ClipShape | tuple[int, int, None]:
        """(height, width, frames) of a raw sample without decoding it: its displayed frame size
        and the frames a clip at ``clip``'s rate can take (None for a still, which fits any
        length); raises :class:`SampleError` (or ``FileNotFoundError``) like :meth:`decode`."""
        raise NotImplementedError(f"{type(self).__name__} cannot measure samples (needed for buckets)")

    def describe(self) -> str:
        return type(self).__name__

    def probe(self, clip: ClipSpec, attempts: int = 8) -> None:
        """Decode samples from the start of the source until one works (at most ``attempts``);
        raise :class:`DataError` listing the reasons when none does. Cheap: stops at the first
        good sample."""
        reasons: list[str] = []
        tried = 0
        for unit in range(self.num_units()):
            try:
                raws = self.read_unit(unit, epoch=0, seed=0, shuffle=False)
                for raw in raws:
                    tried += 1
                    try:
                        self.decode(raw, clip.deterministic())
                        return
                    except (SampleError, ClipError, FileNotFoundError) as err:
                        reasons.append(str(err))
                    if tried >= attempts:
                        break
            except SampleError as err:
                tried += 1
                reasons.append(str(err))
            if tried >= attempts:
                break
        if not reasons:
            raise DataError(f"{self.describe()}: no samples")
        shown = "; ".join(reasons[:3]) + (f"; ... ({len(reasons) - 3} more)" if len(reasons) > 3 else "")
        raise DataError(f"{self.describe()}: nothing readable: the first {tried} samples all failed: {shown}")


class VideoSource(Source):
    """A source of video-text samples (folder + index, or shards)."""

    kind = "video"

    @staticmethod
    def video_item(media: MediaSource, clip: ClipSpec, generator: torch.Generator | None, name: str,
                   caption: str, key: str, window: tuple[float | None, float | None] = (None, None),
                   fps: float | None = None) -> dict[str, Any]:
        """Decode ``media`` (path or bytes) into an item; errors become :class:`SampleError`."""
        try:
            decoded = load_clip(media, clip, generator, name=name, window=window, fps=fps)
        except (ClipError, FileNotFoundError) as err:
            raise SampleError(str(err)) from err
        video, mask = pad_clip(decoded.frames, clip.num_frames)  # (3, T, H, W), (T,)
        return {"video": video, "frame_mask": mask, "fps": torch.tensor(decoded.fps, dtype=torch.float32),
                "caption": caption, "key": key}


    @staticmethod
    def video_shape(media: MediaSource, clip: ClipSpec, name: str,
                    window: tuple[float | None, float | None] = (None, None), fps: float | None = None) -> ClipShape:
        """:func:`~latentvid.data.clips.probe_clip` of ``media``; errors become :class:`SampleError`."""
        try:
            return probe_clip(media, clip, name=name, window=window, fps=fps)
        except (ClipError, FileNotFoundError) as err:
            raise SampleError(str(err)) from err


class ImageSource(Source):
    """A source of image-text samples, served as one-frame videos or static clips (``clip.image_mode``)."""

    kind = "image"

    @staticmethod
    def image_item(media: MediaSource, clip: ClipSpec, generator: torch.Generator | None, name: str,
                   caption: str, key: str) -> dict[str, Any]:
        """Decode ``media`` (path or bytes) into an item; errors become :class:`SampleError`."""
        try:
            image = load_image(media, clip, generator, name=name)  # (h, w, 3)
        except (ClipError, FileNotFoundError) as err:
            raise SampleError(str(err)) from err
        video, mask, fps = image_to_clip(image, clip.num_frames, clip.image_mode, clip.static_fps)
        return {"video": video, "frame_mask": mask, "fps": torch.tensor(fps, dtype=torch.float32),
                "caption": caption, "key": key}

    @staticmethod
    def image_shape(media: MediaSource, name: str) -> tuple[int, int, None]:
        """(height, width, None) of a still (:func:`~latentvid.data.clips.probe_image`); errors
        become :class:`SampleError`."""
        try:
            height, width = probe_image(media, name=name)
        except (ClipError, FileNotFoundError) as err:
            raise SampleError(str(err)) from err
        return height, width, None
