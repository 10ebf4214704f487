"""Tests for latentvid/data/buckets.py: generated and explicit buckets, batch sizes that keep latent
tokens per batch, assignment against a brute-force count of lost pixels, the per-step plan
(identical on every rank, continued exactly by a resumed run), one-line config errors."""

from __future__ import annotations

import math
import random

import pytest

from latentvid.data.buckets import (
    ASPECT_TOLERANCE,
    Bucket,
    BucketPlan,
    BucketSpec,
    assign,
    latent_tokens,
    lost_fraction,
    mean_batch_size,
    step_weights,
)


def bf_lost(h: int, w: int, bh: int, bw: int) -> float:
    """Brute force: count the source pixels whose centres fall inside the centred region that
    "resize to cover bh x bw, then crop" keeps (kept region = the bucket's size over the scale)."""
    scale = max(bh / h, bw / w)
    kh, kw = bh / scale, bw / scale  # kept region in source pixels
    rows = sum(1 for y in range(h) if (h - kh) / 2 <= y + 0.5 <= (h + kh) / 2)
    cols = sum(1 for x in range(w) if (w - kw) / 2 <= x + 0.5 <= (w + kw) / 2)
    return 1.0 - rows * cols / (h * w)


def test_generated_grid_rounds_sides_and_dedupes() -> None:
    spec = BucketSpec(sizes=(256, 512), aspect_ratios=("1:1", "16:9", 1.7778, "4:3"), frames=(17, 33), multiple=32)
    buckets = spec.build(256, 256, 17, 8)
    shapes = [(b.height, b.width, b.frames) for b in buckets]
    assert len(shapes) == len(set(shapes)) == 2 * 3 * 2  # 1.7778 rounds to the 16:9 shapes: once
    assert all(b.height % 32 == 0 and b.width % 32 == 0 for b in buckets)
    for b in buckets:
        ratio = b.width / b.height
        assert min(abs(math.log(ratio / r)) for r in (1.0, 16 / 9, 4 / 3)) < 0.1  # rounding only
        side = math.sqrt(b.height * b.width)
        assert min(abs(side - s) / s for s in (256, 512)) < 0.1


def test_defaults_take_the_clip_area_and_length() -> None:
    buckets = BucketSpec(aspect_ratios=("1:1", "2:1")).build(192, 192, 9, 4)
    assert [(b.height, b.width, b.frames, b.batch_size) for b in buckets] == [(192, 192, 9, 4), (128, 272, 9, 4)]


@pytest.mark.parametrize("factors", [(8, 4), (8, 1), (16, 8)])
def test_batch_sizes_keep_latent_tokens_per_batch(factors) -> None:
    sf, tf = factors
    spec = BucketSpec(sizes=(192, 256, 384), aspect_ratios=("1:1", "16:9", "9:16", "4:3", "3:4", "21:9"),
                      frames=(1 + tf, 1 + 4 * tf, 1 + 8 * tf), multiple=sf * 2, spatial_factor=sf, temporal_factor=tf)
    ref_batch, (h, w, t) = 16, (256, 256, 1 + 4 * tf)
    target = ref_batch * latent_tokens(h, w, t, sf, tf)
    for b in spec.build(h, w, t, ref_batch):
        tokens = latent_tokens(b.height, b.width, b.frames, sf, tf)
        if b.batch_size > 1 or tokens <= target:
            assert abs(b.batch_size * tokens - target) <= tokens / 2 + 1e-6, b  # rounding: half a clip at most
        else:  # a bucket bigger than the whole reference batch still takes one clip
            assert tokens > target
        if b.batch_size >= 4:
            assert abs(b.batch_size * tokens / target - 1) <= 0.125 + 1e-9


def test_explicit_buckets_keep_their_batch_sizes() -> None:
    spec = BucketSpec(buckets=[[256, 256, 17], [144, 256, 33, 3]], spatial_factor=8, temporal_factor=4)
    buckets = spec.build(256, 256, 17, 8)
    assert buckets == [Bucket(256, 256, 17, 8), Bucket(144, 256, 33, 3)]
    assert buckets[1].name == "144x256x33"


def test_lost_fraction_matches_the_pixel_count() -> None:
    rng = random.Random(0)
    for _ in range(300):
        h, w, bh, bw = (rng.randint(8, 120) for _ in range(4))
        assert abs(lost_fraction(h, w, bh, bw) - bf_lost(h, w, bh, bw)) <= 2.0 / min(h, w) + 1e-9


def _grid(rng: random.Random) -> list[Bucket]:
    spec = BucketSpec(sizes=tuple(rng.sample([32, 48, 64, 96], k=rng.randint(1, 3))),
                      aspect_ratios=tuple(rng.sample(["1:1", "4:3", "3:4", "16:9", "9:16", "2:1", "1:2"], k=4)),
                      frames=tuple(rng.sample([5, 9, 17, 33], k=rng.randint(1, 3))), multiple=8)
    return spec.build(48, 48, 9, 4)


def test_assignment_against_a_brute_force_search() -> None:
    rng = random.Random(1)
    for _ in range(200):
        buckets = _grid(rng)
        h, w = rng.randint(16, 160), rng.randint(16, 160)
        n = rng.choice([None, 1, 3, 5, 9, 12, 20, 40])
        i = assign(buckets, h, w, n)
        chosen = buckets[i]
        fits = [b for b in buckets if n is None or b.frames <= n]
        if n is not None and fits:
            assert chosen.frames <= n  # enough frames whenever some bucket has them
            assert chosen.frames == max(b.frames for b in fits if (b.height, b.width) == (chosen.height, chosen.width))
        elif n is not None:  # too short for all: the least padding
            assert chosen.frames == min(b.frames for b in buckets)
        pool = fits or [b for b in buckets if b.frames == chosen.frames]
        lost = {b: bf_lost(h, w, b.height, b.width) for b in pool}
        slack = 2.0 / min(h, w)  # the crop's own rounding to whole pixels
        best = min(lost.values())
        assert lost[chosen] <= best + ASPECT_TOLERANCE + slack  # nearest aspect ratio
        # among the buckets clearly as good: the largest that needs no upscaling, else the smallest
        near = [b for b in pool if lost[b] <= best + ASPECT_TOLERANCE - slack]
        no_up = [b for b in near if b.height <= h and b.width <= w]
        if no_up:
            assert chosen.height <= h and chosen.width <= w
            assert chosen.height * chosen.width >= max(b.height * b.width for b in no_up)
        elif near and lost[chosen] <= best + ASPECT_TOLERANCE - slack:
            assert chosen.height * chosen.width <= min(b.height * b.width for b in near)


def test_one_resolution_takes_the_least_lost_pixels_exactly() -> None:
    buckets = BucketSpec(aspect_ratios=("1:1", "4:3", "3:4", "16:9", "9:16"), multiple=1).build(64, 64, 9, 4)
    for h, w in [(36, 64), (64, 36), (48, 64), (64, 48), (50, 50), (1080, 1920), (1920, 1080), (30, 100)]:
        lost = [bf_lost(h, w, b.height, b.width) for b in buckets]
        assert assign(buckets, h, w, 9) == min(range(len(buckets)), key=lost.__getitem__)


def test_stills_short_clips_and_switched_off_buckets() -> None:
    buckets = [Bucket(32, 32, 5, 8), Bucket(32, 32, 17, 4), Bucket(24, 40, 17, 4)]
    assert assign(buckets, 90, 160, None) == 2  # a still: any length, aspect first
    assert assign(buckets, 100, 100, None) == 0  # ... and the fewest frames (the rest is padding)
    assert assign(buckets, 100, 100, 20) == 1  # a long video: the most frames that fit
    assert assign(buckets, 90, 160, 3) == 0  # too short for all: pad into the shortest
    assert assign(buckets, 90, 160, 3, pad=False) is None  # short="skip"
    assert assign(buckets, 90, 160, 20, allowed=[True, True, False]) == 1


def test_plan_is_the_same_on_every_rank_and_continues_on_resume() -> None:
    weights = step_weights([0.5, 0.3, 0.2, 0.0], [Bucket(32, 32, 9, 8), Bucket(24, 40, 9, 8),
                                                  Bucket(40, 24, 9, 8), Bucket(16, 16, 9, 32)])
    rank0, rank1 = BucketPlan(weights, seed=5), BucketPlan(weights, seed=5)
    for epoch in (0, 3):
        seq = rank0.buckets(epoch, 0, 1000)
        assert seq == rank1.buckets(epoch, 0, 1000)
        assert 3 not in seq  # weight 0: never drawn
        resumed = BucketPlan(weights, seed=5)  # a new process, resumed at step 437
        assert resumed.buckets(epoch, 437, 1000) == seq[437:]
    assert rank0.buckets(0, 0, 200) != rank0.buckets(1, 0, 200)  # each epoch its own plan
    assert rank0.buckets(0, 0, 200) != BucketPlan(weights, seed=6).buckets(0, 0, 200)


def test_plan_follows_the_weights_block_by_block() -> None:
    plan = BucketPlan([5, 3, 1, 0.25], seed=0, block=64)
    p = plan.probabilities
    for start in range(0, 64 * 20, 64):
        block = plan.buckets(2, start, start + 64)
        for k in range(4):  # systematic sampling: floor or ceil of the expected count, every block
            assert math.floor(64 * p[k]) <= block.count(k) <= math.ceil(64 * p[k])
    assert mean_batch_size([1, 1], [Bucket(8, 8, 1, 2), Bucket(8, 8, 1, 6)]) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"aspect_ratios": ("16:0",)}, "aspect_ratios entry '16:0'"),
    ({"aspect_ratios": ("wide",)}, "aspect_ratios entry 'wide'"),
    ({"frames": [17, 0]}, "invalid frames=(17, 0)"),
    ({"sizes": [256.5]}, "invalid sizes=(256.5,)"),
    ({"buckets": [[256, 256]]}, "invalid buckets=((256, 256),)"),
    ({"multiple": 0}, "invalid multiple=0"),
    ({"weights": [1, -1]}, "invalid weights=(1, -1)"),
    ({"buffer": 0}, "invalid buffer=0"),
])
def test_bad_specs_fail_with_one_line_naming_the_key(kwargs, message) -> None:
    with pytest.raises(ValueError) as info:
        BucketSpec(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_weights_must_match_the_buckets() -> None:
    spec = BucketSpec(aspect_ratios=("1:1", "16:9"), weights=[1, 2, 3])
    with pytest.raises(ValueError, match=r"weights has 3 entries for 2 buckets \(64x64x9, 48x80x9\)"):
        spec.build(64, 64, 9, 4)
    with pytest.raises(ValueError, match="positive sum"):
        BucketPlan([0, 0])
