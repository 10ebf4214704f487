"""Evaluation metrics as torchmetrics Metrics: FVD, CLIPSIM and the shapes probe.

Stands alone: imports nothing else from latentvid. Names are imported lazily so that, e.g.,
``latentvid.metrics.fvd`` does not pay for importing open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FrechetVideoDistance": "latentvid.metrics.fvd",
    "frechet_distance": "latentvid.metrics.fvd",
    "I3D": "latentvid.metrics.i3d",
    "TorchScriptI3D": "latentvid.metrics.i3d",
    "VideoCLIPScore": "latentvid.metrics.clip_score",
    "ShapesProbe": "latentvid.metrics.shapes",
    "classify_video": "latentvid.metrics.shapes",
    "parse_caption": "latentvid.metrics.shapes",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentvid.metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
