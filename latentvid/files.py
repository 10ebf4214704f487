"""Atomic file writes: a file appears whole or not at all.

A crash, a ``kill -9`` or a reader in another process never sees half a video, index or report: each
is written to a hidden temporary file beside its target and renamed over it only when complete.
(Checkpoints have their own streaming writer, :mod:`latentvid.callbacks.checkpoint_io`.)
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_text_atomic", "write_json_atomic"]


@functools.lru_cache(maxsize=1)
def new_file_mode() -> int:
    """The mode ``open()`` would give a new file under this process's umask (0o644 under 0o022). Read once:
    reading the umask means setting it, which another thread could see for that instant."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (its folder created); the file written there replaces
    ``path`` only if the block succeeds and is removed otherwise. ``keep_suffix``: the temporary name
    ends in ``path``'s suffix, for writers that choose the format by it (video containers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=f".tmp{path.suffix}" if keep_suffix else ".tmp")
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes the file private (0o600); give it the mode any other new file gets, so that a
        # video or report others could read (a shared cluster folder) still can be
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically -> the path."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2, **dumps: Any) -> Path:
    """Write ``obj`` as JSON (``json.dumps(obj, indent=indent, **dumps)`` and a newline) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps) + "\n")
