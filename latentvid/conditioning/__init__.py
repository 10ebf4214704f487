"""Conditioning: frozen open_clip text tower and caption dropout for classifier-free guidance."""

from latentvid.conditioning.text import (
    OpenCLIPTextEncoder,
    RandomTextTowerWarning,
    caption_dropout,
    token_mask,
)

__all__ = ["OpenCLIPTextEncoder", "RandomTextTowerWarning", "caption_dropout", "token_mask"]
