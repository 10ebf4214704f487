"""Tell resumable samplers how far the model got, so checkpoints hold the data position.

Only the training loop knows how many batches the *model* has consumed: the DataLoader and
Lightning's fetcher read ahead. After every training batch, :class:`DataPosition` sets each
training loader's :class:`latentvid.data.sampler.ResumableSampler` to ``(epoch, batches done x
batch size x world size)`` from Lightning's own progress counters; the sampler's state goes into
the checkpoint with the loader (Lightning saves the state of stateful training loaders) and a
resumed run continues with the next unseen draw (a sampler of whole steps, such as
:class:`latentvid.data.bucket_batches.BucketSampler`, says so with ``draws_per_step`` and is set to
the steps done). A position at the end of an epoch (also one cut
short by ``limit_train_batches``) is saved as the start of the next epoch, which is where
Lightning resumes.

Streams resume through their own state (:class:`latentvid.data.video_text.VideoTextDataModule`
saves the shards / row blocks consumed in the epoch and a resumed stream, reseeded by (seed,
epoch), leaves them out). Any other training loader that saves no position is reported once at
the start of training: a run resumed mid-epoch replays its epoch from the start.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from latentvid.data.sampler import ResumableSampler


def train_loaders(trainer: Trainer) -> list[Any]:
    """The training loaders, flattened out of any dict / list the module or datamodule returned."""
    found, todo = [], [trainer.train_dataloader]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif item is not None:
            found.append(item)
    return found


def resumable_sampler(loader: Any) -> ResumableSampler | None:
    """A loader's ResumableSampler (as its sampler or inside its batch sampler), or None."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, ResumableSampler):
            return sampler
    return None


def _batch_size(loader: DataLoader) -> int | None:
    return loader.batch_size if loader.batch_size is not None else getattr(loader.batch_sampler, "batch_size", None)


class DataPosition(Callback):
    """Keep training loaders' resumable samplers at the model's position (see the module docstring)."""

    def __init__(self) -> None:
        self._warned = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # streams (IterableDataset) resume through their own state: the loader's or the datamodule's
        # (latentvid.data.video_text.VideoTextDataModule saves the units consumed per epoch)
        dm = trainer.datamodule
        dm_stateful = dm is not None and type(dm).state_dict is not LightningDataModule.state_dict
        plain = [type(dl).__name__ for dl in train_loaders(trainer) if resumable_sampler(dl) is None
                 and not hasattr(dl, "state_dict")
                 and not (isinstance(getattr(dl, "dataset", None), IterableDataset) and dm_stateful)]
        if plain and not self._warned:
            self._warned = True
            rank_zero_warn(f"training loader(s) {plain} save no data position: a run resumed in the middle of an "
                           "epoch starts that epoch's data again (use latentvid.data.sampler.ResumableSampler)")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # batches of this epoch, resumed ones too
        epoch_over = done >= trainer.num_training_batches
        for loader in train_loaders(trainer):
            sampler = resumable_sampler(loader)
            per_step = getattr(sampler, "draws_per_step", None)  # a sampler of whole steps (bucketed batches)
            size = _batch_size(loader) if isinstance(loader, DataLoader) else None
            if sampler is None or (size is None and per_step is None):
                continue
            if epoch_over:
                sampler.set_position(sampler.epoch + 1, 0)
            elif per_step is not None:
                sampler.set_position(sampler.epoch, done * per_step)
            else:
                sampler.set_position(sampler.epoch, done * size * sampler.num_replicas)

