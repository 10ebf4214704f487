"""The text encoder of a diffusers-format Stable Diffusion folder, behind latentvid's text-encoder interface.

A Stable Diffusion folder keeps its text tower as a transformers ``CLIPTextModel`` in
``text_encoder/`` and its BPE tokenizer in ``tokenizer/`` (SD 1.x: OpenAI CLIP ViT-L/14; SD 2.x:
OpenCLIP ViT-H/14 converted to the transformers layout). :class:`HFCLIPTextEncoder` loads both
from there (nothing downloads) and encodes captions exactly as diffusers' Stable Diffusion
pipelines do: padded to the tokenizer's 77 tokens, and the per-token features of the last layer
after ``final_layer_norm``. SD 2.x's converted tower already ends one block early (23 of
OpenCLIP's 24 blocks), so its "last" layer *is* the penultimate layer SD 2.x was trained on;
``layer="penultimate"`` is diffusers' ``clip_skip=1`` (one more block skipped, then the final norm).

Stable Diffusion was trained attending to all 77 positions, padding included, so by default the
mask is all True; ``mask_padding=True`` masks the positions after the end-of-text token instead.

With the original OpenCLIP ViT-H-14 checkpoint (``open_clip_pytorch_model.bin``) use
:class:`latentvid.conditioning.text.OpenCLIPTextEncoder` with ``layer="penultimate"`` instead.

Needs the optional ``transformers`` dependency: ``pip install "latentvid[sd]"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from latentvid.conditioning.frozen import PretrainedTextTower, local_folder

LAYERS = ("last", "penultimate")


def _import_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "HFCLIPTextEncoder needs the transformers package: pip install \"latentvid[sd]\" "
            "(or pip install 'transformers>=4.40')"
        ) from err
    return transformers


SD_LAYOUT = ("Point `path` at a local diffusers-format Stable Diffusion folder (text_encoder/ and tokenizer/ "
             "beside unet/, vae/, scheduler/), e.g. `huggingface-cli download <repo> --local-dir <dir>` on a machine "
             "with internet.")


class HFCLIPTextEncoder(PretrainedTextTower):
    """Frozen transformers ``CLIPTextModel`` + ``CLIPTokenizer`` from a Stable Diffusion folder.

    ``forward(captions)`` returns ``context (B, L, D)`` and ``context_mask (B, L)`` like
    :class:`~latentvid.conditioning.text.OpenCLIPTextEncoder`; the module is frozen (no grad, always
    eval) and keeps an LRU cache of recent captions' embeddings (cleared on device / dtype moves and
    state-dict loads).

    Args:
        path: local diffusers-format model folder holding ``text_encoder/`` and ``tokenizer/``.
        text_encoder_subfolder: subfolder with the ``CLIPTextModel`` (config.json + weights).
        tokenizer_subfolder: subfolder with the tokenizer (vocab.json, merges.txt, tokenizer_config.json).
        layer: ``"last"`` (as the SD pipelines and SD's training) or ``"penultimate"`` (diffusers'
            ``clip_skip=1``); both pass through ``final_layer_norm``.
        max_length: context length L; None = the tokenizer's ``model_max_length`` (77 for SD). A
            shorter L changes how many padding tokens the U-Net sees, so keep SD's for fidelity.
        mask_padding: mask the positions after the end-of-text token (False = all True, as SD trained).
        cache_size: how many captions' embeddings the LRU cache keeps; 0 disables it.
    """

    def __init__(
        self,
        path: str,
        text_encoder_subfolder: str | None = "text_encoder",
        tokenizer_subfolder: str | None = "tokenizer",
        layer: str = "last",
        max_length: int | None = None,
        mask_padding: bool = False,
        cache_size: int = 1024,
    ) -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got layer={layer!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got cache_size={cache_size}")
        transformers = _import_transformers()
        enc_dir = local_folder(path, text_encoder_subfolder, ("config.json",), "CLIP text encoder", SD_LAYOUT)
        tok_dir = local_folder(path, tokenizer_subfolder, ("tokenizer_config.json",), "CLIP tokenizer", SD_LAYOUT)
        try:
            self.model = transformers.CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True)
            self.tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(f"could not load the CLIP text encoder / tokenizer from {path}: {err}") from err
        self.layer = layer
        self.max_length = int(max_length or self.tokenizer.model_max_length)
        positions = int(self.model.config.max_position_embeddings)
        if not 2 <= self.max_length <= positions:
            raise ValueError(f"max_length must lie in [2, {positions}] (the encoder's positions), "
                             f"got {self.max_length}")
        if layer == "penultimate" and self.model.config.num_hidden_layers < 2:
            raise ValueError("layer='penultimate' needs a text encoder with >= 2 layers")
        self.mask_padding = mask_padding
        self.freeze(path, cache_size)

    @property
    def output_dim(self) -> int:
        """Embedding width D of the per-token features."""
        return int(self.model.config.hidden_size)

    def extra_repr(self) -> str:
        return (f"path={self.path!r}, layer={self.layer!r}, max_length={self.max_length}, "
                f"mask_padding={self.mask_padding}")

    def tokenize(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions -> token ids (B, L) long and the real-token mask (B, L) bool (SOT..EOT), on CPU."""
        enc = self.tokenizer(list(captions), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        return enc.input_ids, enc.attention_mask.bool()

    @torch.no_grad()
    def encode_tokens(self, tokens: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """Token ids (B, L) -> features (B, L, D) after ``final_layer_norm``, without the cache.

        ``token_mask`` (B, L) is passed to the encoder only when its config sets ``use_attention_mask``
        (as diffusers' pipelines do).
        """
        device = self.model.get_input_embeddings().weight.device
        mask = None
        if token_mask is not None and getattr(self.model.config, "use_attention_mask", False):
            mask = token_mask.to(device).long()
        if self.layer == "last":
            return self.model(tokens.to(device), attention_mask=mask).last_hidden_state
        out = self.model(tokens.to(device), attention_mask=mask, output_hidden_states=True)
        text_model = getattr(self.model, "text_model", self.model)  # transformers 4.x nests it, 5.x does not
        return text_model.final_layer_norm(out.hidden_states[-2])
