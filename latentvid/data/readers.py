"""Video readers behind one interface: decord (the fast default) and PyAV (the fallback).

Both open a file path or the encoded bytes of a file (e.g. a ``key.mp4`` member of a webdataset
shard) and return uint8 RGB frames ``(t, H, W, 3)`` for any list of frame indices::

    with open_video("clip.mp4", backend="decord", num_threads=2) as reader:
        frames = reader.read([0, 2, 4, 6])     # uint8 (4, H, W, 3)
        reader.num_frames, reader.fps
        reader.timestamps()                    # float64 (num_frames,) PTS in seconds from frame 0

Every failure is a :class:`VideoReadError` (a ``ValueError``) whose message starts with the
file's name; a missing file is a ``FileNotFoundError``. Frames come out as displayed: both
readers apply a rotation stored in the file's display matrix (decord does so itself; PyAV
reports it per frame and it is applied here). Frame ``i`` is the i-th frame in presentation
order for both; :meth:`VideoReader.timestamps` says when each is shown (variable frame rate
files are sampled by it, see :mod:`latentvid.data.timestamps`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from latentvid.data.timestamps import frames_at_times, timestamp_problem

Backend = Literal["decord", "pyav"]
BACKENDS: tuple[str, ...] = ("decord", "pyav")
Source = str | os.PathLike | bytes


class VideoReadError(ValueError):
    """A video that cannot be opened or decoded; the message names the file."""


class TimestampError(VideoReadError):
    """A video whose frame timestamps cannot be used (its frames may still decode); ``kind`` is
    :func:`~latentvid.data.timestamps.timestamp_problem`'s short key."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _checked_times(seconds: np.ndarray, num_frames: int, name: str) -> np.ndarray:
    """(N,) PTS in seconds -> the same relative to frame 0, or TimestampError naming the file."""
    problem = timestamp_problem(seconds, num_frames)
    if problem is not None:
        kind, detail = problem
        raise TimestampError(f"{name}: {detail}", kind)
    return seconds - seconds[0]


def _first_line(err: BaseException, limit: int = 160) -> str:
    """A short, single-line reason (decord's messages carry a C++ location and file dumps)."""
    text = str(err).strip().splitlines()
    line = text[-1].strip() if text else ""
    # decord: "[time] /path/video_reader.cc:151: Check failed: ..." -> keep what follows the location
    if ".cc:" in line:
        line = line.split(": ", 1)[-1]
    line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return line[:limit]


def source_name(source: Source, name: str | None = None) -> str:
    """What messages call a source: ``name`` if given, else the path, else ``<bytes>``."""
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)


def _check_indices(indices: Sequence[int], num_frames: int, name: str) -> list[int]:
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{name}: no frame indices requested")
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise VideoReadError(f"{name}: frame index {bad[0]} out of range for {num_frames} frames")
    return indices


class VideoReader:
    """Random access to the frames of one video. Subclasses: :class:`DecordReader`, :class:`PyAVReader`.

    Attributes:
        name: what error messages call the video (its path, or a shard member's name).
        num_frames: number of frames in the file (as its index reports them).
        fps: average frame rate of the file (frames per second, > 0).
        backend: ``"decord"`` or ``"pyav"``.
    """

    backend: str = ""
    name: str
    num_frames: int
    fps: float

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 (t, H, W, 3)."""
        raise NotImplementedError

    def timestamps(self) -> np.ndarray:
        """Presentation time of every frame, float64 (num_frames,) seconds after frame 0, strictly
        increasing; :class:`TimestampError` when the file has none usable (missing, not
        increasing, not one per frame)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (idempotent)."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_rate(self) -> None:
        if self.num_frames < 1:
            raise VideoReadError(f"{self.name}: no video frames")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise VideoReadError(f"{self.name}: no usable frame rate ({self.fps})")


# --------------------------------------------------------------------------------------------
# decord
# --------------------------------------------------------------------------------------------


def unpad_rows(frames: np.ndarray) -> np.ndarray:
    """Repair decord's frames for widths whose RGB rows it pads (e.g. 8, 16, 24, 48 pixels).

    decord (0.6, dmlc/decord#336) then returns (T, H, W, C') with C' = padded row bytes / W
    and ``get_batch`` fails; the first 3 * W bytes of each row are the real pixels.
    """
    t, h, w, c = frames.shape  # (T, H, W, C') with C' * W = padded row length
    return np.ascontiguousarray(frames.reshape(t, h, w * c)[:, :, : w * 3].reshape(t, h, w, 3))


_decord_quiet = False


def _quiet_decord(decord: Any) -> None:
    """decord's FFmpeg prints a line per damaged file; our own warning says it once."""
    global _decord_quiet
    if not _decord_quiet:
        decord.logging.set_level(decord.logging.QUIET)
        _decord_quiet = True


class DecordReader(VideoReader):
    """decord on the CPU (``decord.cpu(0)``) over a path or in-memory bytes.

    Args:
        source: a file path, or the bytes of an encoded video file.
        num_threads: decoder threads (decord's ``num_threads``; 0 = decord's choice).
        name: name used in error messages (default: the path, or ``<bytes>``).
    """

    backend = "decord"

    def __init__(self, source: Source, num_threads: int = 1, name: str | None = None) -> None:
        import decord

        _quiet_decord(decord)
        self.name = source_name(source, name)
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise VideoReadError(f"{self.name}: empty file (0 bytes)")
            uri: Any = io.BytesIO(bytes(source))
        else:
            uri = os.fspath(source)
            if not os.path.isfile(uri):
                raise FileNotFoundError(f"video file not found: {uri}")
            if os.path.getsize(uri) == 0:
                raise VideoReadError(f"{self.name}: empty file (0 bytes)")
        try:
            self._reader = decord.VideoReader(uri, ctx=decord.cpu(0), num_threads=num_threads)
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps()) if self.num_frames else 0.0
        except Exception as err:  # DECORDError, RuntimeError
            raise VideoReadError(f"{self.name}: cannot open with decord ({_first_line(err)})") from err
        self._check_rate()

    def read(self, indices: Sequence[int]) -> np.ndarray:
        indices = _check_indices(indices, self.num_frames, self.name)
        try:
            first = self._reader[indices[0]].asnumpy()
            if first.shape[-1] == 3:
                return self._reader.get_batch(indices).asnumpy()  # (t, H, W, 3) uint8
            frames = np.stack([first] + [self._reader[i].asnumpy() for i in indices[1:]])
        except Exception as err:
            raise VideoReadError(f"{self.name}: decord failed to decode frames ({_first_line(err)})") from err
        return unpad_rows(frames)  # padded rows: get_batch fails, frames come one by one

    def timestamps(self) -> np.ndarray:
        # decord's index holds every frame's (start, end) time in seconds: no decoding needed
        try:
            spans = np.asarray(self._reader.get_frame_timestamp(list(range(self.num_frames))), dtype=np.float64)
        except Exception as err:
            raise TimestampError(f"{self.name}: no frame timestamps from decord ({_first_line(err)})",
                                 "missing") from err
        return _checked_times(spans.reshape(-1, 2)[:, 0], self.num_frames, self.name)  # (N,)

    def close(self) -> None:
        self._reader = None


# --------------------------------------------------------------------------------------------
# PyAV
# --------------------------------------------------------------------------------------------


class PyAVReader(VideoReader):
    """PyAV (FFmpeg) over a path or in-memory bytes; decodes forward from the nearest keyframe.

    Frame ``i`` is the i-th decoded frame in presentation order. A request that starts more
    than ``seek_after`` seconds into the video seeks to the keyframe before it and numbers the
    frames from their timestamps: by the file's table of packet timestamps (read once, by
    demuxing without decoding), or by the average rate when that table is unusable.

    Args:
        source: a file path, or the bytes of an encoded video file.
        num_threads: decoder threads (FFmpeg frame/slice threading; 0 = FFmpeg's choice).
        name: name used in error messages (default: the path, or ``<bytes>``).
        seek_after: seconds into the file beyond which a read seeks instead of decoding from
            the start.
    """

    backend = "pyav"

    def __init__(self, source: Source, num_threads: int = 1, name: str | None = None,
                 seek_after: float = 2.0) -> None:
        import av

        self.name = source_name(source, name)
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise VideoReadError(f"{self.name}: empty file (0 bytes)")
            self._file: Any = io.BytesIO(bytes(source))
        else:
            path = os.fspath(source)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"video file not found: {path}")
            if os.path.getsize(path) == 0:
                raise VideoReadError(f"{self.name}: empty file (0 bytes)")
            self._file = path
        self.seek_after = seek_after
        self.num_threads = num_threads
        self._container = None
        self._fresh = False
        self._pts: np.ndarray | TimestampError | None = None  # int64 (N,) sorted packet PTS, once read
        try:
            self._container = av.open(self._file)
            if not self._container.streams.video:
                raise VideoReadError(f"{self.name}: no video stream (streams: "
                                     f"{[s.type for s in self._container.streams] or 'none'})")
            stream = self._container.streams.video[0]
            if stream.codec_context is None:  # FFmpeg has no decoder for this codec
                raise VideoReadError(f"{self.name}: unsupported video codec (FFmpeg has no decoder for it)")
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            self.num_frames = int(stream.frames) or self._count_frames(stream)
            self._stream = stream
            self._time_base = float(stream.time_base) if stream.time_base else 0.0
            self._start = stream.start_time or 0
            self._fresh = bool(stream.frames)  # nothing demuxed yet: the first read can use this container
        except VideoReadError:
            self.close()
            raise
        except Exception as err:  # av.error.*: invalid data, decoder not found, ...
            self.close()
            raise VideoReadError(f"{self.name}: cannot open with PyAV ({_first_line(err)})") from err
        self._check_rate()

    def _count_frames(self, stream: Any) -> int:
        """Frames from the packets (some containers, e.g. mkv / webm, store no count)."""
        count = sum(1 for packet in self._container.demux(stream) if packet.size)
        self._container.seek(0)
        return count

    def _new_stream(self) -> Any:
        """A fresh container + stream (a decoder that ran to the end cannot be rewound reliably)."""
        import av

        if not self._fresh:
            if isinstance(self._file, io.BytesIO):
                self._file.seek(0)
            if self._container is not None:
                self._container.close()
            self._container = av.open(self._file)
        self._fresh = False
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = self.num_threads
        return stream

    def _frame_pts(self) -> np.ndarray:
        """int64 (N,) PTS of every frame in presentation order (stream time base), from the packets
        (read once: demuxing without decoding); :class:`TimestampError` when unusable."""
        if self._pts is None:
            try:
                self._pts = self._read_pts()
            except TimestampError as err:
                self._pts = err
        if isinstance(self._pts, TimestampError):
            raise TimestampError(str(self._pts), self._pts.kind)
        return self._pts

    def _read_pts(self) -> np.ndarray:
        try:
            stream = self._new_stream()
            pts = [p.pts for p in self._container.demux(stream) if p.size and not p.is_discard]
        except Exception as err:
            reason = f"cannot read packet timestamps ({_first_line(err)})"
            raise TimestampError(f"{self.name}: {reason}", "missing") from err
        if any(p is None for p in pts):
            raise TimestampError(f"{self.name}: packets without timestamps", "missing")
        table = np.sort(np.asarray(pts, dtype=np.int64))  # decode order -> presentation order
        _checked_times(table.astype(np.float64), self.num_frames, self.name)
        return table

    def timestamps(self) -> np.ndarray:
        if not self._time_base > 0:
            raise TimestampError(f"{self.name}: no stream time base", "missing")
        table = self._frame_pts()
        return (table - table[0]) * self._time_base  # (N,) seconds

    def read(self, indices: Sequence[int]) -> np.ndarray:
        indices = _check_indices(indices, self.num_frames, self.name)
        wanted = set(indices)
        first, last = min(wanted), max(wanted)
        try:
            got = self._decode_range(first, last, wanted, seek=first / self.fps > self.seek_after)
            if first not in got:  # the seek landed after the first wanted frame: decode from the start
                got = self._decode_range(first, last, wanted, seek=False)
        except Exception as err:
            raise VideoReadError(f"{self.name}: PyAV failed to decode frames ({_first_line(err)})") from err
        missing = sorted(wanted - set(got))
        if missing:
            raise VideoReadError(f"{self.name}: only {len(got)} of the requested frames decoded "
                                 f"(frame {missing[0]} of {self.num_frames} missing; truncated file?)")
        return np.stack([got[i] for i in indices])  # (t, H, W, 3)

    def _decode_range(self, first: int, last: int, wanted: set[int], seek: bool) -> dict[int, np.ndarray]:
        table = None
        if seek and self._time_base > 0:
            try:
                table = self._frame_pts()  # (N,) exact for any frame rate
            except TimestampError:
                table = None  # numbered by the average rate instead
        stream = self._new_stream()
        got: dict[int, np.ndarray] = {}
        use_pts = False
        if seek and self._time_base > 0:
            if table is not None:
                target = int(table[first])
            else:
                target = self._start + int((first / self.fps) / self._time_base)
            self._container.seek(target, stream=stream, backward=True, any_frame=False)
            use_pts = True
        index = -1
        for frame in self._container.decode(stream):
            if use_pts and frame.pts is not None:
                if table is not None:
                    index = int(frames_at_times(table, [frame.pts])[0])
                else:
                    index = round((frame.pts - self._start) * self._time_base * self.fps)
            else:
                index += 1
            if index > last:
                break
            if index in wanted:
                got[index] = _displayed(frame)
        return got

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _displayed(frame: Any) -> np.ndarray:
    """uint8 (H, W, 3) of a PyAV frame, rotated as its display matrix says (counter-clockwise)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


# --------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------

_READERS: dict[str, type[VideoReader]] = {"decord": DecordReader, "pyav": PyAVReader}


def open_video(source: Source, backend: Backend = "decord", num_threads: int = 1,
               name: str | None = None) -> VideoReader:
    """Open ``source`` (path or bytes) with the named backend: ``"decord"`` or ``"pyav"``."""
    if backend not in _READERS:
        raise ValueError(f"unknown video backend {backend!r}; use one of {BACKENDS}")
    return _READERS[backend](source, num_threads=num_threads, name=name)


def read_video_frames(source: Source, indices: Sequence[int] | None = None, backend: Backend = "decord",
                      num_threads: int = 1, name: str | None = None, fallback: bool = True) -> np.ndarray:
    """Frames ``indices`` (None: all) of ``source`` as uint8 (t, H, W, 3).

    With ``fallback`` a file that decord cannot open or decode is read again with PyAV.
    """
    try:
        with open_video(source, backend, num_threads, name) as reader:
            return reader.read(range(reader.num_frames) if indices is None else indices)
    except VideoReadError:
        if not fallback or backend == "pyav":
            raise
        with open_video(source, "pyav", num_threads, name) as reader:
            return reader.read(range(reader.num_frames) if indices is None else indices)
