"""The T5 / UMT5 text encoders of the diffusers video pipelines, behind latentvid's text-encoder interface.

Wan 2.1 / 2.2 keep a transformers ``UMT5EncoderModel`` in ``text_encoder/``, CogVideoX and LTX-Video a
``T5EncoderModel``; each has its tokenizer in ``tokenizer/``. :class:`T5TextEncoder` loads both from a
local pipeline folder (nothing downloads) and encodes captions the way each pipeline does:

=============  ==========  =======================  ==============================================
pipeline       max_length  encoder sees the mask    what the denoiser gets
=============  ==========  =======================  ==============================================
Wan            512         yes                      padding zeroed, all tokens attended
CogVideoX      226         no                       all tokens, as encoded, all attended
LTX-Video      128         no                       the features and the real-token mask
=============  ==========  =======================  ==============================================

``use_attention_mask`` is the middle column; ``mask_padding=True`` returns the real-token mask
(False: all True). What a denoiser does with masked tokens is the denoiser wrapper's business
(:mod:`latentvid.nn.video_transformers`: Wan zeroes them, LTX-Video passes the mask on), so one
encoder serves all three. ``clean=True`` applies Wan's prompt cleaning (HTML unescaping, ftfy when
installed, whitespace collapsed).

Needs the optional ``transformers`` dependency: ``pip install "latentvid[video]"``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from latentvid.conditioning.frozen import PretrainedTextTower, local_folder

MODEL_TYPES = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel"}
"""config.json ``model_type`` -> the transformers encoder class that loads it."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy (when installed), HTML entities unescaped twice, whitespace collapsed."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


VIDEO_LAYOUT = ("Point `path` at a local diffusers video pipeline folder (text_encoder/ and tokenizer/ beside "
                "transformer/, vae/, scheduler/), e.g. `huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
                "--local-dir <dir>` on a machine with internet.")


def read_encoder_class(folder: Path) -> str:
    """The transformers class for ``folder/config.json``'s ``model_type`` (t5 / umt5); ValueError naming the file."""
    file = folder / "config.json"
    try:
        model_type = json.loads(file.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{file}: model_type {model_type!r} is not a T5 encoder; expected one of {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[model_type]


class T5TextEncoder(PretrainedTextTower):
    """Frozen transformers ``T5EncoderModel`` / ``UMT5EncoderModel`` + tokenizer from a pipeline folder.

    ``forward(captions)`` returns ``context (B, L, D)`` and ``context_mask (B, L)`` bool, L = ``max_length``;
    frozen (no grad, always eval) with an LRU cache of recent captions' embeddings.

    Args:
        path: local diffusers pipeline folder holding ``text_encoder/`` and ``tokenizer/``.
        text_encoder_subfolder: subfolder with the encoder (config.json + weights).
        tokenizer_subfolder: subfolder with the tokenizer (tokenizer.json or spiece.model + tokenizer_config.json).
        max_length: tokens per caption (Wan 512, CogVideoX 226, LTX-Video 128), padded and truncated.
        use_attention_mask: the encoder attends to real tokens only (Wan: True; CogVideoX, LTX-Video: False).
        mask_padding: the returned mask marks padding False (False: all True).
        clean: Wan's prompt cleaning before tokenising.
        dtype: the encoder's weights and features, ``"float32"``, ``"bfloat16"`` or ``"float16"``
            (halves the memory of a 5.7 B UMT5-XXL; the features are returned in that dtype).
        cache_size: how many captions' embeddings the LRU cache keeps; 0 disables it.
    """

    def __init__(
        self,
        path: str,
        text_encoder_subfolder: str | None = "text_encoder",
        tokenizer_subfolder: str | None = "tokenizer",
        max_length: int = 512,
        use_attention_mask: bool = True,
        mask_padding: bool = True,
        clean: bool = False,
        dtype: str = "float32",
        cache_size: int = 1024,
    ) -> None:
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got cache_size={cache_size}")
        try:
            import transformers
        except ImportError as err:
            raise ImportError('T5TextEncoder needs the transformers package: pip install "latentvid[video]"') from err
        enc_dir = local_folder(path, text_encoder_subfolder, ("config.json",), "T5 text encoder", VIDEO_LAYOUT)
        tok_dir = local_folder(path, tokenizer_subfolder, ("tokenizer_config.json",), "T5 tokenizer", VIDEO_LAYOUT)
        cls = getattr(transformers, read_encoder_class(enc_dir))
        try:
            self.model = cls.from_pretrained(str(enc_dir), local_files_only=True, dtype=DTYPES[dtype])
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(f"could not load the T5 text encoder / tokenizer from {path}: {err}") from err
        self.max_length = int(max_length)
        self.use_attention_mask = use_attention_mask
        self.mask_padding = mask_padding
        self.clean = clean
        self.freeze(path, cache_size)

    @property
    def output_dim(self) -> int:
        """Embedding width D of the per-token features."""
        return int(self.model.config.d_model)

    def extra_repr(self) -> str:
        return (f"path={self.path!r}, max_length={self.max_length}, use_attention_mask={self.use_attention_mask}, "
                f"mask_padding={self.mask_padding}, clean={self.clean}")

    def tokenize(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions -> token ids (B, L) long and the real-token mask (B, L) bool (end-of-text included), on CPU."""
        texts = [clean_prompt(c) for c in captions] if self.clean else list(captions)
        enc = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return enc.input_ids, enc.attention_mask.bool()

    @torch.no_grad()
    def encode_tokens(self, tokens: Tensor, token_mask: Tensor) -> Tensor:
        """Token ids (B, L) and mask (B, L) -> last-layer features (B, L, D), without the cache."""
        device = self.model.get_input_embeddings().weight.device
        mask = token_mask.to(device).long() if self.use_attention_mask else None
        return self.model(tokens.to(device), attention_mask=mask).last_hidden_state
