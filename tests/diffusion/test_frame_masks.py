"""Random known-frame masks: each kind's positions, their frequencies, valid frames only, never all known."""

import pytest
import torch

from latentvid.diffusion.frame_masks import MASK_KINDS, FrameMasks, draw_frame_masks, known_positions


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
