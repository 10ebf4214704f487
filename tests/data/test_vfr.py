"""Tests for latentvid/data/timestamps.py and sampling by presentation time (clips.sample_frame_times,
the readers' timestamps): a real variable frame rate file whose frames show their own index, at
known irregular times, read through both readers."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvid.data import timestamps
from latentvid.data.clips import ClipError, ClipSpec, load_clip, sample_frame_indices, sample_frame_times
from latentvid.data.readers import PyAVReader, TimestampError, open_video
from latentvid.data.timestamps import frames_at_times, is_constant_rate, timestamp_problem

BACKENDS = ("decord", "pyav")

# frame i is shown from PTS_MS[i] milliseconds (time base 1/1000): bursts and long holds
PTS_MS = [0, 40, 200, 240, 500, 520, 540, 900, 1000, 1300, 1310, 1600, 1650, 2200, 2240, 2600, 3000, 3020,
          3400, 3900]


def nearest_ms(times_ms: list[int]) -> list[int]:
    """The frame whose PTS is nearest each time, by brute force in whole ms (ties: the earlier)."""
    pts = np.array(PTS_MS)
    return [int(np.argmin(np.abs(pts - t))) for t in times_ms]


@pytest.fixture
def vfr_file(tmp_path: Path, encoder, make_counter_frames) -> Path:
    """H.264 mp4 (B-frames: decode order != presentation order) whose frame i shows i at PTS_MS[i]."""
    return encoder(tmp_path / "vfr.mp4", make_counter_frames(len(PTS_MS)), pts_ms=PTS_MS)


# ------------------------------------------------------------------------------------- pure parts


def test_frames_at_times_takes_the_nearest_frame() -> None:
    ts = np.array([0.0, 0.04, 0.2, 0.24, 0.5])
    got = frames_at_times(ts, np.array([0.0, 0.03, 0.1, 0.13, 0.4, 0.9, -1.0]))
    assert got.dtype == np.int64 and got.shape == (7,)
    # between 0.04 and 0.2: 0.1 is nearer the first, 0.13 the second; outside the file: first / last frame
    assert got.tolist() == [0, 1, 1, 2, 4, 4, 0]
    assert frames_at_times(ts, [0.12, 0.22]).tolist() == [1, 2]  # halfway takes the earlier frame
    assert frames_at_times([5.0], [0.0, 9.0]).tolist() == [0, 0]
    with pytest.raises(ValueError, match="strictly increasing"):
        frames_at_times([0.0, 0.1, 0.1], [0.0])
    with pytest.raises(ValueError, match="no frame timestamps"):
        frames_at_times([], [0.0])


def test_timestamp_problems_and_constant_rate() -> None:
    assert timestamp_problem(np.array([0.0, 0.1, 0.3]), 3) is None
    assert timestamp_problem(np.array([]), 3)[0] == "missing"
    assert timestamp_problem(np.array([0.0, 0.1]), 3) == ("count", "2 frame timestamps for 3 frames")
    assert timestamp_problem(np.array([0.0, np.nan, 0.3]), 3)[0] == "not finite"
    kind, detail = timestamp_problem(np.array([0.0, 0.2, 0.1]), 3)
    assert kind == "not increasing" and "frame 2 at 0.1 s after frame 1 at 0.2 s" in detail
    # 29.97 fps stored in whole milliseconds (Matroska) steps 33 / 34 ms: still constant rate
    assert is_constant_rate(np.round(np.arange(300) * 1001 / 30000, 3))
    assert not is_constant_rate(np.delete(np.arange(300) / 25, 150))  # one dropped frame
    assert not is_constant_rate(np.array(PTS_MS) / 1000)


def test_sample_frame_times_closed_form() -> None:
    ts = np.array(PTS_MS) / 1000
    assert sample_frame_times(ts, 6.0, 6, 5.0, start="first") == ([0, 2, 4, 6, 7, 8], 5.0)
    # the target is capped at the file's average rate, as for constant rate files
    assert sample_frame_times(ts, 4.0, 3, 5.0, start="first") == ([0, 3, 4], 4.0)  # 0, 0.25, 0.5 s
    # window 1.0 .. 2.5 s holds frames 8..14 (1.0 .. 2.24 s): 8 samples do not fit, 7 do from its start
    assert sample_frame_times(ts, 6.0, 8, 5.0, start="random", start_s=1.0, end_s=2.5)[0] == [8, 9, 10, 11, 12,
                                                                                               13, 13]
    assert sample_frame_times(ts, 6.0, 2, 5.0, start_s=5.0) == ([19], 5.0)  # after the last frame: it alone
    starts = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        idx, _ = sample_frame_times(ts, 6.0, 3, 5.0, start_s=1.0, end_s=2.5, generator=g)
        assert idx == nearest_ms([PTS_MS[idx[0]] + 200 * k for k in range(3)]) and idx[-1] <= 14
        starts.add(idx[0])
    assert starts == {8, 9, 10, 11, 12}  # every frame from which 0.4 s fits before 2.24 s


# ------------------------------------------------------------------------------ on the real file


@pytest.mark.parametrize("backend", BACKENDS)
def test_readers_report_the_files_timestamps(vfr_file: Path, decode_counter, backend: str) -> None:
    for source in (vfr_file, vfr_file.read_bytes()):
        with open_video(source, backend) as reader:
            np.testing.assert_allclose(reader.timestamps(), np.array(PTS_MS) / 1000, atol=1e-6)
            assert decode_counter(reader.read(range(len(PTS_MS)))) == list(range(len(PTS_MS)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_takes_the_frames_nearest_the_wanted_times(vfr_file: Path, decode_counter, backend: str) -> None:
    spec = ClipSpec(num_frames=6, size=(16, 64), fps=5, start="first", crop="center", backend=backend, fallback=False)
    clip = load_clip(vfr_file, spec)
    expected = nearest_ms([200 * k for k in range(6)])  # wanted times 0, 0.2, ..., 1.0 s
    assert expected == [0, 2, 4, 6, 7, 8]
    assert clip.indices == expected and clip.fps == pytest.approx(5)
    assert decode_counter(clip.frames) == expected  # the pixels say which frames were read
    # sampling by the average rate (what this file got before) takes other frames
    with open_video(vfr_file, backend) as reader:
        by_rate, _ = sample_frame_indices(reader.num_frames, reader.fps, 6, target_fps=5, start="first")
    assert by_rate != expected

    # centred: the start nearest the middle of the starts that fit (0 .. 2.6 s) is 1.3 s (frame 9);
    # frame 12 is nearest both 1.7 and 1.9 s, so it repeats
    clip = load_clip(vfr_file, spec.deterministic())
    assert clip.indices == nearest_ms([1300 + 200 * k for k in range(6)]) == [9, 11, 12, 12, 13, 14]
    assert decode_counter(clip.frames) == clip.indices

    for seed in range(3):  # random starts: every sample is still the frame nearest its time
        clip = load_clip(vfr_file, ClipSpec(num_frames=4, size=(16, 64), fps=5, backend=backend, fallback=False),
                         torch.Generator().manual_seed(seed))
        assert clip.indices == nearest_ms([PTS_MS[clip.indices[0]] + 200 * k for k in range(4)])
        assert decode_counter(clip.frames) == clip.indices


def test_window_and_stride_on_a_vfr_file(vfr_file: Path, decode_counter) -> None:
    spec = ClipSpec(num_frames=3, size=(16, 64), fps=5, start="first")
    clip = load_clip(vfr_file, spec, window=(1.0, 2.5))
    assert decode_counter(clip.frames) == clip.indices == [8, 9, 10]
    with pytest.raises(ClipError, match="too short: 7 of 8 frames"):
        load_clip(vfr_file, ClipSpec(num_frames=8, size=(16, 64), fps=5, start="first", short="skip"),
                  window=(1.0, 2.5))
    # a stride counts frames, not time
    clip = load_clip(vfr_file, ClipSpec(num_frames=3, size=(16, 64), stride=3, start="first"))
    assert decode_counter(clip.frames) == [0, 3, 6]


def test_pyav_seeks_by_the_timestamp_table(vfr_file: Path, decode_counter) -> None:
    seeking = PyAVReader(vfr_file, seek_after=0.1)
    wanted = [16, 18, 13]
    # numbered by the average rate (~6 fps), frames 15 and 17 would pass for 16 and 18
    by_rate = {j: round(t / 1000 * seeking.fps) for j, t in enumerate(PTS_MS)}
    assert by_rate[13] == 13 and by_rate[15] == 16 and by_rate[17] == 18
    assert decode_counter(seeking.read(wanted)) == wanted
    assert decode_counter(PyAVReader(vfr_file, seek_after=1e9).read(wanted)) == wanted  # from the start


def test_constant_rate_files_are_sampled_by_rate_as_before(tmp_path: Path, encoder, make_counter_frames,
                                                           decode_counter) -> None:
    # 29.97 fps in Matroska: timestamps rounded to whole milliseconds, but evenly spaced
    path = encoder(tmp_path / "ntsc.mkv", make_counter_frames(40), fmt="matroska", fps=Fraction(30000, 1001))
    for backend in BACKENDS:
        with open_video(path, backend) as reader:
            assert is_constant_rate(reader.timestamps())
            expected, fps = sample_frame_indices(reader.num_frames, reader.fps, 6, target_fps=12, start="center")
        clip = load_clip(path, ClipSpec(num_frames=6, size=(16, 64), fps=12, start="center", backend=backend,
                                        fallback=False))
        assert clip.indices == expected and decode_counter(clip.frames) == expected and clip.fps == pytest.approx(fps)


# ------------------------------------------------------------------------------------- bad input


def test_unusable_timestamps_fall_back_to_the_average_rate_counted_and_logged(vfr_file: Path, decode_counter,
                                                                              monkeypatch, caplog) -> None:
    import decord

    monkeypatch.setattr(timestamps, "fallbacks", Counter())
    def backwards(self, idx):  # frame 1 before frame 0
        return np.array([[0.2, 0.3], [0.1, 0.2]] + [[1.0 + i, 1.1 + i] for i in idx[2:]])

    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp", backwards)
    spec = ClipSpec(num_frames=6, size=(16, 64), fps=5, start="first", backend="decord", fallback=False)
    with caplog.at_level("WARNING", logger="latentvid.data"):
        clip = load_clip(vfr_file, spec)
        load_clip(vfr_file, spec)
    with open_video(vfr_file, "pyav") as reader:
        by_rate, _ = sample_frame_indices(reader.num_frames, reader.fps, 6, target_fps=5, start="first")
    assert clip.indices == by_rate and decode_counter(clip.frames) == by_rate
    assert timestamps.fallbacks == Counter({"not increasing": 2})
    logged = [r.getMessage() for r in caplog.records if "average frame rate" in r.getMessage()]
    assert len(logged) == 1 and "vfr.mp4: frame timestamps not increasing (frame 1" in logged[0]

    def broken(self, idx):
        raise RuntimeError("[12:00:00] /src/video_reader.cc:42: Check failed: no pts\nmore dump")

    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp", broken)
    with open_video(vfr_file, "decord") as reader:
        with pytest.raises(TimestampError, match="vfr.mp4: no frame timestamps from decord") as info:
            reader.timestamps()
    assert info.value.kind == "missing" and "\n" not in str(info.value)
    assert load_clip(vfr_file, spec).indices == by_rate
    assert timestamps.fallbacks["missing"] == 1


def test_pyav_timestamps_that_do_not_match_the_frames_are_refused(vfr_file: Path, decode_counter) -> None:
    reader = PyAVReader(vfr_file)
    reader.num_frames = len(PTS_MS) - 1  # as if the header counted another number of frames
    with pytest.raises(TimestampError, match=f"vfr.mp4: {len(PTS_MS)} frame timestamps for {len(PTS_MS) - 1}"):
        reader.timestamps()
    assert decode_counter(reader.read([3])) == [3]  # the frames still decode
