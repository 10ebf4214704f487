"""Random-number state for exact resume: the training steps draw from their own saved stream.

Lightning's checkpoint holds no RNG state, so after a resume the diffusion times, noise and
caption dropout (drawn from the global torch RNG in ``training_step``) would differ from an
uninterrupted run. :class:`RNGState` keeps one *training stream* per rank — the torch CPU, CUDA,
numpy and python RNG states — that is live only between ``on_train_batch_start`` and
``on_train_batch_end``; between steps the global RNGs run on a separate *outside stream*. So
what happens between steps (validation, sample videos, loader iteration at an epoch start, a
checkpoint save, a resume) never shifts the training's random numbers, and the checkpoint only
needs the training stream (all ranks' states, gathered to rank 0).

On a fresh multi-process run, ranks other than 0 reseed their training stream with
``derive_seed(seed, rank)`` so ranks draw different noise (``seed_everything`` gives every rank
the same seed).

DataLoader workers hold no state worth saving: randomness inside datasets is a function of
``(seed, epoch, index)`` (see :mod:`latentvid.data.sampler`).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from latentvid.data.sampler import derive_seed

OUTSIDE_STREAM = 1  # derive_seed(seed, rank, OUTSIDE_STREAM) seeds the between-steps stream


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states as plain tensors / tuples (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global RNGs to a state from :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's ``random`` from one integer."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _world(trainer: Trainer) -> tuple[int, int]:
    return trainer.global_rank, trainer.world_size


class RNGState(Callback):
    """Save and restore the training's RNG streams (one per rank) in checkpoints.

    Args:
        seed: base seed for deriving per-rank streams; ``None`` uses the run's
            ``seed_everything`` value (``PL_GLOBAL_SEED``), or 0.
        per_rank_streams: on a fresh run with several processes, give ranks > 0 their own
            training stream (``derive_seed(seed, rank)``).
    """

    def __init__(self, seed: int | None = None, per_rank_streams: bool = True) -> None:
        self.seed = seed
        self.per_rank_streams = per_rank_streams
        self._training: dict[str, Any] | None = None  # this rank's training stream between steps
        self._outside: dict[str, Any] | None = None  # the global RNGs' state while a step runs
        self._loaded: list[dict[str, Any]] | None = None  # all ranks' streams from a checkpoint
        self._trainer: Trainer | None = None

    def _base_seed(self) -> int:
        return self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank, world = _world(trainer)
        if self._loaded is not None:
            if len(self._loaded) == world:
                self._training = self._loaded[rank]
            else:
                rank_zero_warn(f"the checkpoint holds RNG states of {len(self._loaded)} processes, this run has "
                               f"{world}: reseeding each rank's stream (random draws will differ from the saved run)")
                self._training = self._seeded(derive_seed(self._base_seed(), rank, trainer.global_step))
            self._loaded = None
        elif rank > 0 and self.per_rank_streams:
            self._training = self._seeded(derive_seed(self._base_seed(), rank))
        else:
            self._training = capture_rng_state()  # rank 0 continues the seed_everything stream
        # the outside stream starts elsewhere so it never repeats the training's numbers
        seed_all(derive_seed(self._base_seed(), rank, OUTSIDE_STREAM))

    @staticmethod
    def _seeded(seed: int) -> dict[str, Any]:
        outside = capture_rng_state()
        seed_all(seed)
        state = capture_rng_state()
        restore_rng_state(outside)
        return state

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._training is not None:
            self._outside = capture_rng_state()
            restore_rng_state(self._training)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._outside is not None:
            self._training = capture_rng_state()
            restore_rng_state(self._outside)
            self._outside = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # an exception inside a step: keep the training stream of the last finished step
        if self._outside is not None:
            restore_rng_state(self._outside)
            self._outside = None

    def state_dict(self) -> dict[str, Any]:
        # saved from inside a step (a callback in on_train_batch_end before this one): the live state
        mine = self._training if self._training is not None and self._outside is None else capture_rng_state()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(states, mine)  # every rank dumps the checkpoint; rank 0 writes it
        else:
            states = [mine]
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = list(state_dict["ranks"])
