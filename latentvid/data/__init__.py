"""Data: video / image file I/O, video-text datasets, the synthetic shapes data, DataModules.

Stands alone: imports nothing else from latentvid. The DataModules (``ShapesDataModule``,
``VideoTextDataModule``) are imported lazily so that file I/O and the shapes generator do not
pay for importing Lightning.

Real data: :mod:`~latentvid.data.readers` (decord / PyAV), :mod:`~latentvid.data.clips`
(clip spec, frame sampling, crops), :mod:`~latentvid.data.folder` (folder + CSV/JSONL),
:mod:`~latentvid.data.shards` (webdataset), :mod:`~latentvid.data.stream` (splitting across
ranks / workers, skip counting, mixing), :mod:`~latentvid.data.buckets` (resolution x aspect-ratio
x length buckets and the per-step plan) with :mod:`~latentvid.data.bucket_batches` (batches of one
bucket per step), :mod:`~latentvid.data.video_text` (the DataModule).
"""

from typing import Any
from latentvid.data.buckets import Bucket, BucketPlan, BucketSpec, assign
from latentvid.data.clips import ClipSpec, load_clip, load_image, probe_clip, sample_frame_indices
from latentvid.data.datasets import ImageTextDataset, VideoTextDataset, read_index
from latentvid.data.folder import ImageFolder, VideoFolder
from latentvid.data.readers import VideoReadError, open_video
from latentvid.data.shards import ImageShards, ShardWriter, VideoShards
from latentvid.data.sources import DataError, SampleError
from latentvid.data.stream import MixedStream, SampleStream, collate
from latentvid.data.shapes import (
    BACKGROUND,
    COLOURS,
    DIRECTIONS,
    HELD_OUT,
    SHAPES,
    generate_shapes_dataset,
    image_caption,
    parse_caption,
    render_clip,
    render_image,
    video_caption,
)
from latentvid.data.video import (
    from_uint8,
    read_frames,
    read_image,
    read_video,
    to_uint8,
    video_info,
    write_png,
    write_video,
)

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "DIRECTIONS",
    "HELD_OUT",
    "SHAPES",
    "Bucket",
    "BucketPlan",
    "BucketSpec",
    "ClipSpec",
    "DataError",
    "ImageFolder",
    "ImageShards",
    "ImageTextDataset",
    "MixedStream",
    "SampleError",
    "SampleStream",
    "ShapesDataModule",
    "ShardWriter",
    "VideoFolder",
    "VideoReadError",
    "VideoShards",
    "VideoTextDataModule",
    "VideoTextDataset",
    "assign",
    "collate",
    "from_uint8",
    "generate_shapes_dataset",
    "image_caption",
    "load_clip",
    "load_image",
    "open_video",
    "parse_caption",
    "probe_clip",
    "read_frames",
    "read_image",
    "read_index",
    "read_video",
    "render_clip",
    "render_image",
    "sample_frame_indices",
    "to_uint8",
    "video_caption",
    "video_info",
    "write_png",
    "write_video",
]


def __getattr__(name: str) -> Any:
    if name == "ShapesDataModule":
        from latentvid.data.datamodule import ShapesDataModule

        return ShapesDataModule
    if name == "VideoTextDataModule":
        from latentvid.data.video_text import VideoTextDataModule

        return VideoTextDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
