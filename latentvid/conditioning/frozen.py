"""The behaviour every frozen pretrained text tower shares (``HFCLIPTextEncoder``, ``T5TextEncoder``)."""

from __future__ import annotations

from typing import Any

from torch import nn


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
