"""Sample logging: animated images that TensorBoard can read back, file names, the probe hook."""

import io

import numpy as np
from PIL import Image

from latentvid.callbacks.samples import _is_shapes, gif_bytes, log_tensorboard_video, slug


def frames(t=5, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(t, size, size, 3), dtype=np.uint8)


def test_gif_has_every_frame():
    f = frames()
    img = Image.open(io.BytesIO(gif_bytes(f, fps=8)))
    assert img.n_frames == 5 and img.size == (8, 8)


def test_tensorboard_video_round_trip(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    log_tensorboard_video(logger, "samples/00_x", frames(), fps=8, step=7)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert "samples/00_x" in acc.Tags()["images"]
    (event,) = acc.Images("samples/00_x")
    assert event.step == 7 and Image.open(io.BytesIO(event.encoded_image_string)).n_frames == 5


def test_slug_and_caption_kind():
    assert slug("a red circle moving left") == "a_red_circle_moving_left"
    assert slug("!!!") == "empty"
    assert _is_shapes("a red circle moving left") and _is_shapes("a blue square")
    assert not _is_shapes("a photo of a cat")
