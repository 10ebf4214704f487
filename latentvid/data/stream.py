"""Streaming any source across ranks and DataLoader workers, skipping bad samples, counting them.

:class:`SampleStream` turns a :class:`~latentvid.data.sources.Source` (folder or shards) into an
``IterableDataset``. Per epoch it

1. orders the source's units (shards, or blocks of index rows) by a permutation of
   ``(seed, epoch)`` that is the same in every process, drops units a resumed run already
   consumed, and gives rank ``r`` of ``R`` the units ``r, r + R, ...`` of that order and its
   DataLoader worker ``w`` of ``W`` every ``W``-th of those: each unit is read by exactly one
   worker of one rank, so every sample is read once per epoch across the job;
2. optionally passes raw samples through a shuffle buffer (``source.shuffle_buffer``), or,
   with ``resampled``, draws units with replacement forever (webdataset's resampling);
3. decodes each sample; one that fails is skipped with a warning naming it (file, or
   ``shard:key``) and counted.

Counts travel with the data, so they are right with any number of worker processes: each item
carries ``skipped`` (samples skipped since the previous item of that worker) and
``skipped_names``; the last item of a worker's epoch also carries the skips after it (the
stream holds one item back to know). :func:`collate` sums ``skipped`` into ``batch["skipped"]``,
which :class:`~latentvid.callbacks.data_health.DataHealth` logs as ``data/skipped``.

A data set too small to fill a batch in every reader (``min_items``, the batch size under the
datamodules' ``small_data: repeat``) is read again: a reader whose share of the epoch ended with
fewer than ``min_items`` good items goes on through the epoch's whole unit order, cyclically from
its own place in it, until it has ``min_items``. Those extra reads count for no unit's completion.

The same channel carries resume positions: ``units_done`` lists ``(stream, epoch, unit)`` for
every unit whose last sample is in (or was skipped before) that item. :class:`StreamProgress`
folds them in the main process into ``{stream: {"epoch", "done_units"}}``; a stream resumed
from it (:meth:`SampleStream.resume`) skips the units already consumed in that epoch, so
after a restart each finished unit is not read again and a unit in flight is read again
from its start (at-least-once within a unit, exactly-once across units).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from latentvid.data.clips import ClipError, ClipSpec
from latentvid.data.sources import DataError, Raw, SampleError, Source, log, mix_seed

SKIPPED, SKIPPED_NAMES, UNITS_DONE = "skipped", "skipped_names", "units_done"
_END = object()


@dataclass(frozen=True)
class Partition:
    """Which share of the data this process reads: rank of the job, DataLoader worker of the rank."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def current_partition(rank: int | None = None, world_size: int | None = None) -> Partition:
    """This process's :class:`Partition`: the worker from ``torch.utils.data.get_worker_info``,
    the rank from the arguments, else from an initialised ``torch.distributed``, else 0 of 1."""
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"invalid partition: rank {rank} of world size {world_size}")
    return Partition(rank, world_size, worker, num_workers)


def split_units(order: list[int], part: Partition) -> list[int]:
    """The units of ``order`` this partition reads: by rank first, then by worker."""
    return order[part.rank:: part.world_size][part.worker:: part.num_workers]


class SampleStream(IterableDataset):
    """An ``IterableDataset`` of items from one source (see the module docstring).

    Args:
        source: a folder or shard source.
        clip: the clip spec samples are decoded with.
        name: the stream's name in ``units_done`` and resume state (e.g. ``"video"``).
        shuffle: permute units per epoch and use the source's shuffle buffer; False reads
            units and samples in order (validation).
        resampled: draw units with replacement, forever (pair with ``epoch_size`` or
            ``max_steps``); no resume position is kept.
        seed: base seed of unit orders, shuffle buffers, clip starts and crops.
        rank, world_size: this process's place in the job (None: ``torch.distributed``).
        epoch_size: samples per epoch across the whole job (each partition yields its share);
            None: until the units run out.
        max_consecutive_skips: this many failures in a row with no good sample raise
            :class:`DataError` (the data has gone away, not a few bad files).
        min_items: each partition yields at least this many items per epoch, reading the epoch's
            units again when its share falls short (0: one pass only; see the module docstring).
        deferred: yield each sample undecoded with its measured shape, ``{"raw", "source",
            "shape": (height, width, frames or None)}`` (:meth:`Source.measure`), for
            :class:`~latentvid.data.bucket_batches.BucketBatched` to decode at its bucket's shape.
    """

    def __init__(self, source: Source, clip: ClipSpec, *, name: str = "video", shuffle: bool = True,
                 resampled: bool = False, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 epoch_size: int | None = None, max_consecutive_skips: int = 1000, min_items: int = 0,
                 deferred: bool = False) -> None:
        super().__init__()
        if epoch_size is not None and epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        if min_items < 0:
            raise ValueError(f"min_items must be >= 0, got {min_items}")
        if source.num_units() < 1:
            raise DataError(f"{source.describe()}: no samples")
        self.source = source
        self.clip = clip
        self.name = name
        self.shuffle = shuffle
        self.resampled = resampled
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch_size = epoch_size
        self.max_consecutive_skips = max_consecutive_skips
        self.min_items = min_items
        self.deferred = deferred
        self.epoch = 0
        self._done: frozenset[int] = frozenset()
        self._iterations = 0  # __iter__ calls in this process (persistent workers keep counting)

    def resume(self, epoch: int, done_units: Iterable[int] = ()) -> None:
        """Start at ``epoch``, leaving out ``done_units`` in it (call before the DataLoader starts)."""
        self.epoch, self._done, self._iterations = int(epoch), frozenset(int(u) for u in done_units), 0

    # ---- units and raw samples ---------------------------------------------------------------
    def unit_order(self, epoch: int) -> list[int]:
        """All units in epoch ``epoch``'s order (the same in every process)."""
        n = self.source.num_units()
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.name, "units"))
        return torch.randperm(n, generator=g).tolist()

    def _units(self, epoch: int, part: Partition, done: frozenset[int], gen: torch.Generator) -> Iterator[int]:
        n = self.source.num_units()
        if self.resampled:
            while True:
                yield int(torch.randint(n, (1,), generator=gen).item())
        order = [u for u in self.unit_order(epoch) if u not in done]
        if part.worker == 0 and part.rank == 0 and epoch == self.epoch and len(order) < part.count \
                and not self.min_items:
            log.warning("%s: %d units (shards / row blocks) for %d readers (%d ranks x %d workers): some read nothing",
                        self.source.describe(), len(order), part.count, part.world_size, part.num_workers)
        yield from split_units(order, part)

    def _refill_units(self, epoch: int, part: Partition, items: list[int]) -> Iterator[int]:
        """All units of the epoch's order, cyclically from this partition's place in it, while a
        cycle still adds items (``items[0]``, counted by the consumer): what a short share reads again."""
        order = self.unit_order(epoch)
        start = (part.rank * part.num_workers + part.worker) % len(order)
        while True:
            before = items[0]
            for j in range(len(order)):
                yield order[(start + j) % len(order)]
            if items[0] == before:  # a whole cycle without a good item: nothing more to get
                return

    def _all_events(self, epoch: int, part: Partition, done: frozenset[int], gen: torch.Generator,
                    items: list[int]) -> Iterator[tuple[str, Any, list[int]]]:
        """The epoch's events (:meth:`_events`); then, when the share gave fewer than ``min_items``
        items, a ``("refill", None, [])`` marker and the events of reading the units again."""
        yield from self._events(self._units(epoch, part, done, gen), epoch, gen, not self.resampled)
        if self.min_items and not self.resampled and items[0] < self.min_items:
            yield "refill", None, []
            # no shuffle buffer: each sample is decoded before the next unit is read (what the
            # refill's end-of-data check relies on); the unit order is shuffled already
            yield from self._events(self._refill_units(epoch, part, items), epoch, gen, False, 0)

    def _events(self, units: Iterable[int], epoch: int, gen: torch.Generator, track: bool,
                size: int | None = None) -> Iterator[tuple[str, Any, list[int]]]:
        """("sample", raw, units completed with it) and ("error", message or None, units completed)
        for the samples of ``units``; ``track``: report unit completions."""
        if size is None:
            size = self.source.shuffle_buffer if self.shuffle else 0
        buffer: list[tuple[Raw, int]] = []
        outstanding: Counter[int] = Counter()
        finished: set[int] = set()
        reported: set[int] = set()

        def completed(unit: int) -> list[int]:
            if track and unit in finished and outstanding[unit] == 0 and unit not in reported:
                reported.add(unit)
                return [unit]
            return []

        def pop(i: int) -> tuple[str, Raw, list[int]]:
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            raw, unit = buffer.pop()
            outstanding[unit] -= 1
            return "sample", raw, completed(unit)

        def draw() -> int:
            return int(torch.randint(len(buffer), (1,), generator=gen).item()) if size else 0

        for unit in units:
            error = None
            samples = iter(self.source.read_unit(unit, epoch, self.seed, self.shuffle))
            current: Any = _END
            while True:
                # read one ahead, so the unit's last sample is known to complete it when it leaves
                try:
                    following = next(samples, _END)
                except SampleError as err:
                    error, following = str(err), _END
                except Exception as err:  # a broken unit must not end the epoch
                    error, following = f"{self.source.unit_name(unit)}: {type(err).__name__}: {str(err)[:160]}", _END
                if following is _END:
                    finished.add(unit)
                if current is not _END:
                    buffer.append((current, unit))
                    outstanding[unit] += 1
                    if len(buffer) > size:
                        yield pop(draw())
                if following is _END:
                    break
                current = following
            if error is not None or outstanding[unit] == 0:
                yield "error", error, completed(unit)  # message None: only a completion
        while buffer:
            yield pop(draw())

    # ---- items -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        part = current_partition(self.rank, self.world_size)
        epoch = self.epoch + self._iterations
        done = self._done if self._iterations == 0 else frozenset()
        self._iterations += 1
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, self.name, part.rank, part.worker))
        limit = math.ceil(self.epoch_size / part.count) if self.epoch_size else None
        if limit is not None:
            limit = max(limit, self.min_items)

        skipped, names, units = 0, [], []
        held: dict[str, Any] | None = None
        yielded = consecutive = 0
        items = [0]  # good items so far (read by the refill, see _all_events)
        for kind, payload, completed in self._all_events(epoch, part, done, gen, items):
            units.extend((self.name, epoch, u) for u in completed)
            if kind == "refill":  # the share ran short: read on until min_items
                limit = self.min_items
                continue
            if kind == "sample":
                try:
                    if self.deferred:  # measured only: decoded later, at the shape of its bucket
                        item = {"raw": payload, "source": self.source,
                                "shape": tuple(self.source.measure(payload, self.clip))}
                    else:
                        item = self.source.decode(payload, self.clip, gen)
                except (SampleError, ClipError, FileNotFoundError) as err:
                    message = str(err)
                except Exception as err:  # an unexpected decoder failure is still one bad sample
                    message = f"{payload.name}: {type(err).__name__}: {str(err)[:160]}"
                else:
                    item[SKIPPED], item[SKIPPED_NAMES], item[UNITS_DONE] = skipped, names, units
                    skipped, names, units, consecutive = 0, [], [], 0
                    if held is not None:
                        yield held
                        yielded += 1
                    held = item
                    items[0] += 1
                    if limit is not None and yielded + 1 >= limit:
                        break
                    continue
            elif payload is None:  # only a unit completion
                continue
            else:
                message = payload
            log.warning("skipping %s", message)
            skipped += 1
            names.append(message)
            consecutive += 1
            if consecutive >= self.max_consecutive_skips:
                raise DataError(f"{self.source.describe()}: {consecutive} samples in a row failed "
                                f"(last: {message}); is the data still there?")
        if held is not None:  # the skips after the last good sample ride on it
            held[SKIPPED] += skipped
            held[SKIPPED_NAMES] = held[SKIPPED_NAMES] + names
            held[UNITS_DONE] = held[UNITS_DONE] + units
            yield held
        elif skipped:
            log.warning("%s: rank %d worker %d read no good sample in epoch %d (%d skipped)",
                        self.source.describe(), part.rank, part.worker, epoch, skipped)


class MixedStream(IterableDataset):
    """Interleave a video stream with an image stream: each item is an image with probability
    ``image_ratio`` (drawn per item from a seeded generator), else the next video.

    The epoch ends when the video stream does (or after ``epoch_size`` samples across the job,
    images included); the image stream restarts (its next epoch) when it runs out first.
    ``image_ratio`` 1 yields one pass over the images.
    """

    def __init__(self, videos: SampleStream | None, images: SampleStream | None, image_ratio: float,
                 seed: int = 0, epoch_size: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= image_ratio <= 1.0:
            raise ValueError(f"image_ratio must be in [0, 1], got {image_ratio}")
        if (images is None and image_ratio > 0) or (videos is None and image_ratio < 1):
            raise ValueError(f"image_ratio={image_ratio} needs {'an image' if images is None else 'a video'} source")
        if epoch_size is not None and epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1, got {epoch_size}")
        self.videos, self.images, self.image_ratio, self.seed = videos, images, image_ratio, seed
        self.epoch_size = epoch_size
        self._iterations = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        primary = self.videos if self.videos is not None else self.images
        if self.epoch_size is None:
            yield from self._mix()
            return
        part = current_partition(primary.rank, primary.world_size)
        limit = max(math.ceil(self.epoch_size / part.count), primary.min_items)  # a full batch at least
        for n, item in enumerate(self._mix(), start=1):
            yield item
            if n >= limit:
                return

    def _mix(self) -> Iterator[dict[str, Any]]:
        if self.image_ratio >= 1.0:
            yield from self.images
            return
        if self.images is None or self.image_ratio == 0.0:
            yield from self.videos
            return
        part = current_partition(self.videos.rank, self.videos.world_size)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.videos.epoch + self._iterations, "mix",
                                                     part.rank, part.worker))
        self._iterations += 1
        videos, images = iter(self.videos), iter(self.images)
        while True:
            if images is not None and torch.rand((), generator=gen).item() < self.image_ratio:
                item = next(images, None)
                if item is None:  # one pass over the images done: start the next
                    images = iter(self.images)
                    item = next(images, None)
                if item is None:
                    log.warning("%s: no readable image; continuing with videos only", self.images.source.describe())
                    images = None
                    continue
            else:
                item = next(videos, None)
                if item is None:
                    return
            yield item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items into a batch.

    Tensors are stacked (``video`` (B, 3, T, H, W), ``frame_mask`` (B, T), ``fps`` (B,), or
    ``latents`` (B, C, t, h, w)); ``skipped`` is summed into an int (0 when items carry none);
    ``skipped_names`` and ``units_done`` are concatenated; anything else becomes a list.
    """
    if not items:
        raise ValueError("collate: empty batch")
    batch: dict[str, Any] = {SKIPPED: sum(int(it.get(SKIPPED, 0)) for it in items), SKIPPED_NAMES: []}
    for key in items[0]:
        if key == SKIPPED:
            continue
        values = [it[key] for it in items]
        if key in (SKIPPED_NAMES, UNITS_DONE):
            batch[key] = [x for v in values for x in v]
        elif isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate: items disagree on the shape of {key!r}: {sorted(shapes)}")
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def keep_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """``collate_fn`` for a DataLoader over :class:`Batched` (whose items are whole batches)."""
    return batch


class Batched(IterableDataset):
    """Group a stream's items into batches of ``batch_size`` inside each worker, with :func:`collate`.

    With ``drop_last`` the partial batch at the end of a worker's epoch is dropped, but what
    its items carried (``skipped``, ``skipped_names``, ``units_done``) moves onto the worker's
    last full batch, which is held back one batch to make that possible; so skip counts stay
    exact. Use with ``DataLoader(batched, batch_size=None, collate_fn=keep_batch)``.
    """

    def __init__(self, dataset: Iterable[dict[str, Any]], batch_size: int, drop_last: bool = True) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last

    def __iter__(self) -> Iterator[dict[str, Any]]:
        held: dict[str, Any] | None = None
        items: list[dict[str, Any]] = []
        for item in self.dataset:
            items.append(item)
            if len(items) == self.batch_size:
                if held is not None:
                    yield held
                held, items = collate(items), []
        if items and not self.drop_last:
            if held is not None:
                yield held
            held = collate(items)
        elif items and held is not None:  # dropped items: keep their bookkeeping
            held[SKIPPED] += sum(int(it.get(SKIPPED, 0)) for it in items)
            held[SKIPPED_NAMES] = held[SKIPPED_NAMES] + [n for it in items for n in it.get(SKIPPED_NAMES, ())]
            held[UNITS_DONE] = held.get(UNITS_DONE, []) + [u for it in items for u in it.get(UNITS_DONE, ())]
        if held is not None:
            yield held


class StreamProgress:
    """Which units each stream has consumed in its current epoch, folded from ``units_done``
    of the batches the main process has seen (see the module docstring)."""

    def __init__(self) -> None:
        self.epochs: dict[str, int] = {}
        self.done: dict[str, set[int]] = {}

    def update(self, units_done: Iterable[Any]) -> None:
        """Record ``(stream, epoch, unit)`` entries; a newer epoch of a stream starts afresh."""
        for name, epoch, unit in units_done:
            current = self.epochs.get(name)
            if current is None or epoch > current:
                self.epochs[name], self.done[name] = int(epoch), set()
                current = int(epoch)
            if epoch == current:
                self.done[name].add(int(unit))

    def resume_point(self, name: str, num_units: int) -> tuple[int, list[int]]:
        """(epoch, done units) to resume stream ``name`` at; a finished epoch moves on to the next."""
        if name not in self.epochs:
            return 0, []
        epoch, done = self.epochs[name], sorted(self.done[name])
        return (epoch + 1, []) if len(done) >= num_units else (epoch, done)

    def state_dict(self) -> dict[str, Any]:
        return {name: {"epoch": self.epochs[name], "done_units": sorted(self.done[name])} for name in self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = {name: int(s["epoch"]) for name, s in state.items()}
        self.done = {name: {int(u) for u in s["done_units"]} for name, s in state.items()}
