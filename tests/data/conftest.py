"""Shared fixtures for the data tests: a frame-counter video and the bad-file zoo, made with PyAV."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest

from latentvid.data.video import write_video

BITS = 8  # frame counter: 8 blocks of 8 x 8 pixels in the top row, bright = 1, dark = 0
BLOCK = 8
COUNTER_HW = (16, BITS * BLOCK)


def counter_frames(num_frames: int, hw: tuple[int, int] = COUNTER_HW) -> np.ndarray:
    """uint8 (T, H, W, 3): frame i shows i in binary (block b bright when bit b of i is set)."""
    frames = np.full((num_frames, *hw, 3), 60, np.uint8)
    for i in range(num_frames):
        for b in range(BITS):
            frames[i, :BLOCK, b * BLOCK:(b + 1) * BLOCK] = 235 if (i >> b) & 1 else 20
    return frames


def read_counter(frames: np.ndarray) -> list[int]:
    """The frame numbers drawn in uint8 (T, H, W, 3) frames of a counter video (top-left region)."""
    values = []
    for frame in frames:
        bits = [frame[:BLOCK, b * BLOCK:(b + 1) * BLOCK].mean() > 128 for b in range(BITS)]
        values.append(sum(int(bit) << b for b, bit in enumerate(bits)))
    return values


@pytest.fixture
def counter_video() -> Callable[..., Path]:
    """``make(path, num_frames, fps)`` writes a counter video (H.264) and returns its path."""

    def make(path: Path, num_frames: int, fps: float) -> Path:
        write_video(path, counter_frames(num_frames), fps=fps)
        return path

    return make


@pytest.fixture
def make_counter_frames() -> Callable[..., np.ndarray]:
    """``make(num_frames)``: uint8 (T, 16, 64, 3) counter frames (see :func:`counter_frames`)."""
    return counter_frames


@pytest.fixture
def decode_counter() -> Callable[[np.ndarray], list[int]]:
    return read_counter


def encode(path: Path, frames: np.ndarray, *, codec: str = "libx264", pix_fmt: str = "yuv420p", fmt: str = "mp4",
           fps: int = 8, pts_ms: list[int] | None = None, rotation: int = 0, source_format: str = "rgb24",
           options: dict[str, str] | None = None) -> Path:
    """Encode frames with PyAV with full control of codec, pixel format, timestamps, rotation,
    container options (e.g. ``{"movflags": "faststart"}``)."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=source_format)
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def smooth(num_frames: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3) smooth moving gradients (compress well, decode close to the source)."""
    t, y, x = np.meshgrid(np.arange(num_frames), np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    rgb = np.stack([np.sin(3 * x + 0.3 * t + seed), np.cos(2 * y - 0.2 * t), x * y * 2 - 1], axis=-1)
    return np.rint((rgb * 0.8 + 1) * 127.5).astype(np.uint8)


# name -> readable? (with short="pad"; one_frame is the only one that "skip" also drops)
ZOO_GOOD = ("good", "one_frame", "vfr", "odd", "tiny", "narrow", "rotated", "gray", "tenbit")
ZOO_BAD = ("zero_byte", "truncated", "text", "codec", "audio_only")


def make_zoo(root: Path) -> dict[str, Path]:
    """The bad-file zoo in ``root``: odd-but-valid videos (ZOO_GOOD) and broken ones (ZOO_BAD)."""
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["good"] = encode(root / "good.mp4", smooth(12, 24, 32))
    files["one_frame"] = encode(root / "one_frame.mp4", smooth(1, 24, 32))
    files["vfr"] = encode(root / "vfr.mp4", smooth(10, 24, 32),
                          pts_ms=[0, 100, 150, 400, 420, 700, 800, 1000, 1300, 1350])
    files["odd"] = encode(root / "odd.mp4", smooth(6, 15, 17), pix_fmt="yuv444p")  # odd sides need 4:4:4
    files["tiny"] = encode(root / "tiny.mp4", smooth(6, 2, 2))
    files["narrow"] = encode(root / "narrow.mp4", smooth(6, 32, 8))  # decord pads rows of 8-pixel-wide frames
    files["rotated"] = encode(root / "rotated.mp4", smooth(6, 16, 32), rotation=90)
    gray = smooth(6, 24, 32)[..., 0]  # (T, H, W): one channel
    files["gray"] = encode(root / "gray.mkv", gray, codec="ffv1", pix_fmt="gray", fmt="matroska", source_format="gray")
    files["tenbit"] = encode(root / "tenbit.mp4", smooth(6, 24, 32), pix_fmt="yuv420p10le")

    files["zero_byte"] = root / "zero_byte.mp4"
    files["zero_byte"].write_bytes(b"")
    whole = encode(root / "whole.mp4", smooth(12, 24, 32, seed=1)).read_bytes()  # moov at the end
    (root / "whole.mp4").unlink()
    files["truncated"] = root / "truncated.mp4"
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["text"] = root / "text.mp4"
    files["text"].write_text("this is not a video\n" * 20)
    files["codec"] = root / "codec.mp4"  # a codec FFmpeg has no decoder for: the sample entry renamed
    files["codec"].write_bytes(files["good"].read_bytes().replace(b"avc1", b"zzzz"))
    files["audio_only"] = _audio_only(root / "audio_only.mp4")
    return files


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bad-file zoo (module-scoped: made once per test file)."""
    return make_zoo(tmp_path_factory.mktemp("zoo"))


def write_csv(path: Path, header: list[str], rows: list[list[str | bytes]]) -> Path:
    """A CSV written byte by byte, so a row can hold bytes that are not UTF-8."""
    lines = [",".join(header).encode()]
    for row in rows:
        cells = [c if isinstance(c, bytes) else c.encode("utf-8") for c in row]
        lines.append(b",".join(b'"' + c.replace(b'"', b'""') + b'"' for c in cells))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    """JSON lines; a str row is written verbatim (to plant a broken line)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def csv_writer() -> Callable[..., Path]:
    return write_csv


@pytest.fixture
def jsonl_writer() -> Callable[..., Path]:
    return write_jsonl


@pytest.fixture
def zoo_maker() -> Callable[[Path], dict[str, Path]]:
    return make_zoo


@pytest.fixture
def encoder() -> Callable[..., Path]:
    return encode


@pytest.fixture
def smooth_frames() -> Callable[..., np.ndarray]:
    return smooth


@pytest.fixture(scope="session")
def zoo_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names of zoo files that decode, names of those that must be skipped)."""
    return ZOO_GOOD, ZOO_BAD


def _rank_entry(target: Callable[[int, Path], None], rank: int, root: Path) -> None:
    import torch

    # A child forked from a process whose OpenMP pool has run hangs in its first parallel region;
    # with one thread torch runs its loops inline (the whole suite's process has used its pool by now)
    torch.set_num_threads(1)
    target(rank, root)


def run_forked_ranks(target: Callable[[int, Path], None], root: Path, world: int, timeout: float = 120) -> list[dict]:
    """Run ``target(rank, root)`` in ``world`` forked processes (a gloo group's ranks), each writing
    ``root/rank{r}.json``; return those, in rank order. A rank that fails or outlives ``timeout`` fails
    the caller, and none is left running."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank_entry, args=(target, r, root)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    for p in procs:
        if p.exitcode is None:
            p.kill()
    assert [p.exitcode for p in procs] == [0] * world
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="session")
def forked_ranks() -> Callable[..., list[dict]]:
    return run_forked_ranks
