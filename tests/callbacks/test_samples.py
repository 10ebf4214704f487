"""Sample logging: which captions get the shapes probe (GIFs and file names: tests/data/test_video_log.py)."""

from latentvid.callbacks.samples import _is_shapes


def test_caption_kind():
    assert _is_shapes("a red circle moving left") and _is_shapes("a blue square")
    assert not _is_shapes("a photo of a cat")
