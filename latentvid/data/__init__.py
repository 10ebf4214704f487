"""Data: video / image file I/O, video-text datasets, the synthetic shapes data, DataModules.

Stands alone: imports nothing else from latentvid. ``ShapesDataModule`` is imported lazily so
that file I/O and the shapes generator do not pay for importing Lightning.
"""

from typing import Any
from latentvid.data.datasets import ImageTextDataset, VideoTextDataset, read_index
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
    "ImageTextDataset",
    "ShapesDataModule",
    "VideoTextDataset",
    "from_uint8",
    "generate_shapes_dataset",
    "image_caption",
    "parse_caption",
    "read_frames",
    "read_image",
    "read_index",
    "read_video",
    "render_clip",
    "render_image",
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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
