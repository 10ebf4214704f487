"""Crash-safe checkpoint files: write a temporary file beside the target, fsync, rename.

A process killed in the middle of a save (``kill -9``, OOM killer, node failure) leaves the
previous checkpoint of that name untouched and at most a hidden ``.NAME.tmp-HOST-PID`` file,
which the next save into that folder removes once its writer is gone. Lightning's default
writer serialises the whole checkpoint into memory first and does not fsync; this one streams
to disk and syncs file and folder, so after ``save_checkpoint`` returns the new file survives a
power cut.

:class:`latentvid.cli.LatentVidCLI` installs it in every run; elsewhere::

    trainer:
      plugins:
        - class_path: latentvid.callbacks.checkpoint_io.AtomicCheckpointIO

Remote paths (``s3://`` and other fsspec URLs) are handed to Lightning's writer unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import socket
from pathlib import Path
from typing import IO, Any, Callable

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)
TMP_MARKER = ".tmp-"


class CheckpointReadError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, or not a checkpoint)."""


class ResumeError(ValueError):
    """A readable checkpoint that cannot resume this run (it was written by a differently set-up one)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (usually a full disk); the previous file of that name is kept."""


def _free_space(folder: Path) -> str:
    """Free space on ``folder``'s file system, for error messages ("unknown" where it cannot be read)."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB"
    except OSError:
        return "unknown"


def temp_path(path: Path) -> Path:
    """Where ``path`` is written before the rename: a hidden sibling naming this host and process."""
    return path.with_name(f".{path.name}{TMP_MARKER}{socket.gethostname()}-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not possible on every OS / file system: then skip)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that owns temporary file ``tmp`` may still be writing it."""
    host, _, pid = tmp.name.rpartition(TMP_MARKER)[2].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's writer (shared file system): cannot tell, leave it
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temporary files for ``path`` whose writers on this host are gone; returns them."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}{TMP_MARKER}*"):
        if not _writer_alive(tmp):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that replaces checkpoint files atomically (see the module docstring).

    Loading is Lightning's, except that an unreadable file raises :class:`CheckpointReadError`
    naming it instead of a deep unpickling error.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path).expanduser().absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            with open(tmp, "wb") as f:
                self._write(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old or the new file
        except BaseException as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            # torch.save reports a short write as "RuntimeError: ... unexpected pos N vs M", which names
            # neither the file nor the cause; say both (free space is read after the partial file is gone)
            if isinstance(err, (OSError, RuntimeError)) and not isinstance(err, CheckpointWriteError):
                first_line = next(iter(str(err).splitlines()), "")
                raise CheckpointWriteError(
                    f"could not write checkpoint {path} ({type(err).__name__}: {first_line}); "
                    f"{_free_space(path.parent)} free on its file system, and a full disk is the usual "
                    "cause. The previous checkpoint of that name is untouched."
                ) from err
            raise
        _fsync_dir(path.parent)
        for stale in remove_stale_temps(path):
            log.info("removed %s, left by a writer that was killed", stale)

    def _write(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
        """Serialise ``checkpoint`` into the open temporary file (a seam for fault-injection tests)."""
        torch.save(checkpoint, f)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (FileNotFoundError, MemoryError):
            raise
        except Exception as err:  # torch.load fails in many ways on a damaged file (zip, EOF, KeyError, ...)
            if isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower():
                raise  # a sound checkpoint holding objects that weights_only loading refuses
            first_line = next(iter(str(err).splitlines()), "")
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read ({type(err).__name__}: {first_line}); it is truncated "
                "or not a checkpoint: resume from another one"
            ) from err
