"""Frame times of variable-frame-rate files: pure checks and the frame nearest each wanted time.

A file whose presentation timestamps (PTS) are evenly spaced is sampled by its frame rate
(:func:`latentvid.data.clips.sample_frame_indices`); one whose PTS are not is sampled by time
(:func:`latentvid.data.clips.sample_frame_times`), taking for each wanted time the frame whose
PTS is nearest (:func:`frames_at_times`). The readers report the PTS
(:meth:`latentvid.data.readers.VideoReader.timestamps`); :func:`timestamp_problem` says why a
list of them cannot be used, and :func:`note_fallback` counts and logs files that are then
sampled by their average rate instead.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

log = logging.getLogger("latentvid.data")

# PTS within this fraction of a frame period of an even grid count as constant rate: timestamps
# are rounded to the container's time base (Matroska: 1 ms, so 29.97 fps steps 33 / 34 ms), and
# a grid that close picks the same frames as the average rate does.
EVEN_TOLERANCE = 0.1

# tie-break slack (seconds) for a wanted time halfway between two frames: decord reports times
# as float32 (errors ~1e-7 s), far below any frame period
_EPS = 1e-6


def timestamp_problem(timestamps: np.ndarray, num_frames: int) -> tuple[str, str] | None:
    """Why ``timestamps`` (N,) (seconds, one per frame in reading order) cannot place the
    ``num_frames`` frames of a file in time: ``(kind, detail)``, or None when they can.

    ``kind`` is one of ``"missing"``, ``"count"``, ``"not finite"``, ``"not increasing"``
    (a short key for counting); ``detail`` is a one-line message.
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        return "missing", "no frame timestamps"
    if ts.size != num_frames:
        return "count", f"{ts.size} frame timestamps for {num_frames} frames"
    if not np.isfinite(ts).all():
        return "not finite", "frame timestamps that are not finite numbers"
    steps = np.diff(ts)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0))
        return "not increasing", (f"frame timestamps not increasing (frame {i + 1} at {ts[i + 1]:.6g} s "
                                  f"after frame {i} at {ts[i]:.6g} s)")
    return None


def is_constant_rate(timestamps: np.ndarray, tolerance: float = EVEN_TOLERANCE) -> bool:
    """True when the increasing ``timestamps`` (N,) lie within ``tolerance`` frame periods of the
    even grid from the first to the last (fewer than 3 frames are always even)."""
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if ts.size < 3:
        return True
    period = (ts[-1] - ts[0]) / (ts.size - 1)
    grid = ts[0] + period * np.arange(ts.size)  # (N,)
    return bool(np.abs(ts - grid).max() <= tolerance * period)


def frames_at_times(timestamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame whose timestamp is nearest each wanted time.

    Args:
        timestamps: (N,) strictly increasing frame times (seconds), N >= 1.
        times: (T,) wanted times (seconds, same clock), any order.

    Returns:
        (T,) int64 indices into ``timestamps``. A time halfway between two frames takes the
        earlier one (the frame on screen then); times outside the file take its first / last frame.
    """
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    want = np.asarray(times, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        raise ValueError("frames_at_times: no frame timestamps")
    if (np.diff(ts) <= 0).any():
        raise ValueError("frames_at_times: timestamps must be strictly increasing")
    if ts.size == 1:
        return np.zeros(want.shape, dtype=np.int64)
    after = np.clip(np.searchsorted(ts, want, side="left"), 1, ts.size - 1)  # ts[after - 1] < t <= ts[after]
    before = after - 1
    later = (ts[after] - want) < (want - ts[before]) - _EPS
    return np.where(later, after, before).astype(np.int64)


# files sampled by their average rate because their timestamps could not be used, per kind
# (per process: each DataLoader worker counts its own)
fallbacks: Counter[str] = Counter()


def note_fallback(name: str, kind: str, detail: str) -> None:
    """Count a file whose timestamps could not be used; log the first file of each ``kind``."""
    fallbacks[kind] += 1
    if fallbacks[kind] == 1:
        log.warning("%s: %s; sampling by the average frame rate (further files with %s timestamps are "
                    "counted in latentvid.data.timestamps.fallbacks, not logged)", name, detail, kind)
