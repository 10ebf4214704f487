"""Tests for latentvid/data/clips.py: frame sampling (closed form and on a frame-counter video with
both readers), crops against PIL, padding / image clips, and the short-clip policy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentvid.data.clips import (
    ClipError,
    ClipSpec,
    available_frames,
    crop_box,
    image_to_clip,
    load_clip,
    load_image,
    pad_clip,
    probe_clip,
    probe_image,
    resize_crop,
    sample_frame_indices,
)
from latentvid.data.video import from_uint8

# ------------------------------------------------------------------------------ index sampling


@pytest.mark.parametrize(
    ("source_fps", "target_fps", "expected_step"),
    [(30.0, 10.0, 3.0), (25.0, 10.0, 2.5), (24.0, 8.0, 3.0), (30000 / 1001, 8.0, 30000 / 1001 / 8), (8.0, 8.0, 1.0)],
)
def test_target_fps_takes_the_frame_on_screen_at_each_target_time(source_fps, target_fps, expected_step) -> None:
    indices, fps = sample_frame_indices(300, source_fps, 6, target_fps=target_fps, start="first")
    # frame k of the clip is shown at t = k / target_fps; the source frame on screen then is floor(t * source_fps)
    assert indices == [math.floor(k / target_fps * source_fps + 1e-9) for k in range(6)]
    assert fps == pytest.approx(source_fps / expected_step) == pytest.approx(target_fps)


def test_target_above_the_file_rate_reads_every_frame_and_reports_the_real_rate() -> None:
    indices, fps = sample_frame_indices(100, 12.0, 5, target_fps=30.0, start="first")
    assert indices == [0, 1, 2, 3, 4] and fps == 12.0


def test_stride_and_starts() -> None:
    assert sample_frame_indices(20, 10.0, 4, stride=3, start="first") == ([0, 3, 6, 9], pytest.approx(10 / 3))
    # 20 frames, span 10: starts 0..10 fit; centre = 5
    assert sample_frame_indices(20, 10.0, 4, stride=3, start="center")[0] == [5, 8, 11, 14]
    g = torch.Generator().manual_seed(0)
    starts = [sample_frame_indices(20, 10.0, 4, stride=3, generator=g)[0][0] for _ in range(600)]
    assert set(starts) == set(range(11))  # uniform over every start that fits
    counts = np.bincount(starts, minlength=11)
    assert counts.min() > 600 / 11 * 0.5
    # the same generator state gives the same clip
    a = sample_frame_indices(50, 30.0, 8, target_fps=10.0, generator=torch.Generator().manual_seed(3))
    b = sample_frame_indices(50, 30.0, 8, target_fps=10.0, generator=torch.Generator().manual_seed(3))
    assert a == b


def test_window_limits_the_frames() -> None:
    indices, _ = sample_frame_indices(100, 10.0, 3, stride=2, first=40, last=50, start="center")
    assert indices == [42, 44, 46]  # span 4 in a window of 10 frames: starts 40..45, centre 40 + 5 // 2
    for seed in range(20):
        idx, _ = sample_frame_indices(100, 10.0, 3, stride=2, first=40, last=50,
                                      generator=torch.Generator().manual_seed(seed))
        assert 40 <= idx[0] and idx[-1] < 50
    assert sample_frame_indices(100, 10.0, 3, first=120)[0] == []


def test_short_files_give_the_frames_that_fit() -> None:
    assert sample_frame_indices(5, 10.0, 8, start="random")[0] == [0, 1, 2, 3, 4]
    assert sample_frame_indices(7, 30.0, 8, target_fps=10.0)[0] == [0, 3, 6]


# ---------------------------------------------------------------------- on a real counter video


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize(("file_fps", "target_fps", "start"),
                         [(24, 8, "first"), (25, 10, "center"), (30, 12, "random")])
def test_load_clip_returns_the_sampled_frames(tmp_path: Path, counter_video, decode_counter, backend, file_fps,
                                              target_fps, start) -> None:
    path = counter_video(tmp_path / "count.mp4", num_frames=60, fps=file_fps)
    spec = ClipSpec(num_frames=6, size=(16, 64), fps=target_fps, start=start, crop="center", backend=backend,
                    fallback=False)
    clip = load_clip(path, spec, torch.Generator().manual_seed(1))
    expected, fps = sample_frame_indices(60, file_fps, 6, target_fps=target_fps, start=start,
                                         generator=torch.Generator().manual_seed(1))
    assert clip.indices == expected
    assert decode_counter(clip.frames) == expected  # the pixels say which frames were read
    assert clip.fps == pytest.approx(target_fps) == pytest.approx(fps)
    assert clip.frames.shape == (6, 16, 64, 3)


def test_fps_override_and_window_from_seconds(tmp_path: Path, counter_video, decode_counter) -> None:
    path = counter_video(tmp_path / "count.mp4", num_frames=60, fps=10)
    spec = ClipSpec(num_frames=3, size=(16, 64), stride=2, start="first")
    clip = load_clip(path, spec, window=(2.0, 4.0))  # frames 20..39
    assert decode_counter(clip.frames) == [20, 22, 24]
    # a CSV that says the file is 20 fps: seconds map to frames at that rate
    clip = load_clip(path, ClipSpec(num_frames=2, size=(16, 64), fps=10, start="first"), window=(1.0, None), fps=20)
    assert decode_counter(clip.frames) == [20, 22] and clip.fps == pytest.approx(10)


def test_short_policy(tmp_path: Path, counter_video, decode_counter) -> None:
    path = counter_video(tmp_path / "short.mp4", num_frames=5, fps=8)
    padded = load_clip(path, ClipSpec(num_frames=8, size=(16, 64), short="pad"))
    assert decode_counter(padded.frames) == [0, 1, 2, 3, 4]
    with pytest.raises(ClipError, match=r"short\.mp4: too short: 5 of 8 frames"):
        load_clip(path, ClipSpec(num_frames=8, size=(16, 64), short="skip"))


# ------------------------------------------------------------------------------------- crops


def test_crop_box_closed_form() -> None:
    assert crop_box(480, 640, 256, 256) == (0, 80, 480, 480)      # landscape: full height, centre columns
    assert crop_box(640, 480, 256, 256) == (80, 0, 480, 480)      # portrait: full width
    assert crop_box(256, 320, 256, 256) == (0, 32, 256, 256)      # no scaling, crop 32 px each side
    assert crop_box(100, 100, 50, 100) == (25, 0, 50, 100)        # wide output from a square source
    assert crop_box(2, 2, 16, 16) == (0, 0, 2, 2)                 # tiny source: upscale it all
    g = torch.Generator().manual_seed(0)
    lefts = {crop_box(256, 320, 256, 256, "random", g)[1] for _ in range(2000)}
    assert lefts == set(range(65))  # every horizontal offset that keeps the crop inside


def test_resize_crop_matches_pil_resize_then_centre_crop() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(base).resize((160, 120), Image.BILINEAR))  # smooth (120, 160, 3)
    ours = resize_crop(image[None], (60, 60), "center")[0]
    # reference: shorter side 120 -> 60 with PIL, then a centred 60 x 60 crop
    small = np.asarray(Image.fromarray(image).resize((80, 60), Image.BILINEAR))
    ref = small[:, 10:70]
    assert ours.shape == (60, 60, 3)
    assert np.abs(ours.astype(int) - ref).mean() < 2.0


def test_crop_keeps_the_pixels_it_should(tmp_path: Path) -> None:
    frames = np.zeros((1, 20, 40, 3), np.uint8)
    frames[:, :, :10] = 255  # a white stripe on the left quarter
    assert resize_crop(frames, 20, "center").max() == 0      # the centre crop (columns 10..29) misses it
    left = resize_crop(frames, (20, 40))                     # same aspect: nothing cropped
    np.testing.assert_array_equal(left, frames)


# --------------------------------------------------------------------------- padding, stills


def test_pad_clip_and_image_modes() -> None:
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    clip, mask = pad_clip(frames, 4)
    assert clip.shape == (3, 4, 4, 5) and mask.tolist() == [True, True, False, False]
    torch.testing.assert_close(clip[:, :2], from_uint8(frames), rtol=0, atol=0)
    assert (clip[:, 2:] == 0).all()
    with pytest.raises(ValueError):
        pad_clip(frames, 1)

    image = frames[0]
    masked, mask, fps = image_to_clip(image, 5, "mask")
    assert mask.tolist() == [True, False, False, False, False] and fps == 0.0
    torch.testing.assert_close(masked[:, 0], from_uint8(image[None])[:, 0], rtol=0, atol=0)
    assert (masked[:, 1:] == 0).all()
    static, mask, fps = image_to_clip(image, 5, "static", static_fps=6.0)
    assert mask.all() and fps == 6.0
    for t in range(5):
        torch.testing.assert_close(static[:, t], masked[:, 0], rtol=0, atol=0)


def test_load_image_handles_modes_exif_and_errors(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    spec = ClipSpec(num_frames=1, size=(20, 30), crop="center")
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png", spec), rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")  # grayscale -> RGB, equal channels
    gray = load_image(tmp_path / "gray.png", spec)
    assert gray.shape == (20, 30, 3) and (gray[..., 0] == gray[..., 2]).all()
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image((tmp_path / "rgba.png").read_bytes(), spec), rgb)
    # EXIF orientation 6 (rotate 90 clockwise to display): stored 30 x 20, displayed 20 x 30
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "exif.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "exif.png", spec), rgb)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ClipError, match="bad.jpg"):
        load_image(tmp_path / "bad.jpg", spec)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png", spec)


def test_clip_spec_validation_names_the_field() -> None:
    assert ClipSpec(size=[8, 12]).hw == (8, 12)
    assert ClipSpec(size=16).deterministic().start == "center"
    for bad in ({"num_frames": 0}, {"fps": -1.0}, {"start": "middle"}, {"short": "drop"}, {"backend": "cv2"},
                {"image_mode": "video"}):
        field = next(iter(bad))
        with pytest.raises(ValueError, match=f"{field}="):
            ClipSpec(**bad)


# ------------------------------------------------------------------------------ probing (buckets)


@pytest.mark.parametrize("source_fps, target_fps, stride", [(30.0, 8.0, 1), (25.0, 10.0, 1), (8.0, 24.0, 1),
                                                            (30000 / 1001, 8.0, 1), (24.0, None, 1), (24.0, None, 3)])
def test_available_frames_is_what_sampling_can_take(source_fps, target_fps, stride) -> None:
    for n in range(1, 90):
        taken, _ = sample_frame_indices(n, source_fps, 10_000, target_fps=target_fps, stride=stride, start="first")
        assert available_frames(n, source_fps, target_fps, stride) == len(taken), n


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_probe_clip_reads_the_displayed_size_and_the_frames_at_the_clip_rate(tmp_path: Path, encoder, smooth_frames,
                                                                             backend) -> None:
    rotated = encoder(tmp_path / "rot.mp4", smooth_frames(20, 16, 32), rotation=90, pix_fmt="yuv444p", fps=8)
    assert tuple(probe_clip(rotated, ClipSpec(backend=backend))) == (32, 16, 20)  # rotated: 32 high
    assert probe_clip(rotated, ClipSpec(backend=backend, stride=3)).frames == 7
    wide = encoder(tmp_path / "wide.mp4", smooth_frames(24, 18, 32), fps=24)
    spec = ClipSpec(backend=backend, fps=8)
    assert tuple(probe_clip(wide, spec)) == (18, 32, 8)
    assert probe_clip(wide, spec, window=(0.25, 0.75)).frames == 4  # frames 6..17 at a step of 3
    assert probe_clip(wide, spec, fps=12).frames == 16  # the file's rate overridden: a step of 1.5
    clip = load_clip(wide, ClipSpec(backend=backend, fps=8, num_frames=100, start="first"))
    assert len(clip.indices) == probe_clip(wide, spec).frames  # what a clip then takes
    with pytest.raises(ClipError, match="text.mp4"):
        (tmp_path / "text.mp4").write_text("not a video")
        probe_clip(tmp_path / "text.mp4", ClipSpec(backend=backend))


def test_probe_image_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90: shown 20 wide, 40 high
    image.save(tmp_path / "turned.jpg", exif=exif)
    image.save(tmp_path / "plain.png")
    from PIL import ImageOps

    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "turned.jpg")))  # what load_image decodes
    assert probe_image(tmp_path / "turned.jpg") == (40, 20) == shown.shape[:2]
    assert probe_image((tmp_path / "plain.png").read_bytes()) == (20, 40)

