"""Log how many bad samples the data pipeline skipped: ``data/skipped`` and an end-of-epoch summary.

The datasets skip a sample they cannot use (a missing or undecodable file, a broken shard, an
undecodable caption, ...) with a warning naming it, and every batch says how many were skipped
since the previous one (``batch["skipped"]``, an int, and ``batch["skipped_names"]``; see
:mod:`latentvid.data.stream`). This callback adds them up::

    trainer:
      callbacks:
        - class_path: latentvid.callbacks.data_health.DataHealth

It logs ``data/skipped`` (skipped training samples since the start of the run, summed over
ranks) every step and ``data/val_skipped`` per validation, and prints a one-line summary per
training epoch with the first few names. Its count is saved in checkpoints, so a resumed run
continues it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


def batch_skipped(batch: Any) -> tuple[int, list[str]]:
    """(count, names) of the samples skipped before ``batch``; (0, []) for batches without them."""
    if not isinstance(batch, dict):
        return 0, []
    return int(batch.get("skipped", 0)), list(batch.get("skipped_names", ()))


class DataHealth(Callback):
    """Count skipped samples and log them (see the module docstring).

    Args:
        max_names: how many skipped names the epoch summary lists.
        sync_dist: sum ``data/skipped`` over ranks (one small all-reduce per logged step).
    """

    def __init__(self, max_names: int = 5, sync_dist: bool = True) -> None:
        self.max_names = max_names
        self.sync_dist = sync_dist
        self.total = 0          # training samples skipped on this rank since the run started
        self.epoch_skipped = 0  # ... in the current training epoch
        self.epoch_names: list[str] = []
        self.val_skipped = 0

    def _note(self, batch: Any) -> int:
        count, names = batch_skipped(batch)
        room = self.max_names - len(self.epoch_names)
        if room > 0:
            self.epoch_names.extend(names[:room])
        return count

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch_skipped, self.epoch_names = 0, []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        count = self._note(batch)
        self.total += count
        self.epoch_skipped += count
        pl_module.log("data/skipped", float(self.total), on_step=True, on_epoch=False, reduce_fx="sum",
                      sync_dist=self.sync_dist, batch_size=1)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.val_skipped = 0

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.val_skipped += batch_skipped(batch)[0]

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        pl_module.log("data/val_skipped", float(self.val_skipped), on_step=False, on_epoch=True, reduce_fx="sum",
                      sync_dist=self.sync_dist, batch_size=1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        counts = torch.tensor([self.epoch_skipped, self.total], dtype=torch.long, device=pl_module.device)
        epoch_skipped, total = (int(x) for x in trainer.strategy.reduce(counts, reduce_op="sum").tolist())
        line = f"data: epoch {trainer.current_epoch}: {epoch_skipped} samples skipped ({total} since the start)"
        if self.epoch_names:
            line += "; e.g. " + " | ".join(self.epoch_names)
        rank_zero_info(line)

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = int(state_dict.get("total", 0))
