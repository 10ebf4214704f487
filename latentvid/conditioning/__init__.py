"""Conditioning: frozen text towers (open_clip; a Stable Diffusion folder's transformers CLIP) and
caption dropout for classifier-free guidance."""

from latentvid.conditioning.hf_clip import HFCLIPTextEncoder
from latentvid.conditioning.text import (
    OpenCLIPTextEncoder,
    RandomTextTowerWarning,
    caption_dropout,
    token_mask,
)

__all__ = ["HFCLIPTextEncoder", "OpenCLIPTextEncoder", "RandomTextTowerWarning", "caption_dropout", "token_mask"]
