"""Record what every rank trained on, step by step, as JSON lines in the run directory.

``StepRecorder`` appends one line per training batch to ``<dir>/steps-rank{R}.jsonl``::

    {"step": 5, "epoch": 0, "batch_idx": 4, "rank": 0, "loss": 0.81, "keys": ["clip_003", ...]}

a ``{"event": "start", ...}`` line when a process starts training, and, at each validation end,
``{"validation": true, "step": ..., "rank": ..., "metrics": {...}, "batch_losses": [...]}`` with
the synced ``val/*`` metrics and this rank's own batch losses.
Useful to audit data order across ranks and restarts, and what the resume tests compare. Files
are appended to, so a resumed run continues the same file when it writes into the same folder.

    trainer:
      callbacks:
        - class_path: latentvid.callbacks.recorder.StepRecorder
          init_args: {dirpath: runs/x/steps}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from latentvid.callbacks.numerics import batch_keys


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().float().item() if value.numel() == 1 else None
    if isinstance(value, dict):
        value = value.get("loss")
        return _scalar(value) if value is not None else None
    return float(value) if isinstance(value, (int, float)) else None


class StepRecorder(Callback):
    """Write per-step losses and sample keys of every rank to JSON-lines files.

    Args:
        dirpath: folder for ``steps-rank{R}.jsonl``; ``None``: ``<trainer.log_dir>/steps``
            (rank 0's log folder, shared by all ranks), else ``<default_root_dir>/steps``.
        max_keys: at most this many sample keys per line.
    """

    def __init__(self, dirpath: str | None = None, max_keys: int = 64) -> None:
        self.dirpath = dirpath
        self.max_keys = max_keys
        self._file: Path | None = None
        self._val_losses: list[float] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        folder = self.dirpath
        if folder is None:
            # trainer.log_dir is rank 0's, broadcast (a collective: every rank runs setup)
            folder = os.path.join(trainer.log_dir or trainer.default_root_dir, "steps")
        self._file = Path(folder) / f"steps-rank{trainer.global_rank}.jsonl"
        self._file.parent.mkdir(parents=True, exist_ok=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # marks where a (resumed) process starts appending to the same file
        self._write({"event": "start", "step": trainer.global_step, "rank": trainer.global_rank,
                     "world_size": trainer.world_size, "ckpt_path": trainer.ckpt_path})

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            with open(self._file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._write({"step": trainer.global_step, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
                     "rank": trainer.global_rank, "loss": _scalar(outputs),
                     "keys": batch_keys(batch, self.max_keys)})

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_losses = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        loss = _scalar(outputs)
        if loss is not None:
            self._val_losses.append(loss)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._write({"validation": True, "step": trainer.global_step, "rank": trainer.global_rank,
                     "metrics": metrics, "batch_losses": self._val_losses})
