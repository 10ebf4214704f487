"""Networks: plain nn.Modules with no training logic; video tensors are (B, C, T, H, W).

The attention function itself is not re-exported: ``latentvid.nn.attention`` must stay the module.
"""

from latentvid.nn.attention import (
    BACKENDS,
    CrossAttention,
    MultiHeadAttention,
    RelativePositionBias,
    SpatialSelfAttention,
    TemporalAttention,
    reset_backend_cache,
    select_backend,
)
from latentvid.nn.layers import (
    Downsample,
    FrameGroupNorm,
    PseudoConv3d,
    ResBlock3D,
    ScalarEmbedding,
    Upsample,
    sinusoidal_embedding,
)
from latentvid.nn.unet3d import UNet3D

__all__ = [
    "BACKENDS",
    "CrossAttention",
    "Downsample",
    "FrameGroupNorm",
    "MultiHeadAttention",
    "PseudoConv3d",
    "RelativePositionBias",
    "ResBlock3D",
    "ScalarEmbedding",
    "SpatialSelfAttention",
    "TemporalAttention",
    "UNet3D",
    "Upsample",
    "reset_backend_cache",
    "select_backend",
    "sinusoidal_embedding",
]
