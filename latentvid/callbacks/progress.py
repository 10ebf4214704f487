"""A progress bar that counts optimiser steps out of ``max_steps`` on step-limited runs.

Lightning's bars count batches per epoch, and on a run limited by ``max_steps`` (``max_epochs``
unset, i.e. -1) read "Epoch 73/-2" (the rich bar) or restart at every epoch of a streamed data set
without a length. :class:`StepProgressBar` keeps one bar for the whole run instead: ``global_step``
out of ``max_steps`` (a resumed run starts at its step), with the epoch in the description only
where it means something: ``epoch 3/9`` on an epoch-limited run, ``epoch 3`` when epochs have a
known length, nothing for an endless stream. Runs without ``max_steps`` get Lightning's bar.

:class:`latentvid.cli.LatentVidCLI` puts it in place of Lightning's default tqdm bar; another bar
chosen in the config (``trainer.callbacks``) is kept, and ``trainer.enable_progress_bar: false``
still turns it off.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


def train_description(trainer: Trainer) -> str:
    """The training bar's label: ``"train"``, plus the epoch where it means something."""
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    if max_epochs > 0 and trainer.max_steps <= 0:
        return f"train, epoch {trainer.current_epoch}/{max_epochs - 1}"
    batches = trainer.num_training_batches
    if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
        return f"train, epoch {trainer.current_epoch}"
    return "train"


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting ``global_step`` / ``max_steps`` over the whole run when
    ``max_steps`` is set (see the module docstring). Same arguments as ``TQDMProgressBar``."""

    def _by_step(self, trainer: Trainer) -> bool:
        return trainer.max_steps > 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._by_step(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.n = bar.initial = trainer.global_step  # a resumed run starts where it stopped
            bar.set_description(train_description(trainer))
            bar.refresh()

    def on_train_epoch_start(self, trainer: Trainer, *args: Any) -> None:
        if not self._by_step(trainer):
            super().on_train_epoch_start(trainer, *args)
            return
        self.train_progress_bar.set_description(train_description(trainer))  # one bar: no reset per epoch

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._by_step(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        step = trainer.global_step  # optimiser steps (batches / accumulate_grad_batches)
        if bar is not None and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._by_step(trainer):
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
