"""Tests of latentvid/evaluation/reference.py pieces; whole SR / VAE evaluations run through the tool
in tests/tools/test_evaluate_sr.py and test_evaluate_vae.py."""

from types import SimpleNamespace

import torch

from latentvid.evaluation.reference import _new_frames, _sr_inputs


def test_tsr_is_scored_on_the_frames_it_invents():
    assert _new_frames(SimpleNamespace(frame_factor=2), 6) == [1, 3, 5]
    assert _new_frames(SimpleNamespace(frame_factor=3), 6) == [1, 2, 4, 5]
    assert _new_frames(SimpleNamespace(), 4) == [0, 1, 2, 3]  # SSR: every frame


def test_psnr_sees_clips_and_ssim_frames_in_unit_range():
    video = torch.linspace(-1.5, 1.5, 2 * 3 * 4 * 5 * 5).reshape(2, 3, 4, 5, 5)
    clips, _ = _sr_inputs("psnr", video, video)
    frames, _ = _sr_inputs("ssim", video, video)
    assert clips.shape == (2, 3, 4, 5, 5) and frames.shape == (8, 3, 5, 5)
    assert clips.min() == 0 and clips.max() == 1
    torch.testing.assert_close(frames[1], clips[0, :, 1])  # frame 1 of clip 0
