"""Tests for latentvid/callbacks/checkpoint_io.py: a save that dies half way leaves the old checkpoint loadable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from latentvid.callbacks.checkpoint_io import AtomicCheckpointIO, CheckpointReadError, temp_path
from latentvid.callbacks.faults import CrashingCheckpointIO


def _ckpt(value: float, n: int = 200_000) -> dict:
    return {"global_step": int(value), "state_dict": {"w": torch.full((n,), value)}}


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_save_round_trips_and_replaces_without_leftovers(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint(_ckpt(1.0), path)  # creates the folder
    io.save_checkpoint(_ckpt(2.0), path)
    state = _load(path)
    assert state["global_step"] == 2 and torch.equal(state["state_dict"]["w"], torch.full((200_000,), 2.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert io.load_checkpoint(path)["global_step"] == 2


def test_a_writer_failing_mid_file_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1.0), path)
    before = path.read_bytes()
    with pytest.raises(OSError, match="injected failure"):
        CrashingCheckpointIO(on_save=1, mode="raise").save_checkpoint(_ckpt(2.0), path)
    assert path.read_bytes() == before and _load(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the partial file was removed


def test_kill_9_during_a_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1.0), path)
    script = textwrap.dedent(f"""
        import torch
        from latentvid.callbacks.faults import CrashingCheckpointIO
        ckpt = {{"global_step": 2, "state_dict": {{"w": torch.full((200_000,), 2.0)}}}}
        CrashingCheckpointIO(on_save=1, fraction=0.5, mode="kill").save_checkpoint(ckpt, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert _load(path)["global_step"] == 1, "the old checkpoint is intact and loadable"
    partial = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(partial) == 1 and partial[0].name.startswith(".last.ckpt.tmp-")
    assert 0 < partial[0].stat().st_size < path.stat().st_size  # the kill really came mid-write
    with pytest.raises(CheckpointReadError, match=str(partial[0].name)):
        AtomicCheckpointIO().load_checkpoint(partial[0])
    AtomicCheckpointIO().save_checkpoint(_ckpt(3.0), path)  # the next save clears the dead writer's file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"] and _load(path)["global_step"] == 3


def test_unreadable_checkpoints_are_named(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    for name, data in (("empty.ckpt", b""), ("text.ckpt", b"not a checkpoint")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointReadError, match=rf"checkpoint .*{name} cannot be read"):
            io.load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def test_a_live_writers_temporary_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = path.with_name(temp_path(path).name.rsplit("-", 1)[0] + f"-{other.pid}")
        live.write_bytes(b"partial")
        AtomicCheckpointIO().save_checkpoint(_ckpt(1.0, n=10), path)
        assert live.exists(), "another process on this host is still writing it"
    finally:
        other.kill()
        other.wait()
    AtomicCheckpointIO().save_checkpoint(_ckpt(1.0, n=10), path)
    assert not live.exists()
