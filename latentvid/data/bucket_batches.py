"""Batches of one bucket at a time, with every rank on the same bucket at every step.

A bucket (:mod:`latentvid.data.buckets`) is a clip shape and a batch size. Batches are formed per
bucket in one of two ways, by the kind of source:

* streams (folder + CSV/JSONL, webdataset shards): :class:`BucketBatched`. Each reader (a
  DataLoader worker of a rank) pulls measured, undecoded samples from its
  :class:`~latentvid.data.stream.SampleStream` (``deferred``), puts each in the buffer of its
  bucket (:func:`~latentvid.data.buckets.assign`), and for each of its steps decodes a full batch
  of the bucket the :class:`~latentvid.data.buckets.BucketPlan` names for that step. A DataLoader
  hands out its W workers' batches in turn, so worker ``w`` makes steps ``start + w``,
  ``start + w + W``, ... of the epoch and the rank receives them in plan order. Every reader makes
  its share of exactly ``steps_per_epoch`` steps, reading on past its share of the data when that
  runs short (the stream's refill), so all ranks take the same steps and stay in lockstep.
* map-style sets whose samples' shapes are known (pre-encoded latents): :class:`BucketSampler`.
  Each epoch every bucket's samples are shuffled and cut into steps of ``batch_size x ranks``,
  the steps of all buckets are shuffled together, and rank ``r`` takes its slice of each step:
  every sample once per epoch, in proportion to the data by construction.

Both resume where the model stopped: a stream from ``(epoch, step)`` (the data module saves the
plan position of the last trained batch), the sampler from its saved position like
:class:`~latentvid.data.sampler.ResumableSampler`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from latentvid.data.buckets import Bucket, BucketPlan, assign
from latentvid.data.clips import ClipError, ClipSpec
from latentvid.data.sampler import ResumableSampler, derive_seed
from latentvid.data.sources import DataError, SampleError, Source, log, mix_seed
from latentvid.data.stream import SKIPPED, SKIPPED_NAMES, UNITS_DONE, collate, current_partition

BUCKET, PLAN_STEP, BUCKET_DROPPED = "bucket", "plan_step", "bucket_dropped"


def bucket_clip(clip: ClipSpec, bucket: Bucket) -> ClipSpec:
    """``clip`` at ``bucket``'s shape (frames and size); rate, start, crop and reader unchanged."""
    return dataclasses.replace(clip, num_frames=bucket.frames, size=(bucket.height, bucket.width))


def estimate_shares(source: Source, clip: ClipSpec, buckets: Sequence[Bucket], samples: int) -> list[float]:
    """Each bucket's share of ``source``'s samples, from up to ``samples`` measured ones spread over
    its units (a fixed choice: the same on every rank). Samples that cannot be measured are left
    out; DataError when none can."""
    units = source.num_units()
    order = torch.randperm(units, generator=torch.Generator().manual_seed(mix_seed("bucket estimate"))).tolist()
    per_unit = max(1, math.ceil(samples / units))
    counts = [0] * len(buckets)
    measured = 0
    for unit in order:
        try:
            for j, raw in enumerate(source.read_unit(unit, epoch=0, seed=0, shuffle=False)):
                if j >= per_unit or measured >= samples:
                    break
                try:
                    height, width, frames = source.measure(raw, clip)
                except (SampleError, ClipError, FileNotFoundError):
                    continue
                k = assign(buckets, height, width, frames, pad=clip.short == "pad")
                if k is not None:
                    counts[k] += 1
                    measured += 1
        except SampleError:
            continue
        if measured >= samples:
            break
    if not measured:
        raise DataError(f"{source.describe()}: no sample could be measured to fill the buckets "
                        f"({', '.join(b.name for b in buckets)})")
    return [c / measured for c in counts]


class BucketBatched(IterableDataset):
    """Batches of the plan's bucket for each step, from a stream of measured samples (see the module docstring).

    Batches are :func:`~latentvid.data.stream.collate`'s, e.g. ``video`` (B_k, 3, T_k, H_k, W_k)
    with B_k, T_k, H_k, W_k those of the step's bucket k, plus ``bucket`` (k), ``plan_step``
    ([epoch, step]) and ``bucket_dropped`` (samples dropped from over-full buffers since the
    previous batch). ``skipped`` counts bad samples and samples too short for every bucket
    (``short: skip``). Use with ``DataLoader(bucketed, batch_size=None, collate_fn=keep_batch)``.

    A unit's completion (``units_done``, the resume position of streams) rides on a batch only once
    every sample read before it has left the buffers, so a resumed run reads a unit again rather
    than lose the samples that were still waiting.

    Args:
        dataset: items with ``raw``, ``source`` and ``shape`` (a deferred
            :class:`~latentvid.data.stream.SampleStream`, or a :class:`~latentvid.data.stream.MixedStream`
            of them) that go on for as long as they are read.
        buckets: the buckets (index = the plan's bucket).
        plan: which bucket each step draws; buckets of weight 0 receive no samples.
        clip: the clip spec; each batch is decoded with :func:`bucket_clip` of it.
        steps_per_epoch: steps of each epoch over all workers (None: endless).
        seed: seed of the decoding randomness (clip starts, crops).
        rank, world_size: this process's place in the job (None: ``torch.distributed``).
        buffer: samples held waiting over all buckets; beyond it the oldest of the fullest bucket
            other than the one being filled is dropped.
        max_pulls: samples read in a row without one for the needed bucket before giving up
            (the plan asks for a bucket the data does not have).
    """

    def __init__(self, dataset: Iterable[dict[str, Any]], buckets: Sequence[Bucket], plan: BucketPlan,
                 clip: ClipSpec, *, steps_per_epoch: int | None = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, buffer: int = 256, max_pulls: int | None = None) -> None:
        super().__init__()
        if len(plan.weights) != len(buckets):
            raise ValueError(f"BucketBatched: a plan over {len(plan.weights)} buckets for {len(buckets)} buckets")
        if steps_per_epoch is not None and steps_per_epoch < 0:
            raise ValueError(f"BucketBatched: steps_per_epoch must be >= 0, got {steps_per_epoch}")
        if buffer < 1:
            raise ValueError(f"BucketBatched: buffer must be >= 1, got {buffer}")
        self.dataset, self.buckets, self.plan, self.clip = dataset, list(buckets), plan, clip
        self.steps_per_epoch = steps_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.buffer = buffer
        self.max_pulls = max_pulls if max_pulls is not None else max(10_000, 100 * buffer)
        self.active = [w > 0 for w in plan.weights]
        self.epoch, self.start = 0, 0
        self._iterations = 0  # __iter__ calls in this process (persistent workers keep counting)

    def resume(self, epoch: int, step: int = 0) -> None:
        """Start at step ``step`` of ``epoch`` (call before the DataLoader starts)."""
        self.epoch, self.start, self._iterations = int(epoch), int(step), 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        part = current_partition(self.rank, self.world_size)
        epoch = self.epoch + self._iterations
        step = (self.start if self._iterations == 0 else 0) + part.worker
        self._iterations += 1
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, "bucket decode", part.rank, part.worker))
        pad = self.clip.short == "pad"
        items = iter(self.dataset)
        buffers: list[deque[tuple[int, dict[str, Any]]]] = [deque() for _ in self.buckets]
        pending: deque[tuple[int, list[Any]]] = deque()  # (sequence number, units completed with that sample)
        seq = 0
        skipped, names, dropped = 0, [], 0

        def skip(message: str) -> None:
            nonlocal skipped
            log.warning("skipping %s", message)
            skipped += 1
            names.append(message)

        try:
            while self.steps_per_epoch is None or step < self.steps_per_epoch:
                k = self.plan.bucket(epoch, step)
                bucket = self.buckets[k]
                spec = bucket_clip(self.clip, bucket)
                decoded = []
                while len(decoded) < bucket.batch_size:
                    pulls = 0
                    while not buffers[k]:
                        item = next(items, None)
                        if item is None:
                            raise DataError(f"the data ran out at step {step} of epoch {epoch} (bucket {bucket.name})"
                                            "; nothing readable is left")
                        pulls += 1
                        if pulls > self.max_pulls:
                            raise DataError(f"bucket {bucket.name} is planned for step {step} of epoch {epoch}, but "
                                            f"{self.max_pulls} samples in a row held none of that shape; give it "
                                            "weight 0 or remove it")
                        skipped += int(item.get(SKIPPED, 0))
                        names.extend(item.get(SKIPPED_NAMES, ()))
                        if item.get(UNITS_DONE):
                            pending.append((seq, list(item[UNITS_DONE])))
                        height, width, frames = item["shape"]
                        home = assign(self.buckets, height, width, frames, pad=pad, allowed=self.active)
                        if home is None:
                            skip(f"{item['raw'].name}: too short for every bucket ({frames} frames at the clip's rate; "
                                 "short='skip')")
                        else:
                            buffers[home].append((seq, item))
                        seq += 1
                        dropped += self._drop_overflow(buffers, k)
                    _, item = buffers[k].popleft()
                    raw = item["raw"]
                    try:
                        decoded.append(item["source"].decode(raw, spec, gen))
                    except (SampleError, ClipError, FileNotFoundError) as err:
                        skip(str(err))
                    except Exception as err:  # an unexpected decoder failure is still one bad sample
                        skip(f"{raw.name}: {type(err).__name__}: {str(err)[:160]}")
                batch = collate(decoded)
                waiting = [buf[0][0] for buf in buffers if buf]
                mark = min(waiting) if waiting else seq  # every sample before it has left the buffers
                units = []
                while pending and pending[0][0] < mark:
                    units.extend(pending.popleft()[1])
                batch[SKIPPED], batch[SKIPPED_NAMES], batch[UNITS_DONE] = skipped, names, units
                batch[BUCKET], batch[PLAN_STEP], batch[BUCKET_DROPPED] = k, [epoch, step], dropped
                skipped, names, dropped = 0, [], 0
                yield batch
                step += part.num_workers
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _drop_overflow(self, buffers: list[deque], filling: int) -> int:
        """Drop the oldest samples of the fullest buckets other than ``filling`` while more than
        ``buffer`` samples wait; returns how many."""
        dropped = 0
        while sum(map(len, buffers)) > self.buffer:
            fullest = max((i for i in range(len(buffers)) if i != filling and buffers[i]),
                          key=lambda i: len(buffers[i]), default=None)
            if fullest is None:
                break
            _, item = buffers[fullest].popleft()
            if not dropped:
                log.info("bucket buffers full (%d samples): dropping %s (bucket %s)", self.buffer, item["raw"].name,
                         self.buckets[fullest].name)
            dropped += 1
        return dropped


class BatchDataset(Dataset):
    """A map-style dataset indexed by lists of indices: ``ds[[i, j, ...]]`` is
    :func:`~latentvid.data.stream.collate` of their items (for a sampler that yields whole batches,
    with ``DataLoader(batch_size=None)``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        return collate([self.dataset[int(i)] for i in indices])


class BucketSampler(ResumableSampler):
    """Whole batches of one bucket per step over a map-style set (see the module docstring).

    Yields this rank's indices of each step (a list of the step's bucket's ``batch_size``); use
    with :class:`BatchDataset` and ``DataLoader(batch_size=None)``. Resumable like
    :class:`~latentvid.data.sampler.ResumableSampler`, whose position here counts steps (one
    draw = one step of all ranks).

    Args:
        bucket_of: each sample's bucket (num_items,).
        batch_sizes: clips per batch and rank of each bucket.
        seed: each epoch's steps are fixed by ``(seed, epoch)``.
        num_replicas, rank: the world size and this process's rank (None: ``torch.distributed``).
        repeat: a bucket with fewer samples than one step (``batch_size x ranks``) repeats them to
            fill one step per epoch (``small_data: repeat``); otherwise it gets no step.
    """

    draws_per_step = 1  # what DataPosition multiplies trained batches by

    def __init__(self, bucket_of: Sequence[int], batch_sizes: Sequence[int], seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, repeat: bool = True) -> None:
        Sampler.__init__(self)  # not ResumableSampler.__init__: no per-item draws here
        if not bucket_of:
            raise ValueError("BucketSampler: no samples")
        if any(not 0 <= b < len(batch_sizes) for b in bucket_of) or any(bs < 1 for bs in batch_sizes):
            raise ValueError(f"BucketSampler: buckets must index {len(batch_sizes)} batch sizes (each >= 1)")
        if num_replicas is not None and (num_replicas < 1 or rank is None or not 0 <= rank < num_replicas):
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}")
        self.bucket_of = torch.as_tensor(list(bucket_of), dtype=torch.long)
        self.batch_sizes = [int(bs) for bs in batch_sizes]
        self.members = [torch.nonzero(self.bucket_of == b).flatten() for b in range(len(self.batch_sizes))]
        self.num_items = len(self.bucket_of)
        self.repeat = repeat
        self.seed = int(seed)
        self._num_replicas, self._rank = num_replicas, rank
        self.weights, self.replacement, self.min_per_replica = None, False, 0
        self.epoch = 0
        self.shuffle, self.drop_last, self.dataset = True, True, None
        self._start = 0
        self._position: tuple[int, int] | None = None
        self._iterated = False

    def steps_per_bucket(self) -> list[int]:
        """Steps each bucket gets per epoch with this world size."""
        world = self.num_replicas
        counts = []
        for members, bs in zip(self.members, self.batch_sizes):
            n = len(members) // (bs * world)
            counts.append(1 if n == 0 and self.repeat and len(members) else n)
        return counts

    @property
    def epoch_size(self) -> int:
        """Steps per epoch (all ranks take each step)."""
        return sum(self.steps_per_bucket())

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return self.epoch_size

    @property
    def total_size(self) -> int:  # type: ignore[override]
        return self.epoch_size

    def steps(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        """The steps of ``epoch``: (bucket, int64 (batch_size x world,) sample indices), the same
        on every rank and every run."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        world = self.num_replicas
        out = []
        for b, (members, count) in enumerate(zip(self.members, self.steps_per_bucket())):
            if not count:
                continue
            need = self.batch_sizes[b] * world
            perm = members[torch.randperm(len(members), generator=g)]
            if len(perm) < need:  # small_data repeat: one step of the bucket's samples over again
                perm = perm.repeat(math.ceil(need / len(perm)))[:need]
            out.extend((b, perm[s * need:(s + 1) * need]) for s in range(count))
        return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]

    def step_buckets(self, epoch: int) -> list[int]:
        """The bucket of every step of ``epoch``."""
        return [b for b, _ in self.steps(epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: nothing moves until the first draw. With batch_size=None this sampler is the
        # DataLoader's index sampler, which a multi-worker iterator calls iter() on twice at its start.
        if self._iterated:
            self.epoch, self._start = self.epoch + 1, 0
        self._iterated = True
        rank = self.rank
        start, self._start = self._start, 0
        for b, indices in self.steps(self.epoch)[start:]:
            bs = self.batch_sizes[b]
            yield indices[rank * bs:(rank + 1) * bs].tolist()
