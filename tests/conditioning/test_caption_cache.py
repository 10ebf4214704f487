"""CaptionCache: encodes each distinct missing caption once, evicts least recently used first."""

from __future__ import annotations

import pytest
import torch

from latentvid.conditioning.caption_cache import CaptionCache


class Tower:
    """A stand-in encoder: caption -> its length repeated, recording every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(captions))
        feats = torch.tensor([[float(len(c))] * 3 for c in captions]).view(len(captions), 1, 3)  # (N, 1, 3)
        return feats, torch.ones(len(captions), 1, dtype=torch.bool)


def test_encodes_each_distinct_missing_caption_once_and_keeps_order():
    cache, tower = CaptionCache(8), Tower()
    ctx, mask = cache(["ab", "", "ab", "abc"], tower)
    assert tower.calls == [["ab", "", "abc"]]
    assert ctx.shape == (4, 1, 3) and mask.shape == (4, 1) and mask.all()
    assert ctx[:, 0, 0].tolist() == [2.0, 0.0, 2.0, 3.0]
    cache(["abc", "x"], tower)
    assert tower.calls[-1] == ["x"]


def test_least_recently_used_goes_first():
    cache, tower = CaptionCache(2), Tower()
    cache(["a", "bb"], tower)
    cache(["a"], tower)  # touch "a": "bb" is now the oldest
    cache(["ccc"], tower)
    assert len(cache) == 2
    cache(["a", "bb"], tower)
    assert tower.calls[-1] == ["bb"]


def test_size_zero_keeps_nothing_and_outputs_are_fresh():
    cache, tower = CaptionCache(0), Tower()
    cache(["a"], tower)
    cache(["a"], tower)
    assert tower.calls == [["a"], ["a"]] and len(cache) == 0
    kept = CaptionCache(4)
    ctx, _ = kept(["a"], tower)
    ctx.add_(100.0)  # a caller's in-place edit must not reach the cache
    assert kept(["a"], tower)[0][0, 0, 0].item() == 1.0
    with pytest.raises(ValueError, match="cache_size"):
        CaptionCache(-1)
