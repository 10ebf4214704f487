"""The behaviour every frozen pretrained text tower shares (``HFCLIPTextEncoder``, ``T5TextEncoder``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentvid.conditioning.caption_cache import CaptionCache


def local_folder(path: str, subfolder: str | None, markers: Sequence[str], what: str, layout: str) -> Path:
    """``path/subfolder``, or FileNotFoundError naming it when none of ``markers`` is a file there.

    ``what`` names the part (e.g. "T5 tokenizer"); ``layout`` tells which folder ``path`` should be and how to
    get one (nothing downloads at run time)."""
    folder = Path(path).expanduser()
    if subfolder:
        folder = folder / subfolder
    if not any((folder / m).is_file() for m in markers):
        raise FileNotFoundError(f"no {what} at {folder} ({' / '.join(markers)} not found). {layout}")
    return folder


class FrozenTower(nn.Module):
    """A frozen feature extractor with a caption cache in ``self._cache`` (:class:`CaptionCache`):
    it stays in eval mode whatever its parent asks, and forgets cached embeddings whenever its
    weights, device or dtype change (they would be stale)."""

    def train(self, mode: bool = True) -> FrozenTower:
        return super().train(False)

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenTower:
        if hasattr(self, "_cache"):  # cached embeddings would be on the old device / dtype
            self._cache.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        if hasattr(self, "_cache"):
            self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)


class PretrainedTextTower(FrozenTower):
    """A transformers text encoder (``self.model``) and its tokenizer, frozen, behind a caption cache.

    Subclasses load both, set ``max_length`` and ``mask_padding``, call :meth:`freeze`, and define
    ``output_dim``, ``tokenize(captions) -> (ids, real)`` and ``encode_tokens(ids, real) -> features``;
    ``forward`` is shared."""

    max_length: int
    mask_padding: bool

    def freeze(self, path: str, cache_size: int) -> None:
        """Record the source folder, freeze the encoder and start the cache (the end of ``__init__``)."""
        self.path = str(path)
        self.cache_size = cache_size
        self.is_random = False  # weights come from a file: left out of LatentDiffusion checkpoints
        self.model.requires_grad_(False)
        self.model.eval()
        self._cache = CaptionCache(cache_size)

    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Encode captions (cached per caption).

        Args:
            captions: ``B`` strings (``""`` is the unconditional caption).

        Returns:
            context ``(B, L, D)`` features and context_mask ``(B, L)`` bool on the module's device (all True
            unless ``mask_padding``), L = ``max_length``.
        """
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"captions must be a list of str, got {type(captions).__name__}: {captions!r:.80}")
        captions = list(captions)
        weight = self.model.get_input_embeddings().weight
        if not captions:
            return weight.new_zeros(0, self.max_length, self.output_dim), torch.zeros(
                0, self.max_length, dtype=torch.bool, device=weight.device)

        def encode(missing: list[str]) -> tuple[Tensor, Tensor]:
            tokens, real = self.tokenize(missing)  # (N, L) each, on the CPU
            features = self.encode_tokens(tokens, real)  # (N, L, D)
            real = real.to(features.device)
            return features, real if self.mask_padding else torch.ones_like(real)

        return self._cache(captions, encode)  # (B, L, D), (B, L)
