"""Resolution x aspect-ratio x length buckets: the clip shape each sample trains at, the batch size
of each shape, and the bucket every training step draws.

One square clip size crops the sides off every wide or tall video and pads every short one. With
buckets each sample trains at the shape nearest its own (Open-Sora's (resolution, frames) buckets,
the W x H x F buckets of musubi-tuner and the CogVideoX / LTX trainers):

* :class:`Bucket`: one clip shape (height, width, frames) and its batch size;
* :class:`BucketSpec`: what a config says (``buckets:`` beside ``clip:`` in a data module): an
  explicit list, or a grid of base sizes x aspect ratios x frame counts. :meth:`BucketSpec.build`
  turns it into buckets whose batch sizes keep the latent tokens per batch about those of the
  reference batch (the data module's ``clip`` x ``batch_size``);
* :func:`assign`: the bucket of a source of ``height x width`` pixels with ``frames`` usable frames:
  enough frames first, then the fewest source pixels cropped away, then the largest size that needs
  no upscaling;
* :class:`BucketPlan`: the bucket of step ``k`` of epoch ``e``, a pure function of ``(seed, e, k)``.
  Every rank draws the same bucket at every step, so DDP / FSDP ranks run the same shapes in
  lockstep, and a resumed run continues the plan from the step it reached.

Only arithmetic on shapes lives here; reading samples into their buckets is
:mod:`latentvid.data.bucket_batches`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentvid.data.clips import crop_box
from latentvid.data.sources import mix_seed

# Buckets whose crop loses at most this much more of the source (as a share of its pixels) than the
# best one count as fitting its aspect ratio equally well: sides rounded to multiples make a 16:9
# bucket 1.75 at one size and 1.79 at another, and that must not decide between resolutions.
ASPECT_TOLERANCE = 0.03


@dataclass(frozen=True)
class Bucket:
    """One clip shape: ``frames`` x ``height`` x ``width`` pixels, ``batch_size`` clips per batch (per rank)."""

    height: int
    width: int
    frames: int
    batch_size: int

    @property
    def name(self) -> str:
        """``HxWxT``, as messages and reports write a bucket."""
        return f"{self.height}x{self.width}x{self.frames}"


def parse_aspect(value: float | str) -> float:
    """Width / height from ``"16:9"`` (width:height) or a positive number; ValueError naming the value."""
    try:
        if isinstance(value, str) and ":" in value:
            w, h = value.split(":")
            ratio = float(w) / float(h)
        else:
            ratio = float(value)
    except (ValueError, ZeroDivisionError):
        ratio = math.nan
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"BucketSpec: invalid aspect_ratios entry {value!r}; use 'width:height' or a positive number")
    return ratio


def latent_tokens(height: float, width: float, frames: int, spatial_factor: int = 1, temporal_factor: int = 1) -> float:
    """Latent positions of a ``frames x height x width`` clip: ``(1 + (T - 1) / tf) x (H / sf) x (W / sf)``
    for a causal first stage (``tf`` > 1), ``T x (H / sf) x (W / sf)`` without temporal compression."""
    latent_frames = 1 + (frames - 1) / temporal_factor if temporal_factor > 1 else frames
    return latent_frames * (height / spatial_factor) * (width / spatial_factor)


def lost_fraction(height: int, width: int, out_h: int, out_w: int) -> float:
    """Share of a ``height x width`` source's pixels that "resize to cover ``out_h x out_w``, then
    crop" throws away (the crop the clips are made with, :func:`~latentvid.data.clips.crop_box`)."""
    _, _, crop_h, crop_w = crop_box(height, width, out_h, out_w, "center")
    return 1.0 - (crop_h * crop_w) / (height * width)


def assign(buckets: Sequence[Bucket], height: int, width: int, frames: int | None = None, pad: bool = True,
           allowed: Sequence[bool] | None = None) -> int | None:
    """Index of the bucket for a source of ``height x width`` pixels and ``frames`` usable frames
    (None: a still, which fits any length).

    In order: (1) buckets of at most ``frames`` frames (none: with ``pad`` those with the fewest
    frames, to be padded and masked; without it None, the sample is skipped); (2) of those, the ones
    whose crop loses the fewest source pixels (:func:`lost_fraction`, within
    :data:`ASPECT_TOLERANCE`): the nearest aspect ratio; (3) the largest that needs no upscaling,
    else the smallest; (4) the fewest lost pixels; (5) the most frames for a video, the fewest for a
    still (a still's other frames are padding or copies). ``allowed`` (per bucket) leaves buckets
    out, e.g. those the plan never draws.
    """
    if height < 1 or width < 1:
        raise ValueError(f"assign: invalid source size {height}x{width}")
    candidates = [i for i in range(len(buckets)) if allowed is None or allowed[i]]
    if not candidates:
        raise ValueError("assign: no bucket to choose from")
    if frames is not None:
        fitting = [i for i in candidates if buckets[i].frames <= frames]
        if not fitting:
            if not pad:
                return None
            fewest = min(buckets[i].frames for i in candidates)
            fitting = [i for i in candidates if buckets[i].frames == fewest]
        candidates = fitting
    lost = {i: lost_fraction(height, width, buckets[i].height, buckets[i].width) for i in candidates}
    best = min(lost.values())
    near = [i for i in candidates if lost[i] <= best + ASPECT_TOLERANCE]

    def rank(i: int) -> tuple:
        b = buckets[i]
        upscales = max(b.height / height, b.width / width) > 1.0 + 1e-9
        area = b.height * b.width
        return (upscales, area if upscales else -area, lost[i], b.frames if frames is None else -b.frames, i)

    return min(near, key=rank)


def batch_size_for(bucket_tokens: float, reference_tokens: float, reference_batch: int) -> int:
    """Clips per batch that keep ``reference_batch x reference_tokens`` latent tokens per batch (at least 1)."""
    return max(1, math.floor(reference_batch * reference_tokens / bucket_tokens + 0.5))


def _tuple(value: Sequence | None) -> tuple | None:
    if value is None:
        return None
    return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)


@dataclass(frozen=True)
class BucketSpec:
    """Which clip shapes a data module trains at (see the module docstring).

    Args:
        aspect_ratios: width : height of the generated buckets, ``"16:9"`` or a number (1.78).
        sizes: base sizes in pixels: a generated bucket has about the area of a ``size x size``
            square (None: the clip's own area, ``sqrt(H x W)`` of ``clip.size``).
        frames: frame counts of the generated buckets (None: the clip's ``num_frames``).
        buckets: an explicit list instead of the grid, ``[height, width, frames]`` or
            ``[height, width, frames, batch_size]`` per bucket.
        multiple: generated sides are rounded to multiples of this: the first stage's spatial
            factor x the denoiser's down-sampling (the start-up check says when it does not fit).
        spatial_factor, temporal_factor: the first stage's, to count latent tokens for the batch
            sizes (checked against the model at start-up).
        weights: how often each bucket's steps come, one per bucket in the order of :meth:`build`
            (0 switches a bucket off); None: in proportion to the data's batches in each bucket,
            so that all buckets drain at the same rate.
        estimate: samples measured at set-up to estimate each bucket's share of a streamed source
            (all of them when it has no more; the same samples on every rank).
        buffer: undecoded samples one reader (a DataLoader worker) holds waiting for their
            bucket's turn; beyond it the oldest sample of the fullest other bucket is dropped and
            counted (``batch["bucket_dropped"]``). Folders hold paths, shards the encoded bytes.
    """

    aspect_ratios: tuple[str, ...] = ("1:1", "4:3", "3:4", "16:9", "9:16")
    sizes: tuple[int, ...] | None = None
    frames: tuple[int, ...] | None = None
    buckets: tuple[tuple[int, ...], ...] | None = None
    multiple: int = 16
    spatial_factor: int = 8
    temporal_factor: int = 4
    weights: tuple[float, ...] | None = None
    estimate: int = 512
    buffer: int = 256

    def __post_init__(self) -> None:
        for name in ("aspect_ratios", "sizes", "frames", "buckets", "weights"):  # frozen: lists from YAML
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        for ratio in self.aspect_ratios:
            parse_aspect(ratio)
        checks = {
            "aspect_ratios": len(self.aspect_ratios) > 0 or self.buckets is not None,
            "sizes": self.sizes is None or (len(self.sizes) > 0 and all(_positive_int(s) for s in self.sizes)),
            "frames": self.frames is None or (len(self.frames) > 0 and all(_positive_int(f) for f in self.frames)),
            "buckets": self.buckets is None or (len(self.buckets) > 0 and all(
                isinstance(b, tuple) and len(b) in (3, 4) and all(_positive_int(v) for v in b) for b in self.buckets)),
            "multiple": _positive_int(self.multiple),
            "spatial_factor": _positive_int(self.spatial_factor),
            "temporal_factor": _positive_int(self.temporal_factor),
            "weights": self.weights is None or (all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0
                                                    for w in self.weights) and sum(self.weights) > 0),
            "estimate": isinstance(self.estimate, int) and self.estimate >= 1,
            "buffer": isinstance(self.buffer, int) and self.buffer >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"BucketSpec: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def tokens(self, height: float, width: float, frames: int) -> float:
        """Latent tokens of one clip of this shape (:func:`latent_tokens` with this spec's factors)."""
        return latent_tokens(height, width, frames, self.spatial_factor, self.temporal_factor)

    def shapes(self, height: int, width: int, frames: int) -> list[tuple[int, ...]]:
        """The bucket shapes ``(height, width, frames[, batch_size])`` for a reference clip of
        ``frames x height x width``: the explicit list, or the grid sizes x aspect ratios x frames
        (sides rounded to ``multiple``, duplicates once)."""
        if self.buckets is not None:
            return list(self.buckets)
        m = self.multiple
        shapes: list[tuple[int, ...]] = []
        for size in self.sizes or (math.sqrt(height * width),):
            for ratio in map(parse_aspect, self.aspect_ratios):
                h = max(m, round(size / math.sqrt(ratio) / m) * m)
                w = max(m, round(size * math.sqrt(ratio) / m) * m)
                for t in self.frames or (frames,):
                    if (h, w, t) not in shapes:
                        shapes.append((h, w, t))
        return shapes

    def build(self, height: int, width: int, frames: int, batch_size: int) -> list[Bucket]:
        """The buckets, with batch sizes that keep about ``batch_size`` x the latent tokens of a
        ``frames x height x width`` clip per batch (an explicit batch size is kept)."""
        reference = self.tokens(height, width, frames)
        out = []
        for shape in self.shapes(height, width, frames):
            h, w, t = shape[:3]
            bs = shape[3] if len(shape) == 4 else batch_size_for(self.tokens(h, w, t), reference, batch_size)
            out.append(Bucket(int(h), int(w), int(t), int(bs)))
        if self.weights is not None and len(self.weights) != len(out):
            raise ValueError(f"BucketSpec: weights has {len(self.weights)} entries for {len(out)} buckets "
                             f"({', '.join(b.name for b in out)})")
        return out


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def step_weights(shares: Sequence[float], buckets: Sequence[Bucket]) -> list[float]:
    """Per-bucket step weights that drain every bucket at the same rate: a bucket holding a share
    ``q`` of the samples, ``batch_size`` per step, needs steps in proportion to ``q / batch_size``."""
    return [q / b.batch_size for q, b in zip(shares, buckets)]


def mean_batch_size(weights: Sequence[float], buckets: Sequence[Bucket]) -> float:
    """Samples per step and rank, on average, when steps draw buckets with ``weights``."""
    total = float(sum(weights))
    return sum(w * b.batch_size for w, b in zip(weights, buckets)) / total


class BucketPlan:
    """The bucket of every training step: a pure function of ``(seed, epoch, step)``.

    Steps come in blocks of ``block``. Each block draws its buckets by systematic sampling (one
    uniform offset, ``block`` evenly spaced points on the cumulative weights), so a bucket of
    probability ``p`` gets ``floor(p * block)`` or ``ceil(p * block)`` steps of every block, and
    then shuffles them. An independent draw per step would let the demand for a bucket wander by
    about ``sqrt(steps)``, and the readers would have to hold that many waiting samples; here it
    stays within a step or two per block.

    Args:
        weights: per-bucket weights (not normalised; 0 = never drawn).
        seed: the plan's seed; every rank and every resumed run with the same seed, weights and
            block gets the same plan.
        block: steps per block.
    """

    def __init__(self, weights: Sequence[float], seed: int = 0, block: int = 64) -> None:
        w = [float(x) for x in weights]
        if not w or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"BucketPlan: weights must be finite, non-negative, with a positive sum; got {w}")
        if block < 1:
            raise ValueError(f"BucketPlan: block must be >= 1, got {block}")
        total = sum(w)
        self.weights = w
        self.probabilities = [x / total for x in w]
        self.cumulative = []
        running = 0.0
        for p in self.probabilities:
            running += p
            self.cumulative.append(running)
        self.cumulative[-1] = 1.0  # the last point lands inside whatever rounding did
        self.seed = int(seed)
        self.block = int(block)
        self._cache: tuple[tuple[int, int], list[int]] | None = None

    def _block(self, epoch: int, index: int) -> list[int]:
        if self._cache is None or self._cache[0] != (epoch, index):
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, "buckets"))
            u = float(torch.rand((), generator=g, dtype=torch.float64))
            picks = [min(bisect.bisect_right(self.cumulative, (i + u) / self.block), len(self.cumulative) - 1)
                     for i in range(self.block)]
            order = torch.randperm(self.block, generator=g).tolist()
            self._cache = ((epoch, index), [picks[j] for j in order])
        return self._cache[1]

    def bucket(self, epoch: int, step: int) -> int:
        """Index of the bucket that step ``step`` (from 0) of ``epoch`` trains on."""
        if step < 0:
            raise ValueError(f"BucketPlan: step must be >= 0, got {step}")
        return self._block(int(epoch), step // self.block)[step % self.block]

    def buckets(self, epoch: int, start: int, stop: int) -> list[int]:
        """Buckets of steps ``start .. stop - 1`` of ``epoch``."""
        return [self.bucket(epoch, k) for k in range(start, stop)]
