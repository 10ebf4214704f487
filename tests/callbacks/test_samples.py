"""Sample logging: which captions get the shapes probe (GIFs and file names: tests/data/test_video_log.py)."""

import pytest

from latentvid.callbacks.samples import LogSampleVideos, _is_shapes
from latentvid.diffusion.samplers import SAMPLERS


def test_caption_kind():
    assert _is_shapes("a red circle moving left") and _is_shapes("a blue square")
    assert not _is_shapes("a photo of a cat")


def test_every_registered_sampler_is_accepted_and_others_fail_at_construction():
    for name in SAMPLERS:
        assert LogSampleVideos(captions=["a red circle"], sampler=name).sampler == name
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        LogSampleVideos(sampler="euler")
