"""Random known-frame masks: each kind's positions, their frequencies, valid frames only, never all known."""

import pytest
import torch

from latentvid.diffusion.frame_masks import (
    MASK_KINDS,
    FrameMasks,
    draw_frame_masks,
    draw_pixel_prefixes,
    hold_after,
    known_positions,
    prefix_fractions,
)


def only(kind: str, **kw) -> FrameMasks:
    return FrameMasks(**{k: float(k == kind) for k in MASK_KINDS}, **kw)


def test_positions_of_each_kind():
    assert known_positions("none", 5, 0) == []
    assert known_positions("first", 5, 0) == [0]
    assert known_positions("first_k", 5, 3) == [0, 1, 2]
    assert known_positions("last_k", 5, 2) == [3, 4]
    assert known_positions("every_k", 9, 4) == [0, 4, 8]
    with pytest.raises(ValueError, match="kind"):
        known_positions("middle", 5, 1)


@pytest.mark.parametrize("kind,allowed", [
    ("none", [[]]),
    ("first", [[0]]),
    ("first_k", [[0, 1], [0, 1, 2], [0, 1, 2, 3]]),
    ("last_k", [[4], [3, 4], [2, 3, 4], [1, 2, 3, 4]]),
    ("every_k", [[0, 2, 4], [0, 3], [0, 4]]),
])
def test_each_kind_draws_its_masks_and_every_k_value(kind, allowed):
    valid = torch.ones(600, 5, dtype=torch.bool)
    masks = draw_frame_masks(valid, only(kind), torch.Generator().manual_seed(0))
    seen = {tuple(m.nonzero().flatten().tolist()) for m in masks}
    assert seen == {tuple(a) for a in allowed}


def test_frequencies_follow_the_weights_and_max_k_caps_k():
    spec = FrameMasks(none=1, first=2, first_k=0, last_k=1, every_k=0, max_k=1)
    masks = draw_frame_masks(torch.ones(6000, 3, dtype=torch.bool), spec, torch.Generator().manual_seed(1))
    rows = [tuple(m.nonzero().flatten().tolist()) for m in masks]
    share = {key: rows.count(key) / len(rows) for key in set(rows)}
    assert set(share) == {(), (0,), (2,)}  # none, first, last_k with k = 1 only
    assert abs(share[()] - 0.25) < 0.03 and abs(share[(0,)] - 0.5) < 0.03 and abs(share[(2,)] - 0.25) < 0.03


def test_only_valid_frames_are_known_and_never_all_of_them():
    valid = torch.zeros(400, 6, dtype=torch.bool)
    valid[:100, :1] = True  # images padded to 6 frames: nothing to condition on
    valid[100:200, :2] = True
    valid[200:, :] = True
    valid[300:, 4] = False  # a hole: positions count valid frames in order
    masks = draw_frame_masks(valid, FrameMasks(), torch.Generator().manual_seed(2))
    assert not (masks & ~valid).any()
    assert not masks[:100].any()
    assert ((masks & valid).sum(1) < valid.sum(1)).all()
    assert masks[200:].any(1).float().mean() > 0.6  # (none has weight 0.2)
    # the last valid frame of a holed clip is frame 5, not 4
    last = draw_frame_masks(valid[300:], only("last_k", max_k=1), torch.Generator().manual_seed(3))
    assert last[:, 5].all() and last.sum() == 100


def test_reproducible_with_a_generator_and_checked():
    valid = torch.ones(50, 4, dtype=torch.bool)
    a = draw_frame_masks(valid, FrameMasks(), torch.Generator().manual_seed(7))
    b = draw_frame_masks(valid, FrameMasks(), torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="positive sum"):
        FrameMasks(none=0, first=0, first_k=0, last_k=0, every_k=0)
    with pytest.raises(ValueError, match=">= 0"):
        FrameMasks(first=-1.0)
    with pytest.raises(ValueError, match="max_k"):
        FrameMasks(max_k=0)
    with pytest.raises(ValueError, match="bool"):
        draw_frame_masks(valid.float(), FrameMasks())


def latent_groups(t: int, f: int) -> list[list[int]]:
    """The pixel frames each latent frame of a causal VAE encodes, written out: [0], [1..f], [f+1..2f], ..."""
    groups = [[0]]
    for _ in range(1, t):
        start = groups[-1][-1] + 1
        groups.append(list(range(start, start + f)))
    return groups


@pytest.mark.parametrize("f", [1, 2, 4])
def test_prefix_fractions_are_each_latent_frames_given_share(f):
    t = 4
    counts = torch.arange(0, 1 + f * (t - 1) + 1)  # every prefix length, none to all
    got = prefix_fractions(counts, t, f)
    for k, row in zip(counts.tolist(), got):
        expect = [sum(p < k for p in group) / len(group) for group in latent_groups(t, f)]
        assert row.tolist() == pytest.approx(expect), k


def test_hold_after_repeats_the_last_given_frame():
    video = torch.randn(3, 2, 6, 4, 5, generator=torch.Generator().manual_seed(0))
    counts = torch.tensor([1, 3, 6])
    held = hold_after(video, counts)
    for i, k in enumerate(counts.tolist()):
        for j in range(6):
            assert torch.equal(held[i, :, j], video[i, :, min(j, k - 1)])
    with pytest.raises(ValueError, match="at least one given frame"):
        hold_after(video, torch.tensor([1, 0, 2]))


def test_pixel_prefixes_are_drawn_with_their_probability_over_each_clips_valid_frames():
    valid = torch.zeros(3000, 9, dtype=torch.bool)
    valid[:1000] = True  # 9 frames: k in 2 .. 8
    valid[1000:2000, :5] = True  # 5 frames: k in 2 .. 4
    valid[2000:, :2] = True  # too short to leave a frame unknown after 2 given
    counts = draw_pixel_prefixes(valid, 0.3, torch.Generator().manual_seed(0))
    nine, five, two = counts[:1000], counts[1000:2000], counts[2000:]
    assert abs(float((nine > 0).float().mean()) - 0.3) < 0.05 and abs(float((five > 0).float().mean()) - 0.3) < 0.05
    assert set(nine[nine > 0].tolist()) == set(range(2, 9)) and set(five[five > 0].tolist()) == {2, 3, 4}
    assert not two.any()
    assert not draw_pixel_prefixes(valid, 0.0).any()
    with pytest.raises(ValueError, match="pixel_prefix"):
        FrameMasks(pixel_prefix=1.5)
