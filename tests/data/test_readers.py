"""Tests for latentvid/data/readers.py: decord and PyAV agree frame for frame, from paths and bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latentvid.data.readers import DecordReader, PyAVReader, VideoReadError, open_video, read_video_frames

BACKENDS = ("decord", "pyav")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_the_requested_frames_in_any_order(tmp_path: Path, counter_video, decode_counter, backend: str) -> None:
    path = counter_video(tmp_path / "count.mp4", num_frames=30, fps=24)
    with open_video(path, backend) as reader:
        assert reader.backend == backend and reader.num_frames == 30 and reader.fps == pytest.approx(24)
        indices = [7, 3, 3, 29, 0, 12]
        frames = reader.read(indices)
        assert frames.shape == (6, 16, 64, 3) and frames.dtype == np.uint8
        assert decode_counter(frames) == indices


def test_backends_agree_from_path_and_from_bytes(tmp_path: Path, smooth_frames, encoder) -> None:
    path = encoder(tmp_path / "clip.mp4", smooth_frames(9, 24, 40))
    data = path.read_bytes()
    ref = open_video(path, "pyav").read(range(9))
    for backend in BACKENDS:
        np.testing.assert_array_equal(open_video(path, backend).read(range(9)), ref)
        with open_video(data, backend, name="shard.tar:clip") as reader:
            assert reader.name == "shard.tar:clip"
            np.testing.assert_array_equal(reader.read(range(9)), ref)


def test_pyav_seeks_into_long_videos_and_numbers_frames_exactly(tmp_path: Path, counter_video, decode_counter) -> None:
    path = counter_video(tmp_path / "long.mp4", num_frames=120, fps=10)  # 12 s, keyframes every 250 frames
    seeking = PyAVReader(path, seek_after=0.5)
    from_start = PyAVReader(path, seek_after=1e9)
    wanted = [95, 100, 119, 96]
    assert decode_counter(seeking.read(wanted)) == wanted
    np.testing.assert_array_equal(seeking.read(wanted), from_start.read(wanted))
    np.testing.assert_array_equal(seeking.read(wanted), DecordReader(path).read(wanted))


def test_rotation_is_applied_by_both_readers(tmp_path: Path, smooth_frames, encoder) -> None:
    frames = smooth_frames(4, 16, 32)
    path = encoder(tmp_path / "rot.mp4", frames, rotation=90, pix_fmt="yuv444p")
    unrotated = encoder(tmp_path / "plain.mp4", frames, pix_fmt="yuv444p")
    stored = open_video(unrotated, "pyav").read(range(4))  # (T, 16, 32, 3)
    expected = np.rot90(stored, k=1, axes=(1, 2))  # display rotation 90 = counter-clockwise
    for backend in BACKENDS:
        got = open_video(path, backend).read(range(4))
        assert got.shape == (4, 32, 16, 3)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_files_raise_naming_the_file(zoo, zoo_names, backend: str) -> None:
    for name in zoo_names[1]:
        with pytest.raises(VideoReadError, match=zoo[name].name) as info:
            open_video(zoo[name], backend).read([0])
        assert "\n" not in str(info.value)  # one line, no C++ dump
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        open_video(zoo["good"].parent / "nope.mp4", backend)
    with pytest.raises(VideoReadError, match="empty"):
        open_video(b"", backend)
    with open_video(zoo["good"], backend) as reader, pytest.raises(VideoReadError, match="out of range"):
        reader.read([reader.num_frames])


def test_odd_files_read_the_same_with_both_backends(zoo, zoo_names) -> None:
    for name in zoo_names[0]:
        frames = {b: open_video(zoo[name], b).read([0]) for b in BACKENDS}
        assert frames["decord"].shape == frames["pyav"].shape, name
        assert frames["decord"].shape[-1] == 3
        # 10-bit: the two FFmpeg builds convert to RGB with different filters; all else is identical
        tol = 40 if name == "tenbit" else 0
        assert np.abs(frames["decord"].astype(int) - frames["pyav"]).mean() <= tol / 4, name


def test_fallback_reads_what_decord_cannot(tmp_path: Path, encoder, smooth_frames, make_counter_frames,
                                           decode_counter) -> None:
    # a truncated "faststart" mp4 (index first, then half of the data): decord refuses the whole
    # file, PyAV decodes the frames that are there
    frames = np.concatenate([make_counter_frames(40), smooth_frames(40, 48, 64)], axis=1)  # counter on top
    encoded = encoder(tmp_path / "fast.mp4", frames, options={"movflags": "faststart"}).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(encoded[: len(encoded) // 2])
    with pytest.raises(VideoReadError, match="cut.mp4.*decord"):
        read_video_frames(cut, [0, 1, 2], backend="decord", fallback=False)
    assert decode_counter(read_video_frames(cut, [0, 1, 2], backend="decord")) == [0, 1, 2]


def test_unknown_backend_is_rejected(zoo) -> None:
    with pytest.raises(ValueError, match="opencv.*decord"):
        open_video(zoo["good"], "opencv")  # type: ignore[arg-type]
