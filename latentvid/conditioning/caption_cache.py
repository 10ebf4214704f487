"""An LRU cache of per-caption text features, shared by the frozen text encoders.

A frozen tower gives the same features for the same caption every time, and training captions
repeat (the same clip every epoch, the empty caption of classifier-free guidance in every batch),
so encoding each distinct caption once saves most of the tower's cost.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["CaptionCache"]

Encode = Callable[[list[str]], tuple[Tensor, Tensor]]


class CaptionCache:
    """Keeps ``(features (L, D), mask (L,))`` for up to ``size`` captions, least recently used out.

    Args:
        size: how many captions to keep; 0 keeps none (every call encodes).
    """

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"cache_size must be >= 0, got cache_size={size}")
        self.size = size
        self._entries: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (call when the tower's device or dtype changes)."""
        self._entries.clear()

    def __call__(self, captions: Sequence[str], encode: Encode) -> tuple[Tensor, Tensor]:
        """Features of ``captions`` (B strings), calling ``encode`` once for those not cached.

        ``encode(missing)`` takes N distinct captions and returns features (N, L, D) and mask (N, L).
        Returns (B, L, D) and (B, L), fresh tensors: callers may modify them, and entries cached
        under ``torch.inference_mode`` (e.g. Lightning's validation) come back usable for backward.
        """
        found: dict[str, tuple[Tensor, Tensor]] = {}
        for caption in dict.fromkeys(captions):
            if caption in self._entries:
                self._entries.move_to_end(caption)
                found[caption] = self._entries[caption]
        missing = [c for c in dict.fromkeys(captions) if c not in found]
        if missing:
            features, mask = encode(missing)
            mask = mask.to(features.device)
            for i, caption in enumerate(missing):
                found[caption] = (features[i].clone(), mask[i].clone())  # clone: a row would pin the batch
                if self.size > 0:
                    self._entries[caption] = found[caption]
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        context = torch.stack([found[c][0] for c in captions])  # (B, L, D)
        context_mask = torch.stack([found[c][1] for c in captions])  # (B, L)
        return context, context_mask
