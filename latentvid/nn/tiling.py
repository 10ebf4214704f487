"""Temporal chunks and overlapping spatial tiles, and the linear cross-fade that blends tiles.

``CausalVAE3D`` encodes and decodes long clips in temporal chunks (``chunk_bounds``) and large
frames in overlapping tiles (``tile_starts``) cross-faded by ``blend_tiles``: exact for a local
network when the overlap covers its receptive field, approximate with GroupNorm or attention,
whose statistics / context then span one tile only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

def chunk_bounds(total: int, first: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) frame ranges: the first ``first`` frames, then runs of ``size`` (last may be shorter)."""
    bounds = [(0, min(first, total))]
    while bounds[-1][1] < total:
        start = bounds[-1][1]
        bounds.append((start, min(start + size, total)))
    return bounds


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared.

    Tiles step by ``tile - overlap``; the last one is moved back to end exactly at ``size`` (so it
    may overlap more). One tile (start 0) when ``size <= tile``.
    """
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramp(start: int, length: int, size: int, overlap: int) -> torch.Tensor:
    """1D blending weight (length,) of a tile at ``start`` on an axis of ``size``.

    On a side that borders another tile, the outer quarter of the overlap gets weight 0 (those
    outputs saw the tile's zero padding instead of real neighbours), the middle half ramps
    linearly up, the rest is 1. Image borders keep weight 1.
    """
    weight = torch.ones(length)
    margin = overlap // 4
    ramp_len = overlap - 2 * margin
    side = torch.cat([torch.zeros(margin), torch.arange(1, ramp_len + 1, dtype=torch.float32) / (ramp_len + 1)])
    if start > 0 and len(side):
        weight[: len(side)] = torch.minimum(weight[: len(side)], side)
    if start + length < size and len(side):
        weight[-len(side) :] = torch.minimum(weight[-len(side) :], side.flip(0))
    return weight


def blend_tiles(tiles: Sequence[tuple[torch.Tensor, int, int]], height: int, width: int, overlap: int) -> torch.Tensor:
    """Weighted average of overlapping tiles: linear cross-fades in the middle of shared edges.

    Args:
        tiles: (tile (B, C, T, th, tw), top, left) triples that together cover the output, laid
            out as ``tile_starts`` does (neighbours share at least ``overlap`` pixels).
        height, width: output size.
        overlap: pixels (of this grid) shared by neighbouring tiles. On each shared edge the
            outer ``overlap // 4`` pixels of a tile are ignored and the middle half is cross-faded
            (see ``_ramp``), so a network whose outputs depend on inputs within
            ``overlap // 4`` pixels (and on nothing global) is reproduced exactly.

    Returns:
        (B, C, T, height, width). Weights are normalised per pixel, so blending crops of one
        tensor gives that tensor back exactly.
    """
    first = tiles[0][0]
    out = first.new_zeros(*first.shape[:3], height, width)
    total = torch.zeros(height, width, dtype=first.dtype, device=first.device)
    for tile, top, left in tiles:
        th, tw = tile.shape[-2:]
        weight = torch.outer(_ramp(top, th, height, overlap), _ramp(left, tw, width, overlap))  # (th, tw)
        weight = weight.to(device=tile.device, dtype=tile.dtype)
        out[..., top : top + th, left : left + tw] += tile * weight
        total[top : top + th, left : left + tw] += weight
    if bool((total <= 0).any()):
        raise ValueError("blend_tiles: the tiles do not cover the whole output with positive weight")
    return out / total
