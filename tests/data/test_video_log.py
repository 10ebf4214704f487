"""Tests of latentvid/data/video_log.py: GIFs TensorBoard can read back, file-name slugs, mp4 + TensorBoard in one call."""

import io

import numpy as np
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from latentvid.data.video import read_frames
from latentvid.data.video_log import gif_bytes, log_tensorboard_video, save_and_log_video, slug


def frames(t=5, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(t, size, size, 3), dtype=np.uint8)


def test_gif_has_every_frame():
    f = frames()
    img = Image.open(io.BytesIO(gif_bytes(f, fps=8)))
    assert img.n_frames == 5 and img.size == (8, 8)


def test_tensorboard_video_round_trip(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    log_tensorboard_video(logger, "samples/00_x", frames(), fps=8, step=7)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert "samples/00_x" in acc.Tags()["images"]
    (event,) = acc.Images("samples/00_x")
    assert event.step == 7 and Image.open(io.BytesIO(event.encoded_image_string)).n_frames == 5


def test_slug():
    assert slug("a red circle moving left") == "a_red_circle_moving_left"
    assert slug("!!!") == "empty"


def test_save_and_log_video_writes_the_mp4_and_skips_other_loggers(tmp_path):
    f = np.broadcast_to(np.linspace(0, 255, 16, dtype=np.uint8)[None, None, :, None], (4, 16, 16, 3)).copy()
    tb, csv = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    path = save_and_log_video(tmp_path / "out" / "a.mp4", f, 8.0, [csv, tb], "samples/a", step=2)
    assert path == tmp_path / "out" / "a.mp4"
    back = read_frames(path)
    assert back.shape == f.shape and np.abs(back.astype(int) - f).mean() < 3  # codec error only
    tb.experiment.flush()
    acc = EventAccumulator(tb.log_dir)
    acc.Reload()
    assert acc.Tags()["images"] == ["samples/a"]
