"""Tests of latentvid/nn/tiling.py: chunk ranges, tile offsets, blending crops back exactly."""

from __future__ import annotations

import pytest
import torch

from latentvid.nn.tiling import blend_tiles, chunk_bounds, tile_starts


def test_chunk_bounds_first_then_fixed_size() -> None:
    assert chunk_bounds(13, 5, 4) == [(0, 5), (5, 9), (9, 13)]
    assert chunk_bounds(11, 5, 4) == [(0, 5), (5, 9), (9, 11)]  # the last chunk is shorter
    assert chunk_bounds(3, 5, 4) == [(0, 3)]


@pytest.mark.parametrize(("size", "tile", "overlap"), [(37, 16, 8), (53, 16, 4), (16, 16, 8), (40, 24, 20)])
def test_blending_crops_of_one_tensor_is_exact(size: int, tile: int, overlap: int) -> None:
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    torch.manual_seed(5)
    x = torch.randn(2, 3, 2, size, size + 5)
    tiles = [
        (x[..., top : top + tile, left : left + tile], top, left)
        for top in starts
        for left in tile_starts(size + 5, tile, overlap)
    ]
    torch.testing.assert_close(blend_tiles(tiles, size, size + 5, overlap), x, atol=1e-5, rtol=0)
