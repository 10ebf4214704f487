"""Tests for latentvid/data/video.py: round trips through real mp4 / png files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from latentvid.data import video as video_io
from latentvid.data.video import (
    from_uint8,
    read_frames,
    read_image,
    read_video,
    resize_frames,
    to_uint8,
    video_info,
    write_png,
    write_video,
)


def smooth_clip(t: int = 6, h: int = 32, w: int = 32) -> torch.Tensor:
    """Float clip (3, T, H, W) in [-1, 1]: smooth gradients that shift over time."""
    tt, yy, xx = torch.meshgrid(torch.arange(t, dtype=torch.float32), torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([
        torch.sin(3.0 * xx + 0.4 * tt),
        torch.cos(2.0 * yy - 0.3 * tt),
        xx * yy * 2 - 1,
    ]) * 0.8  # (3, T, H, W)


def pyav_decode(path: Path) -> np.ndarray:
    """Second decoder (PyAV) as the reference for decord: uint8 (T, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_uint8_conversions_are_inverse_and_map_the_range_ends() -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    clip = from_uint8(frames)
    assert clip.shape == (3, 3, 5, 7) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    np.testing.assert_array_equal(to_uint8(clip), frames)
    np.testing.assert_array_equal(to_uint8(clip.numpy()), frames)
    ends = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0]).view(1, 1, 1, 5).expand(3, 1, 1, 5)
    np.testing.assert_array_equal(to_uint8(ends)[0, 0, :, 0], [0, 128, 255, 255, 0])
    # channel c of pixel (t, y, x) lands at clip[c, t, y, x]
    assert clip[2, 1, 4, 6] == pytest.approx(frames[1, 4, 6, 2] / 127.5 - 1)


def test_write_read_round_trip(tmp_path: Path) -> None:
    clip = smooth_clip()
    path = tmp_path / "sub" / "dir" / "clip.mp4"  # parents are created
    write_video(path, clip, fps=12)
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == torch.float32
    assert back.min() >= -1 and back.max() <= 1
    assert (back - clip).abs().mean() < 0.03  # ~4 / 255 after yuv420p + crf 12
    info = video_info(path)
    assert info == {"num_frames": 6, "fps": pytest.approx(12.0), "height": 32, "width": 32}
    # decord agrees with a second decoder
    np.testing.assert_array_equal(to_uint8(back), pyav_decode(path))


def test_uint8_input_and_pure_colours_survive_yuv420p(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 255, 255), (32, 32, 32)]
    frames = np.stack([np.broadcast_to(np.array(c, np.uint8), (16, 16, 3)) for c in colours])  # (T, H, W, 3)
    path = tmp_path / "pure.mp4"
    write_video(path, frames, fps=8)
    back = read_frames(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).max() <= 4


@pytest.mark.parametrize("fps", [8.0, 24.0, 30000 / 1001])
def test_fps_is_read_back(tmp_path: Path, fps: float) -> None:
    path = tmp_path / "fps.mp4"
    write_video(path, smooth_clip(t=4, h=16, w=16), fps=fps)
    assert video_info(path)["fps"] == pytest.approx(fps, rel=1e-3)


@pytest.mark.parametrize("width", [8, 16, 24, 48])
def test_widths_where_decord_pads_rows_decode_correctly(tmp_path: Path, width: int) -> None:
    path = tmp_path / f"w{width}.mp4"
    write_video(path, smooth_clip(t=3, h=16, w=width), fps=8)
    frames = read_frames(path)
    assert frames.shape == (3, 16, width, 3)
    np.testing.assert_array_equal(frames, pyav_decode(path))


def test_frame_selection(tmp_path: Path) -> None:
    levels = 20 + 30 * np.arange(8)  # frame t is uniformly gray at a level that encodes t
    frames = np.broadcast_to(levels[:, None, None, None], (8, 16, 16, 3)).astype(np.uint8)
    path = tmp_path / "count.mp4"
    write_video(path, frames, fps=8)
    got = read_frames(path, num_frames=3, stride=2, start=1)
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), levels[[1, 3, 5]], atol=3)
    assert read_video(path, num_frames=4).shape == (3, 4, 16, 16)
    assert read_video(path, stride=3).shape[1] == 3  # frames 0, 3, 6
    with pytest.raises(ValueError, match="count.mp4.*8 frames"):
        read_video(path, num_frames=5, stride=2)
    assert read_frames(path, num_frames=20, allow_fewer=True).shape[0] == 8


def test_resize(tmp_path: Path) -> None:
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    frames[:, :, :16] = (200, 100, 50)  # left half coloured
    path = tmp_path / "half.mp4"
    write_video(path, frames, fps=8)
    small = read_video(path, size=16)
    assert small.shape == (3, 2, 16, 16)
    assert read_video(path, size=(8, 24)).shape == (3, 2, 8, 24)
    # far from the edge the colour is kept; compare with a direct reference resize
    assert to_uint8(small)[0, 8, 3].tolist() == pytest.approx([200, 100, 50], abs=4)
    # PIL's bilinear filter (antialiased when shrinking) is the reference
    from PIL import Image

    ref = np.stack([np.asarray(Image.fromarray(f).resize((16, 16), Image.BILINEAR)) for f in frames])
    np.testing.assert_allclose(resize_frames(frames, 16).astype(float), ref, atol=1)
    assert resize_frames(frames, 32) is frames  # no-op at the same size


def test_odd_sizes_are_padded_by_edge_replication(tmp_path: Path) -> None:
    clip = smooth_clip(t=3, h=15, w=17)
    path = tmp_path / "odd.mp4"
    write_video(path, clip, fps=8)
    back = read_video(path)
    assert back.shape == (3, 3, 16, 18)
    assert (back[:, :, :15, :17] - clip).abs().mean() < 0.04
    # the padding repeats the last row / column
    assert (back[:, :, 15, :17] - clip[:, :, 14]).abs().mean() < 0.05
    assert (back[:, :, :15, 17] - clip[:, :, :, 16]).abs().mean() < 0.05


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, smooth_clip(t=4, h=16, w=16), fps=8)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temp file left behind
    original = path.read_bytes()

    calls = {"n": 0}
    real = av.VideoFrame.from_ndarray

    def failing(*args, **kwargs):  # fail half-way through encoding
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_video(path, smooth_clip(t=6, h=16, w=16) * 0.1, fps=8)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert path.read_bytes() == original  # the old file is untouched
    assert read_video(path).shape == (3, 4, 16, 16)


def test_missing_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(missing)
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        video_info(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="garbage.mp4"):
        read_video(garbage)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image(tmp_path / "gone.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(tmp_path / "bad.png")


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "clip.gif", smooth_clip(t=2, h=16, w=16), fps=8)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "clip.mp4", smooth_clip(t=2, h=16, w=16), fps=0)
    with pytest.raises(ValueError, match="C, T, H, W"):
        write_video(tmp_path / "clip.mp4", torch.zeros(3, 16, 16), fps=8)
    assert not list(tmp_path.iterdir())


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    write_png(tmp_path / "a" / "img.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "img.png"), image)
    as_float = from_uint8(image[None])[:, 0]  # (3, H, W)
    write_png(tmp_path / "b.png", as_float)
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), image)
    assert read_image(tmp_path / "b.png", size=6).shape == (6, 6, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.png"]


def test_module_has_one_conversion_site() -> None:
    # the [-1, 1] <-> uint8 mapping lives in to_uint8 / from_uint8 only
    source = Path(video_io.__file__).read_text()
    assert source.count("127.5") == 2
