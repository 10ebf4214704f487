"""Fault injection, to prove the resilience machinery on a real run (and to drill a cluster setup).

* :class:`PoisonBatch` turns the inputs of the first sample of chosen training steps into NaN
  (tests the numerical guard).
* :class:`KillAtStep` sends a signal (SIGKILL by default: no clean-up possible) to its own process
  just before a chosen training step (tests exact resume after a crash).
* :class:`CrashingCheckpointIO` is an :class:`~latentvid.callbacks.checkpoint_io.AtomicCheckpointIO`
  that dies, or raises, half way through writing its n-th checkpoint (tests crash-safe saving).
* :class:`RecordingCheckpointIO` notes every file it writes, with the writing process (shows that
  only one rank writes under DDP).

Steps are counted like ``trainer.global_step`` after the step: step 1 is the first optimiser step.
Nothing here belongs in a real recipe.
"""

from __future__ import annotations

import io
import json
import os
import signal as signals
from typing import IO, Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from latentvid.callbacks.checkpoint_io import AtomicCheckpointIO

INPUT_KEYS = ("video", "latents")


class PoisonBatch(Callback):
    """Fill the first sample's ``video`` / ``latents`` with NaN at the given training steps.

    Args:
        steps: training steps (1-based, as ``global_step`` after them) whose batch is poisoned.
        value: the value written (``nan`` or ``inf``).
        rank: poison only on this global rank (``None``: every rank).
    """

    def __init__(self, steps: list[int], value: float = float("nan"), rank: int | None = None) -> None:
        self.steps = {int(s) for s in steps}
        self.value = float(value)
        self.rank = rank

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step + 1 not in self.steps or not isinstance(batch, dict):
            return
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        for key in INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                x = batch[key].clone()
                x[0] = self.value
                batch[key] = x  # the same dict object goes on to training_step


class KillAtStep(Callback):
    """Send ``signal`` to this process just before training step ``step`` (after ``step - 1`` steps).

    Args:
        step: the training step (1-based) that is never reached (SIGKILL) or is the last (SIGTERM).
        signal: signal name, e.g. ``SIGKILL`` (a crash) or ``SIGTERM`` (a polite preemption).
        rank: only this global rank signals itself.
    """

    def __init__(self, step: int, signal: str = "SIGKILL", rank: int = 0) -> None:
        self.step = int(step)
        self.signal = signals.Signals[signal.upper()]
        self.rank = rank
        self.sent = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # once (with gradient accumulation a step spans several batches)
        if trainer.global_step + 1 == self.step and trainer.global_rank == self.rank and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signal)


class CrashingCheckpointIO(AtomicCheckpointIO):
    """Write checkpoints atomically, except that save number ``on_save`` (1-based, counted in this
    process) stops after writing ``fraction`` of its bytes: the process SIGKILLs itself
    (``mode="kill"``) or the write raises ``OSError`` (``mode="raise"``).
    """

    def __init__(self, on_save: int = 1, fraction: float = 0.5, mode: Literal["kill", "raise"] = "kill") -> None:
        super().__init__()
        if not 0.0 <= fraction < 1.0 or mode not in ("kill", "raise"):
            raise ValueError(f"need 0 <= fraction < 1 and mode 'kill' or 'raise', got {fraction}, {mode!r}")
        self.on_save, self.fraction, self.mode = int(on_save), fraction, mode
        self.saves = 0

    def _write(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
        self.saves += 1
        if self.saves != self.on_save:
            return super()._write(checkpoint, f)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        f.write(data[: int(len(data) * self.fraction)])
        f.flush()
        os.fsync(f.fileno())  # the partial file really is on disk when the writer dies
        if self.mode == "kill":
            os.kill(os.getpid(), signals.SIGKILL)
        raise OSError(f"injected failure after {int(len(data) * self.fraction)} of {len(data)} bytes")


class RecordingCheckpointIO(AtomicCheckpointIO):
    """Write checkpoints atomically and append ``{"path", "pid", "rank"}`` per write to ``log_file``
    (``rank`` from the ``RANK`` / ``LOCAL_RANK`` environment variables launchers set)."""

    def __init__(self, log_file: str) -> None:
        super().__init__()
        self.log_file = log_file

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": str(path), "pid": os.getpid(), "rank": int(rank)}) + "\n")
