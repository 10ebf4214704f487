"""Resumable, rank-aware sampling for map-style datasets.

Each epoch's draw order is a pure function of ``(seed, epoch)``, so a run can stop anywhere and
continue with exactly the draws it had not trained on yet:

* :class:`ResumableSampler` draws ``epoch_size`` indices per epoch (weighted or uniform, with or
  without replacement) from a generator seeded with ``derive_seed(seed, epoch)``, and gives rank
  ``r`` of ``W`` the positions ``r, r + W, r + 2W, ...`` of that order, so ranks never share a
  draw. Its ``state_dict`` holds the epoch and how many draws the *model* has consumed in it (set
  with :meth:`ResumableSampler.set_position` by whoever knows: the training loop, or
  :class:`latentvid.callbacks.data_position.DataPosition` under Lightning); what the DataLoader
  has prefetched does not count. After ``load_state_dict`` the next iteration skips those draws.
* :class:`ResumableDataLoader` is a plain DataLoader that exposes its sampler's state. Lightning
  (2.x) saves ``state_dict()`` of every training loader that has one in the checkpoint's loop
  state and calls ``load_state_dict()`` before it iterates on resume.

The sampler subclasses ``DistributedSampler`` only so that Lightning does not wrap it in its
``DistributedSamplerWrapper`` (which would re-shuffle and hide the position); it shards itself,
reading the rank and world size from ``torch.distributed`` when they are not given.

Randomness inside datasets (random crops, clip starts) must not come from a DataLoader worker's
RNG, whose seed depends on the global RNG at the moment the loader is iterated (different after
a resume). Draw it from a generator seeded with ``derive_seed(seed, epoch, index)`` instead; then
there is no worker RNG state to save.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

STATE_VERSION = 1


def derive_seed(*values: int) -> int:
    """A 63-bit seed that is a fixed, platform-independent function of the given integers.

    ``derive_seed(seed, epoch)`` seeds an epoch's order; ``derive_seed(seed, epoch, index)`` is
    the seed a dataset should use for the random choices it makes for one sample.
    """
    data = ",".join(str(int(v)) for v in values).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & (2**63 - 1)


def _dist_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(DistributedSampler):
    """Draw ``epoch_size`` indices of ``range(num_items)`` per epoch, resumable and sharded over ranks.

    Args:
        num_items: size of the dataset.
        epoch_size: draws per epoch over all ranks (default ``num_items``). Each rank gets
            ``epoch_size // world_size`` of them; the remainder is not drawn.
        weights: per-item sampling weights (num_items,), not necessarily normalised; ``None``
            draws uniformly.
        replacement: draw with replacement (an item can appear several times in an epoch); without
            it an epoch is a (weighted) permutation and ``epoch_size`` must not exceed the number
            of items with non-zero weight.
        seed: the order of epoch ``e`` is fixed by ``(seed, e)``.
        num_replicas, rank: the world size and this process's rank; ``None`` reads them from
            ``torch.distributed`` when it is initialised (1 and 0 otherwise).
        min_per_replica: each rank draws at least this many per epoch: an epoch is
            ``max(epoch_size, min_per_replica * world_size)`` draws (with replacement only), so a
            set smaller than a batch per rank still fills one.
    """

    def __init__(
        self,
        num_items: int,
        epoch_size: int | None = None,
        weights: Sequence[float] | torch.Tensor | None = None,
        replacement: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        min_per_replica: int = 0,
    ) -> None:
        Sampler.__init__(self)  # not DistributedSampler.__init__: it wants a dataset and a process group now
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = int(num_items)
        self._epoch_size = self.num_items if epoch_size is None else int(epoch_size)
        if self._epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {self._epoch_size}")
        if min_per_replica < 0 or (min_per_replica and not replacement):
            raise ValueError(f"min_per_replica={min_per_replica} must be >= 0, and needs replacement=True")
        self.min_per_replica = int(min_per_replica)
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.double).flatten()
            if w.numel() != self.num_items or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights must be {self.num_items} finite, non-negative values with a positive sum")
            self.weights = w
        available = self.num_items if self.weights is None else int((self.weights > 0).sum())
        if not replacement and self._epoch_size > available:
            raise ValueError(f"epoch_size {self._epoch_size} exceeds the {available} drawable items "
                             "without replacement")
        self.replacement = replacement
        self.seed = int(seed)
        if num_replicas is not None and (num_replicas < 1 or rank is None or not 0 <= rank < num_replicas):
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}")
        self._num_replicas, self._rank = num_replicas, rank
        self.epoch = 0
        self.shuffle, self.drop_last, self.dataset = True, True, None  # DistributedSampler attributes others read
        self._start = 0  # global position at which the next iteration of self.epoch starts
        self._position: tuple[int, int] | None = None  # (epoch, consumed) last reported by set_position
        self._iterated = False  # iterated since the last set_epoch / load_state_dict

    # ---- sharding -------------------------------------------------------------------------
    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return self._num_replicas if self._num_replicas is not None else _dist_world()[1]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self._rank if self._rank is not None else _dist_world()[0]

    @property
    def epoch_size(self) -> int:
        """Draws per epoch over all ranks (the ``epoch_size`` argument, raised to ``min_per_replica``
        per rank)."""
        return max(self._epoch_size, self.min_per_replica * self.num_replicas)

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Draws per rank in a full epoch."""
        return self.epoch_size // self.num_replicas

    @property
    def total_size(self) -> int:  # type: ignore[override]
        """Draws used per epoch over all ranks (``num_samples * num_replicas``)."""
        return self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples

    # ---- order ----------------------------------------------------------------------------
    def order(self, epoch: int) -> torch.Tensor:
        """The global draw order of ``epoch``: int64 (epoch_size,), the same on every rank and every run."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.epoch_size, self.replacement, generator=g)
        if self.replacement:
            return torch.randint(self.num_items, (self.epoch_size,), generator=g)
        return torch.randperm(self.num_items, generator=g)[: self.epoch_size]

    def __iter__(self) -> Iterator[int]:
        # a plain loop that never calls set_epoch still gets a new order per pass (like WeightedRandomSampler)
        if self._iterated:
            self.epoch, self._start = self.epoch + 1, 0
        self._iterated = True
        # computed eagerly: DataLoader workers start pulling indices as soon as iter() is called
        world, rank = self.num_replicas, self.rank
        start, self._start = self._start, 0  # a restored position applies to one iteration only
        count = max(0, self.total_size - start) // world  # equal on every rank, or DDP would hang
        positions = torch.arange(count) * world + start + rank
        return iter(self.order(self.epoch)[positions].tolist())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration draws (Lightning calls this at every epoch start).
        Without calls to it, each new iteration moves on to the next epoch."""
        self._iterated = False
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._start = 0

    # ---- position -------------------------------------------------------------------------
    def set_position(self, epoch: int, consumed: int) -> None:
        """Record that the model has consumed the first ``consumed`` draws (all ranks together) of
        ``epoch``; this is what :meth:`state_dict` saves. ``consumed >= total_size`` means the epoch
        is over and a resumed run starts ``epoch + 1``."""
        if consumed < 0:
            raise ValueError(f"consumed must be >= 0, got {consumed}")
        self._position = (int(epoch), int(consumed))

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "consumed", "seed", "epoch_size", "num_items", "world_size", "version"}``."""
        epoch, consumed = self._position if self._position is not None else (self.epoch, self._start)
        if consumed >= self.total_size:
            epoch, consumed = epoch + 1, 0
        return {"version": STATE_VERSION, "epoch": epoch, "consumed": consumed, "seed": self.seed,
                "epoch_size": self.epoch_size, "num_items": self.num_items, "world_size": self.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position: the next iteration draws epoch ``state["epoch"]`` from
        draw ``state["consumed"]`` on. A different seed or data size is warned about (the order
        then differs from the saved run's); a different world size is fine (the remaining draws
        are split over the new ranks)."""
        missing = {"epoch", "consumed"} - set(state)
        if missing:
            raise ValueError(f"ResumableSampler state lacks {sorted(missing)}: {state}")
        changed = {k: (state[k], getattr(self, k)) for k in ("seed", "epoch_size", "num_items")
                   if k in state and state[k] != getattr(self, k)}
        if changed:
            warnings.warn(f"resuming a sampler whose settings changed (saved, now): {changed}; the data order "
                          "differs from the interrupted run's", stacklevel=2)
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= self.total_size:
            epoch, consumed = epoch + 1, 0
        self.epoch, self._start = epoch, consumed
        self._position = (epoch, consumed)
        self._iterated = False


def small_data_minimum(what: str, num_items: int, batch_size: int, num_workers: int, policy: str) -> int:
    """``min_per_replica`` for a map-style training sampler (batches formed in the main process)
    under a ``small_data`` policy (:data:`~latentvid.data.sources.SMALL_DATA`): ``batch_size``
    with ``"repeat"``; with ``"stop"``, 0, or the one-line ``too_small_error`` when ``num_items``
    draws split over this job's ranks give a rank less than one batch."""
    from latentvid.data.sources import check_small_data, too_small_error

    if check_small_data(policy) == "repeat":
        return batch_size
    world = _dist_world()[1]
    if num_items // world < batch_size:
        raise too_small_error(what, num_items, batch_size, num_workers, world)
    return 0


def _resumable_sampler(loader: DataLoader) -> ResumableSampler | None:
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if isinstance(sampler, ResumableSampler):
            return sampler
    return None


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position can be saved and restored through its :class:`ResumableSampler`.

    Same arguments as ``DataLoader``. ``state_dict()`` is ``{"sampler": sampler.state_dict()}``
    (empty for another sampler), which Lightning stores in the checkpoint and hands back to
    ``load_state_dict()`` before iterating on resume. ``len()`` is always a full epoch's batches.
    """

    @property
    def resumable_sampler(self) -> ResumableSampler | None:
        """The loader's ResumableSampler (direct or inside its batch sampler), if any."""
        return _resumable_sampler(self)

    def state_dict(self) -> dict[str, Any]:
        sampler = self.resumable_sampler
        return {"sampler": sampler.state_dict()} if sampler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.resumable_sampler
        if sampler is not None and "sampler" in state:
            sampler.load_state_dict(state["sampler"])
