"""Causal 3D VAE: video (B, 3, T, H, W) <-> latents (B, C, 1 + (T - 1) / tf, H / sf, W / sf).

Causal in time: latent frame j depends only on input frames <= the last frame it summarises, and
decoded frame i only on latent frames up to the one that covers it. Frame 0 is always encoded on
its own, so an image (T = 1) is a one-frame video with one latent frame, and a clip of
``1 + k * tf`` frames maps to ``1 + k`` latent frames (the CogVideoX / Open-Sora layout).

Causality comes from three rules that every layer here follows:

* time convolutions pad only on the past side (``CausalConv3d``);
* normalisation and attention work per frame (time folded into the batch), never across time;
* temporal down-sampling is a stride-2 causal convolution (output 0 sees frame 0 only) and
  temporal up-sampling turns each latent frame into two frames but drops the first copy of
  frame 0.

Because of them a long clip can be encoded or decoded in temporal chunks, carrying each causal
convolution's last input frames over as a cache, with the same result as one pass. Large frames
can be processed in overlapping spatial tiles cross-faded linearly (``blend_tiles``): exact for
the local variant (``norm="rms"``, no attention) when the overlap covers the receptive field,
approximate with GroupNorm or attention, whose statistics / context then span one tile only.

The layers and their streaming protocol ``layer(x, cache) -> (y, new_cache)`` are in
``causal.py``, chunking and tiling in ``tiling.py``, the posterior and the latent scale / shift
in ``gaussian_autoencoder.py``; this file assembles the encoder, the decoder and the VAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from latentvid.nn.causal import (
    NORMS,
    CausalConv3d,
    CausalResBlock,
    CausalSequential,
    CausalUpsample,
    FrameAttention,
    FrameConv,
    NormAct,
    TimeDownsample,
    TimeUpsample,
)
from latentvid.nn.gaussian_autoencoder import DiagonalGaussian, GaussianAutoencoder
from latentvid.nn.tiling import blend_tiles, chunk_bounds, tile_starts


def _mid_block(channels: int, attention: bool, norm: str) -> list[nn.Module]:
    """ResBlock, optional per-frame attention, ResBlock."""
    layers: list[nn.Module] = [CausalResBlock(channels, channels, norm)]
    if attention:
        layers.append(FrameAttention(channels, norm))
    layers.append(CausalResBlock(channels, channels, norm))
    return layers


BLOCKS = ("resnet", "factorized")


def _frame_convs(c_in: int, c_out: int, count: int, norm: str) -> list[nn.Module]:
    """``count`` x (per-frame 3x3 conv, norm, SiLU), the first mapping c_in -> c_out."""
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [FrameConv(c_in, c_out), NormAct(c_out, norm)]
        c_in = c_out
    return layers


class CausalEncoder(CausalSequential):
    """Video (B, in_channels, T, H, W) -> posterior moments (B, 2 * latent_channels, t, h, w).

    ``t = 1 + (T - 1) / tf``, ``h = H / sf``, ``w = W / sf``; the first half of the output
    channels is the mean, the second the log-variance.

    Two layouts (``block``):

    * ``"resnet"`` (CogVideoX / Open-Sora style): causal 3x3x3 residual blocks per level, a
      stride-2 causal 3x3x3 down-sampler between levels, a mid block of two residual blocks.
    * ``"factorized"``: per-frame 3x3 convs (+ norm + SiLU) per level, a 4x4 stride-2 per-frame
      down-sampler between levels followed, where time is halved, by a (3, 1, 1) causal conv of
      stride 2. Frames mix only at those temporal down-samplers: far fewer FLOPs, and on small
      data it trains several times faster than "resnet" (see configs/vae.yaml).

    Args:
        in_channels: video channels.
        latent_channels: latent channels C.
        base_channels: width of the first level.
        channel_mult: width multiplier per level; a stride-2 down-sampler follows every level but
            the last.
        temporal_downsample: per level, whether its down-sampler also halves time (last must be False).
        num_res_blocks: residual blocks ("resnet") or conv layers ("factorized") per level.
        mid_attention: add per-frame self-attention in the middle (at the lowest resolution).
        norm: "group" (per-frame GroupNorm), "rms" (per-position channel RMS norm) or "none".
        block: "resnet" or "factorized" (see above).
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        temporal_downsample: Sequence[bool],
        num_res_blocks: int,
        mid_attention: bool,
        norm: str = "group",
        block: str = "resnet",
    ) -> None:
        factorized = block == "factorized"
        if factorized:
            layers: list[nn.Module] = [FrameConv(in_channels, base_channels), NormAct(base_channels, norm)]
        else:
            layers = [CausalConv3d(in_channels, base_channels, 3)]
        channels = base_channels
        for level, mult in enumerate(channel_mult):
            if factorized:
                layers += _frame_convs(channels, base_channels * mult, num_res_blocks, norm)
            else:
                layers += [CausalResBlock(channels if i == 0 else base_channels * mult, base_channels * mult, norm)
                           for i in range(num_res_blocks)]
            channels = base_channels * mult
            if level == len(channel_mult) - 1:
                continue
            if factorized:
                layers += [FrameConv(channels, channels, resample="down"), NormAct(channels, norm)]
                if temporal_downsample[level]:
                    layers += [TimeDownsample(channels), NormAct(channels, norm)]
            else:
                stride_t = 2 if temporal_downsample[level] else 1
                layers.append(CausalConv3d(channels, channels, 3, stride=(stride_t, 2, 2)))
        if factorized:
            layers += [FrameAttention(channels, norm)] if mid_attention else []
            layers.append(FrameConv(channels, 2 * latent_channels))
        else:
            layers += _mid_block(channels, mid_attention, norm)
            layers += [NormAct(channels, norm), CausalConv3d(channels, 2 * latent_channels, 3)]
        super().__init__(layers)


class CausalDecoder(CausalSequential):
    """Latents (B, latent_channels, t, h, w) -> video (B, out_channels, 1 + (t - 1) * tf, h * sf, w * sf).

    Mirrors ``CausalEncoder``; the arguments have the same meaning (``out_channels`` = video
    channels). "factorized" up-samples time first (a (3, 1, 1) causal conv to 2C channels split into
    two frames, ``TimeUpsample``), then space (a 4x4 stride-2 transposed per-frame conv).
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: Sequence[int],
        temporal_downsample: Sequence[bool],
        num_res_blocks: int,
        mid_attention: bool,
        norm: str = "group",
        block: str = "resnet",
    ) -> None:
        factorized = block == "factorized"
        channels = base_channels * channel_mult[-1]
        if factorized:
            layers: list[nn.Module] = [FrameConv(latent_channels, channels), NormAct(channels, norm)]
            layers += [FrameAttention(channels, norm)] if mid_attention else []
        else:
            layers = [CausalConv3d(latent_channels, channels, 3)]
            layers += _mid_block(channels, mid_attention, norm)
        for level in reversed(range(len(channel_mult))):
            width = base_channels * channel_mult[level]
            if factorized:
                layers += _frame_convs(channels, width, num_res_blocks, norm)
            else:
                layers += [CausalResBlock(channels if i == 0 else width, width, norm) for i in range(num_res_blocks)]
            channels = width
            if level == 0:
                continue
            if factorized:
                if temporal_downsample[level - 1]:
                    layers += [TimeUpsample(channels), NormAct(channels, norm)]
                layers += [FrameConv(channels, channels, resample="up"), NormAct(channels, norm)]
            else:
                layers.append(CausalUpsample(channels, temporal=temporal_downsample[level - 1]))
        if factorized:
            layers.append(FrameConv(channels, out_channels))
        else:
            layers += [NormAct(channels, norm), CausalConv3d(channels, out_channels, 3)]
        super().__init__(layers)


class CausalVAE3D(GaussianAutoencoder):
    """Causal 3D VAE with KL-regularised diagonal Gaussian latents.

    Video (B, in_channels, T, H, W) in [-1, 1] with T = 1 + k * temporal_factor and H, W divisible
    by spatial_factor <-> latents (B, latent_channels, 1 + k, H / sf, W / sf).

    ``encode`` / ``decode`` speak *scaled* latents ``(z - shift) * scale`` (the ``FirstStage``
    contract); ``encode_posterior`` / ``decode_raw`` speak raw ones. ``scale`` and ``shift`` are
    buffers, so they are saved in and restored from the checkpoint; ``estimate_scale`` sets them.

    Args:
        in_channels: video channels (3 for RGB).
        latent_channels: latent channels C.
        base_channels: width of the first encoder level (and last decoder level).
        channel_mult: width multiplier per level; ``spatial_factor = 2 ** (len(channel_mult) - 1)``.
        temporal_downsample: one flag per level: whether the down-sampler after that level also
            halves time; the last level has no down-sampler, so its flag must be False.
            ``temporal_factor = 2 ** sum(temporal_downsample)``.
        num_res_blocks: residual blocks ("resnet") or conv layers ("factorized") per level in
            encoder and decoder.
        mid_attention: per-frame spatial self-attention in the middle blocks.
        scale: latent scale (1 / std of raw latents), used when no checkpoint overrides it.
        shift: latent shift (mean of raw latents), used when no checkpoint overrides it.
        chunk_frames: when set, clips longer than ``1 + chunk_frames`` frames are encoded in
            temporal chunks (first ``1 + chunk_frames`` frames, then ``chunk_frames`` at a time;
            decoding uses the matching latent chunks). Must be a multiple of ``temporal_factor``.
            Same result as one pass, less memory.
        tile_size: when set, frames taller or wider than this are encoded in overlapping square
            tiles of this many pixels (decoding uses ``tile_size / spatial_factor`` latent tiles).
            Must be a multiple of ``spatial_factor``. Approximate: see ``tiled_encode``.
        tile_overlap: pixels shared by neighbouring tiles: the outer quarter on each side is
            dropped, the middle half cross-faded linearly (see ``blend_tiles``). Must be a
            multiple of ``spatial_factor`` and smaller than ``tile_size``.
        norm: "group" (per-frame GroupNorm, the usual VAE choice), "rms" (per-position channel
            RMS norm) or "none"; with "rms" / "none" and no mid attention the network is local, so
            tiling is exact once ``tile_overlap / 4`` covers its receptive field.
        block: layer layout, "resnet" (causal 3x3x3 residual blocks, CogVideoX style) or
            "factorized" (per-frame 2D convs, frames mixed only by causal temporal down / up
            samplers; see ``CausalEncoder``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        temporal_downsample: tuple[bool, ...] = (True, True, False),
        num_res_blocks: int = 1,
        mid_attention: bool = False,
        scale: float = 1.0,
        shift: float = 0.0,
        chunk_frames: int | None = None,
        tile_size: int | None = None,
        tile_overlap: int = 8,
        norm: str = "group",
        block: str = "resnet",
    ) -> None:
        super().__init__(scale, shift)
        channel_mult, temporal_downsample = tuple(channel_mult), tuple(bool(f) for f in temporal_downsample)
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {channel_mult!r}")
        if len(temporal_downsample) != len(channel_mult) or temporal_downsample[-1]:
            raise ValueError(
                f"temporal_downsample={temporal_downsample!r} needs one flag per level of "
                f"channel_mult={channel_mult!r}, the last False (the last level has no down-sampler)"
            )
        for name, value in (("in_channels", in_channels), ("latent_channels", latent_channels),
                            ("base_channels", base_channels), ("num_res_blocks", num_res_blocks)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.block = block
        self.spatial_factor = 2 ** (len(channel_mult) - 1)
        self.temporal_factor = 2 ** sum(temporal_downsample)
        self.chunk_frames = chunk_frames
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        if chunk_frames is not None:
            self._check_chunk_frames(chunk_frames)
        if tile_size is not None:
            self._check_tiles(tile_size, tile_overlap)
        arch = (latent_channels, base_channels, channel_mult, temporal_downsample, num_res_blocks, mid_attention, norm,
                block)
        self.encoder = CausalEncoder(in_channels, *arch)
        self.decoder = CausalDecoder(in_channels, *arch)

    # ---- argument checks -------------------------------------------------------------------

    def _check_chunk_frames(self, chunk_frames: int) -> None:
        if chunk_frames < 1 or chunk_frames % self.temporal_factor:
            raise ValueError(
                f"chunk_frames={chunk_frames} must be a positive multiple of the temporal factor "
                f"{self.temporal_factor}"
            )

    def _check_tiles(self, tile_size: int, tile_overlap: int) -> None:
        sf = self.spatial_factor
        if tile_size < 1 or tile_size % sf:
            raise ValueError(f"tile_size={tile_size} must be a positive multiple of the spatial factor {sf}")
        if tile_overlap < 0 or tile_overlap % sf or tile_overlap >= tile_size:
            raise ValueError(
                f"tile_overlap={tile_overlap} must be a multiple of the spatial factor {sf} in [0, tile_size={tile_size})"
            )

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise ValueError(
                f"expected video (B, {self.in_channels}, T, H, W), got shape {tuple(video.shape)}"
            )
        self.latent_frames(video.shape[2])  # raises on a frame count that does not fit
        h, w = video.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"frame size {h}x{w} is not divisible by the spatial factor {self.spatial_factor}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, t, h, w), got shape {tuple(z.shape)}")

    # ---- encode ------------------------------------------------------------------------------

    def _encode_moments(self, video: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
        """(B, 3, T, H, W) -> moments (B, 2C, t, h, w); chunked in time when the clip is long."""
        if chunk_frames is None or video.shape[2] <= 1 + chunk_frames:
            return self.encoder(video)[0]
        cache, outs = None, []
        for start, stop in chunk_bounds(video.shape[2], 1 + chunk_frames, chunk_frames):
            out, cache = self.encoder(video[:, :, start:stop], cache)
            outs.append(out)
        return torch.cat(outs, dim=2)

    def chunked_encode(self, video: torch.Tensor, chunk_frames: int) -> DiagonalGaussian:
        """Encode (B, 3, T, H, W) in temporal chunks carrying causal caches -> raw posterior over
        (B, C, t, h, w). Chunks: the first ``1 + chunk_frames`` frames, then ``chunk_frames`` at a time.
        Equals the one-pass result up to float rounding."""
        self._check_video(video)
        self._check_chunk_frames(chunk_frames)
        return DiagonalGaussian.from_moments(self._encode_moments(video, chunk_frames))

    def tiled_encode(
        self, video: torch.Tensor, tile_size: int, tile_overlap: int, chunk_frames: int | None = None
    ) -> DiagonalGaussian:
        """Encode (B, 3, T, H, W) in overlapping spatial tiles -> raw posterior over (B, C, t, h, w).

        Each ``tile_size`` square is encoded alone (optionally in temporal chunks) and the
        moments are blended (``blend_tiles``) over ``tile_overlap / spatial_factor`` latent pixels.
        Exact for a local network (``norm="rms"``, no mid attention) whose receptive field fits
        in a quarter of the overlap; otherwise approximate, since a tile's GroupNorm statistics
        and attention see only the tile.
        """
        self._check_video(video)
        self._check_tiles(tile_size, tile_overlap)
        sf = self.spatial_factor
        height, width = video.shape[-2:]
        tiles = []
        for top in tile_starts(height, tile_size, tile_overlap):
            for left in tile_starts(width, tile_size, tile_overlap):
                crop = video[..., top : top + tile_size, left : left + tile_size]
                tiles.append((self._encode_moments(crop, chunk_frames), top // sf, left // sf))
        moments = blend_tiles(tiles, height // sf, width // sf, tile_overlap // sf)
        return DiagonalGaussian.from_moments(moments)

    def encode_posterior(self, video: torch.Tensor) -> DiagonalGaussian:
        """Video (B, 3, T, H, W) -> raw (unscaled) posterior over (B, C, 1 + (T - 1) / tf, H / sf, W / sf).

        Tiles when a side exceeds ``tile_size`` and chunks when T exceeds ``1 + chunk_frames``.
        """
        self._check_video(video)
        if self.tile_size is not None and max(video.shape[-2:]) > self.tile_size:
            return self.tiled_encode(video, self.tile_size, self.tile_overlap, self.chunk_frames)
        return DiagonalGaussian.from_moments(self._encode_moments(video, self.chunk_frames))

    # ---- decode ------------------------------------------------------------------------------

    def _decode_frames(self, z: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> (B, 3, T, H, W); chunked in time when long."""
        latent_chunk = None if chunk_frames is None else chunk_frames // self.temporal_factor
        if latent_chunk is None or z.shape[2] <= 1 + latent_chunk:
            return self.decoder(z)[0]
        cache, outs = None, []
        for start, stop in chunk_bounds(z.shape[2], 1 + latent_chunk, latent_chunk):
            out, cache = self.decoder(z[:, :, start:stop], cache)
            outs.append(out)
        return torch.cat(outs, dim=2)

    def chunked_decode(self, z: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> video (B, 3, T, H, W), decoding ``chunk_frames / tf``
        latent frames at a time (after a first chunk of ``1 + chunk_frames / tf``) with causal caches.
        Equals the one-pass result up to float rounding."""
        self._check_latents(z)
        self._check_chunk_frames(chunk_frames)
        return self._decode_frames(z, chunk_frames)

    def tiled_decode(
        self, z: torch.Tensor, tile_size: int, tile_overlap: int, chunk_frames: int | None = None
    ) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> video (B, 3, T, H, W) from overlapping latent tiles of
        ``tile_size / sf`` (overlap ``tile_overlap / sf``), blended over ``tile_overlap`` pixels.
        Approximate, like ``tiled_encode``."""
        self._check_latents(z)
        self._check_tiles(tile_size, tile_overlap)
        sf = self.spatial_factor
        tile, overlap = tile_size // sf, tile_overlap // sf
        height, width = z.shape[-2:]
        tiles = []
        for top in tile_starts(height, tile, overlap):
            for left in tile_starts(width, tile, overlap):
                crop = z[..., top : top + tile, left : left + tile]
                tiles.append((self._decode_frames(crop, chunk_frames), top * sf, left * sf))
        return blend_tiles(tiles, height * sf, width * sf, tile_overlap)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, t, h, w) -> video (B, 3, 1 + (t - 1) * tf, h * sf, w * sf).

        Tiles and chunks as configured (see ``encode_posterior``).
        """
        self._check_latents(z)
        if self.tile_size is not None and max(z.shape[-2:]) > self.tile_size // self.spatial_factor:
            return self.tiled_decode(z, self.tile_size, self.tile_overlap, self.chunk_frames)
        return self._decode_frames(z, self.chunk_frames)
