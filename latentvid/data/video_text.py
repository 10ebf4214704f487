"""``VideoTextDataModule``: real video-text data (folder + CSV/JSONL, or webdataset shards) with
optional image-text data mixed in, for joint image-video training; or pre-encoded latents.

Batches follow the models' contract: ``video`` (B, 3, T, H, W) float in [-1, 1],
``frame_mask`` (B, T) bool, ``fps`` (B,) float (the effective frame rate of each clip; 0 for
masked stills), ``caption`` list[str], ``key`` list[str], plus ``skipped`` (int: bad samples
passed over since the previous batch of that worker), ``skipped_names`` and ``units_done``
(see :mod:`latentvid.data.stream`). With ``latents`` set, batches are those of
:class:`~latentvid.data.latents.LatentDataModule` (``latents`` (B, C, t, h, w) + latent mask).

Configured in YAML like any constructor (sources by ``class_path``)::

    data:
      class_path: latentvid.data.video_text.VideoTextDataModule
      init_args:
        video:
          class_path: latentvid.data.shards.VideoShards
          init_args: {urls: "data/webvid/shard-{000000..000099}.tar"}
        images:
          class_path: latentvid.data.folder.ImageFolder
          init_args: {root: data/laion, index: images.csv}
        image_ratio: 0.25
        clip: {num_frames: 16, size: 256, fps: 8}
        batch_size: 8
        num_workers: 8

With ``buckets`` (a :class:`~latentvid.data.buckets.BucketSpec`) each training sample is read at
the shape of its bucket (nearest aspect ratio with enough frames) and each step is one bucket's
batch: ``video`` (B_k, 3, T_k, H_k, W_k), the same bucket on every rank
(:mod:`latentvid.data.bucket_batches`); ``clip`` and ``batch_size`` are then the reference whose
latent tokens per batch every bucket keeps, and validation stays at ``clip``'s shape.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from latentvid.data.bucket_batches import PLAN_STEP, BucketBatched, estimate_shares
from latentvid.data.buckets import Bucket, BucketPlan, BucketSpec, mean_batch_size, step_weights
from latentvid.data.clips import ClipSpec
from latentvid.data.sources import DataError, ImageSource, VideoSource, check_small_data, too_small_error
from latentvid.data.stream import (UNITS_DONE, Batched, MixedStream, Partition, SampleStream, StreamProgress,
                                   keep_batch, split_units)

STATE_VERSION = 1


def _plain(value: Any) -> Any:
    """Hyperparameters as plain data (so checkpoints load with ``weights_only=True``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (VideoSource, ImageSource)):
        return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "describe": value.describe()}
    return value


class VideoTextDataModule(LightningDataModule):
    """Stream video-text (and image-text) samples for training and validation.

    Decoding happens in DataLoader workers (``num_workers`` > 0, persistent), each reading its
    own share of the units (shards / row blocks) of each source. A bad sample is skipped and
    counted (``batch["skipped"]``); a source whose first samples all fail, a wrong path or a
    wrong column stops at ``setup`` with a message naming the file.

    Args:
        video: the training video source (:class:`~latentvid.data.folder.VideoFolder` or
            :class:`~latentvid.data.shards.VideoShards`); may be None when ``latents`` is set or
            ``image_ratio`` is 1.
        images: an optional image source (:class:`~latentvid.data.folder.ImageFolder` or
            :class:`~latentvid.data.shards.ImageShards`) mixed in at ``image_ratio``.
        val: an optional validation video source (read in order, centred starts and crops).
        clip: the clip spec (frames, size, fps or stride, start, short-clip policy, crop,
            reader, how stills become clips).
        image_ratio: probability that a training sample is a still.
        batch_size: samples per batch (train and validation); every batch has this size except
            possibly the last validation batch.
        num_workers: DataLoader worker processes that decode (0 = in the main process: slow,
            for debugging).
        val_num_workers: workers for validation (default: ``min(num_workers, 2)``).
        seed: seed of unit orders, shuffle buffers, clip starts / crops and mixing draws.
        resampled: draw training units with replacement forever (pair with ``epoch_size`` or
            ``trainer.max_steps``): the usual choice for multi-node runs, where ranks must
            not run out of data at different times.
        epoch_size: training samples per epoch across the job (None: one pass over the videos).
        probe: at setup, decode up to this many samples of each source and stop if none works
            (0: no probe).
        prefetch_factor: batches prefetched per worker.
        latents: a folder of pre-encoded latents (``tools/encode_latents.py``); used instead of
            the sources for training.
        val_latents: a pre-encoded latent folder for validation.
        rank, world_size: this process's place in the job (default: from the trainer, else
            ``torch.distributed``); set them to simulate ranks in tests.
        root: a folder with ``eval_prompts.txt`` for the sample-video callback (default: the
            video folder, if the video source is a folder).
        small_data: what a training set too small to give every reader (DataLoader worker of a
            rank: each batches its own share) a full batch does. ``"repeat"``: a reader whose share
            of the epoch runs short reads the epoch's samples again until it has one batch, so any
            set of at least one sample trains. ``"stop"``: the run stops before training with one
            line naming the sample count, batch size, workers and ranks (when the sizes are known up
            front: folders, local shards; otherwise at the first epoch that yields no batch).
        buckets: train at several clip shapes (:class:`~latentvid.data.buckets.BucketSpec`):
            resolutions x aspect ratios x lengths, batch sizes keeping ``batch_size`` x the latent
            tokens of a ``clip`` per batch, one bucket per step on every rank. An epoch is then a
            fixed number of steps: the samples per epoch (``epoch_size``, else the training
            source's size) over ranks x the mean batch size; a reader short of data reads on.
            With ``latents``: buckets by the stored latent shape. None: every clip is ``clip``.
    """

    def __init__(
        self,
        video: VideoSource | None = None,
        images: ImageSource | None = None,
        val: VideoSource | None = None,
        clip: ClipSpec = ClipSpec(),  # noqa: B008 (frozen: one immutable default is safe)
        image_ratio: float = 0.0,
        batch_size: int = 8,
        num_workers: int = 4,
        val_num_workers: int | None = None,
        seed: int = 0,
        resampled: bool = False,
        epoch_size: int | None = None,
        probe: int = 8,
        prefetch_factor: int = 2,
        latents: str | None = None,
        val_latents: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        root: str | None = None,
        small_data: str = "repeat",
        buckets: BucketSpec | None = None,
    ) -> None:
        init_args = dict(locals())
        super().__init__()
        args = {k: _plain(v) for k, v in init_args.items() if k not in ("self", "__class__")}
        if batch_size < 1 or num_workers < 0 or (val_num_workers is not None and val_num_workers < 0):
            raise ValueError(f"invalid {batch_size=} {num_workers=} {val_num_workers=}")
        if not 0.0 <= image_ratio <= 1.0:
            raise ValueError(f"image_ratio must be in [0, 1], got {image_ratio}")
        check_small_data(small_data)
        if latents is None:
            if video is None and image_ratio < 1.0:
                raise ValueError("VideoTextDataModule: give a `video` source "
                                 "(or `latents`, or image_ratio=1 with `images`)")
            if images is None and image_ratio > 0.0:
                raise ValueError(f"VideoTextDataModule: image_ratio={image_ratio} needs an `images` source")
        for label, source, kind in (("video", video, VideoSource), ("val", val, VideoSource),
                                    ("images", images, ImageSource)):
            if source is not None and not isinstance(source, kind):
                raise TypeError(f"VideoTextDataModule: `{label}` must be a {kind.__name__}, "
                                f"got {type(source).__name__}")
        self.bucket_spec = buckets
        h, w = clip.hw
        self.bucket_list: list[Bucket] | None = (buckets.build(h, w, clip.num_frames, batch_size)
                                                 if buckets is not None and latents is None else None)
        # plain data only (checkpoints load with weights_only=True); num_frames / size are what
        # tools/sample.py reads to pick the sampling shape (bucket_shapes: the others trained)
        self.save_hyperparameters({**args, "num_frames": clip.num_frames,
                                   "size": clip.size if isinstance(clip.size, int) else list(clip.size),
                                   "bucket_shapes": [[b.height, b.width, b.frames, b.batch_size]
                                                     for b in self.bucket_list or ()]})
        self.video, self.images, self.val = video, images, val
        self.clip = clip
        self.image_ratio = image_ratio
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_num_workers = min(num_workers, 2) if val_num_workers is None else val_num_workers
        self.seed = seed
        self.resampled = resampled
        self.epoch_size = epoch_size
        self.probe = probe
        self.prefetch_factor = prefetch_factor
        self.latents, self.val_latents = latents, val_latents
        self.rank, self.world_size = rank, world_size
        self._root = root
        self.small_data = small_data
        self.progress = StreamProgress()
        self.plan_position = (0, 0)  # (epoch, step) after the last trained bucketed batch
        self._bucket_weights: list[float] | None = None
        self._latent_dm: Any = None
        self._probed = False

    @property
    def root(self) -> str | None:
        """Where ``LogSampleVideos`` looks for ``eval_prompts.txt``: ``root``, else the video folder."""
        return self._root or getattr(self.video, "root", None) or getattr(self.val, "root", None)

    @property
    def num_frames(self) -> int | None:
        """Frames per clip (None with pre-encoded latents, whose shape their folder records)."""
        return None if self.latents is not None else self.clip.num_frames

    @property
    def size(self) -> int | tuple[int, int] | None:
        """Frame size of the clips (int: square, or (height, width); None with latents)."""
        return None if self.latents is not None else self.clip.size

    # ---- setup -------------------------------------------------------------------------------
    def check_sources(self) -> list[str]:
        """One message per source that yields no good sample among its first ``probe`` (empty: all fine).

        Cheap (stops at each source's first good sample); ``setup`` raises on the first problem,
        a caller that checks a whole run first (e.g. a preflight) can collect them all."""
        if self.latents is not None or not self.probe:
            return []
        problems = []
        for label, source in (("video", self.video), ("images", self.images if self.image_ratio > 0 else None),
                              ("val", self.val)):
            if source is None:
                continue
            clip = self.clip
            if self.bucket_list is not None and label != "val":  # a clip fits when the shortest bucket does
                clip = dataclasses.replace(clip, num_frames=min(b.frames for b in self.bucket_list))
            try:
                source.probe(clip, attempts=self.probe)
            except DataError as err:
                problems.append(f"data.{label}: {err}")
        return problems

    def setup(self, stage: str | None = None) -> None:
        """Check that every source yields at least one good sample (``probe``), or set up latents."""
        if self.latents is not None:
            if self._latent_dm is None:
                from latentvid.data.latents import LatentDataModule

                self._latent_dm = LatentDataModule(root=self.latents, batch_size=self.batch_size,
                                                   num_workers=self.num_workers,
                                                   image_ratio=self.image_ratio or None,
                                                   val_root=self.val_latents, seed=self.seed,
                                                   small_data=self.small_data,
                                                   buckets=self.bucket_spec is not None)
            self._latent_dm.setup(stage)
            return
        if not self._probed:
            problems = self.check_sources()
            if problems:
                raise DataError("; ".join(problems))
            self._probed = True

    def _partition(self) -> tuple[int | None, int | None]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return None, None  # SampleStream asks torch.distributed

    def _stream(self, source: Any, name: str, train: bool, plan_epoch: int | None = None) -> SampleStream:
        """A source's stream; ``plan_epoch`` (bucketed training): undecoded samples with their
        shapes, read on for as long as the bucket batcher asks, from that epoch's position."""
        rank, world = self._partition()
        refill = self.batch_size if train and self.small_data == "repeat" else 0
        if plan_epoch is not None:
            refill = sys.maxsize  # the batcher ends the epoch after its steps; a short share reads on
        stream = SampleStream(source, self.clip if train else self.clip.deterministic(), name=name, shuffle=train,
                              resampled=train and self.resampled, seed=self.seed, rank=rank, world_size=world,
                              min_items=refill, deferred=plan_epoch is not None)
        if plan_epoch is not None:
            same = self.progress.epochs.get(name) == plan_epoch
            stream.resume(plan_epoch, sorted(self.progress.done[name]) if same else [])
        elif train:
            stream.resume(*self.progress.resume_point(name, source.num_units()))
        return stream

    def train_dataset(self, plan_epoch: int | None = None) -> MixedStream:
        """The training stream (videos and stills mixed at ``image_ratio``); ``plan_epoch``: of
        measured, undecoded samples for bucketed batching, from that epoch."""
        videos = (self._stream(self.video, "video", True, plan_epoch)
                  if self.video is not None and self.image_ratio < 1 else None)
        images = (self._stream(self.images, "images", True, plan_epoch)
                  if self.images is not None and self.image_ratio > 0 else None)
        epoch_size = None if plan_epoch is not None else self.epoch_size  # bucketed: the batcher counts steps
        return MixedStream(videos, images, self.image_ratio, seed=self.seed, epoch_size=epoch_size)

    # ---- buckets -------------------------------------------------------------------------------
    def bucket_weights(self) -> list[float]:
        """How often each bucket's steps come: ``buckets.weights``, else in proportion to the batches
        of data in each bucket, estimated from the first ``buckets.estimate`` samples of the sources
        (stills mixed in at ``image_ratio``). Measured once; the same on every rank."""
        if self.bucket_list is None:
            raise ValueError("VideoTextDataModule: no buckets configured")
        if self._bucket_weights is None:
            spec = self.bucket_spec
            if spec.weights is not None:
                self._bucket_weights = [float(w) for w in spec.weights]
            else:
                shares = [0.0] * len(self.bucket_list)
                for source, part in ((self.video, 1.0 - self.image_ratio), (self.images, self.image_ratio)):
                    if source is not None and part > 0:
                        found = estimate_shares(source, self.clip, self.bucket_list, spec.estimate)
                        shares = [s + part * f for s, f in zip(shares, found)]
                self._bucket_weights = step_weights(shares, self.bucket_list)
        return self._bucket_weights

    def steps_per_epoch(self) -> int | None:
        """Bucketed steps per epoch on every rank: the epoch's samples (``epoch_size``, else the
        training source's size) over ranks x the mean batch size of the plan; None for an endless
        ``resampled`` stream without ``epoch_size``."""
        if self.resampled and self.epoch_size is None:
            return None
        name, source = self._training_source()
        samples = self.epoch_size
        if samples is None:
            sizes = source.unit_sizes()
            if sizes is None:
                raise DataError(f"data.{name} ({source.describe()}): buckets need epoch_size for a stream of unknown "
                                "size (remote shards), or resampled: true")
            samples = sum(sizes)
            if name == "video" and self.image_ratio > 0:  # an epoch ends with its videos; stills come on top
                samples = samples / (1.0 - self.image_ratio)
        _, world = self._world()
        steps = math.floor(samples / (world * mean_batch_size(self.bucket_weights(), self.bucket_list)))
        return max(steps, 1) if self.small_data == "repeat" else steps

    def _bucket_loader(self) -> DataLoader:
        """The bucketed training loader (see :mod:`latentvid.data.bucket_batches`)."""
        name, source = self._training_source()
        rank, world = self._partition()
        steps = self.steps_per_epoch()
        if steps == 0:
            raise too_small_error(f"data.{name} ({source.describe()})", source_size(source), self.batch_size,
                                  self.num_workers, self._world()[1])
        epoch, step = self.plan_position
        if steps is not None and step >= steps:
            epoch, step = epoch + 1, 0
        plan = BucketPlan(self.bucket_weights(), seed=self.seed)
        batched = BucketBatched(self.train_dataset(plan_epoch=epoch), self.bucket_list, plan, self.clip,
                                steps_per_epoch=steps, seed=self.seed, rank=rank, world_size=world,
                                buffer=self.bucket_spec.buffer)
        batched.resume(epoch, step)
        extra = {"persistent_workers": True, "prefetch_factor": self.prefetch_factor} if self.num_workers > 0 else {}
        return _NonEmptyLoader(batched, batch_size=None, num_workers=self.num_workers, collate_fn=keep_batch, **extra)

    def _loader(self, dataset: Any, workers: int, drop_last: bool, cls: type[DataLoader] = DataLoader) -> DataLoader:
        extra = {"persistent_workers": True, "prefetch_factor": self.prefetch_factor} if workers > 0 else {}
        # batches are formed inside each worker (Batched), so skip counts survive drop_last
        return cls(Batched(dataset, self.batch_size, drop_last), batch_size=None, num_workers=workers,
                          collate_fn=keep_batch, **extra)

    def _world(self) -> tuple[int, int]:
        """(workers reading separate shares per rank, ranks)."""
        _, world = self._partition()
        if world is None:
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return max(1, self.num_workers), world

    def _training_source(self) -> tuple[str, Any]:
        if self.video is not None and self.image_ratio < 1:
            return "video", self.video
        return "images", self.images

    def check_size(self) -> None:
        """With ``small_data: stop``, raise :func:`~latentvid.data.sources.too_small_error` when
        epoch 0 would give some rank no full training batch (known sizes only: folders, local
        shards; stills mixed into a video epoch are not counted)."""
        if self.small_data != "stop" or self.latents is not None or self.resampled:
            return
        name, source = self._training_source()
        if self.bucket_list is not None:
            if source.unit_sizes() is not None and self.steps_per_epoch() == 0:
                raise too_small_error(f"data.{name} ({source.describe()})", source_size(source), self.batch_size,
                                      self.num_workers, self._world()[1])
            return
        sizes = source.unit_sizes()
        if sizes is None:
            return  # the loader stops at an epoch without batches instead
        workers, world = self._world()
        order = self._stream(source, name, True).unit_order(0)
        cap = -(-self.epoch_size // (workers * world)) if self.epoch_size else None  # MixedStream's share limit
        for rank in range(world):
            shares = [sum(sizes[u] for u in split_units(order, Partition(rank, world, w, workers)))
                      for w in range(workers)]
            if not any(min(n, cap or n) >= self.batch_size for n in shares):
                raise too_small_error(f"data.{name} ({source.describe()})", sum(sizes), self.batch_size,
                                      self.num_workers, world)

    def train_dataloader(self) -> DataLoader:
        """Fixed-size training batches; decoding in ``num_workers`` persistent workers. An epoch
        without a batch raises :class:`~latentvid.data.sources.DataError` (never an empty epoch)."""
        if self.latents is not None:
            self.setup("fit")
            return self._latent_dm.train_dataloader()
        self.check_size()
        name, source = self._training_source()
        workers, world = self._world()
        if self.bucket_list is not None:
            loader = self._bucket_loader()
        else:
            loader = self._loader(self.train_dataset(), self.num_workers, drop_last=True, cls=_NonEmptyLoader)
        loader.empty_error = lambda: too_small_error(f"data.{name} ({source.describe()})", None, self.batch_size,
                                                     self.num_workers, world)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        """Validation clips in order (none without a ``val`` source or ``val_latents``)."""
        if self.latents is not None:
            self.setup("validate")
            return self._latent_dm.val_dataloader()
        if self.val is None:
            return []
        return self._loader(self._stream(self.val, "val", False), self.val_num_workers, drop_last=False)

    # ---- resume position ---------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record which units (and, bucketed, which plan step) the training batches have consumed
        (see ``state_dict``)."""
        trainer = getattr(self, "trainer", None)
        if isinstance(batch, dict) and trainer is not None and trainer.training:
            self.progress.update(batch.get(UNITS_DONE, ()))
            if PLAN_STEP in batch:
                epoch, step = batch[PLAN_STEP]
                self.plan_position = (int(epoch), int(step) + 1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """``{"version": 1, "progress": {stream: {"epoch": e, "done_units": [...]}}}``: the units
        (shards / row blocks) of the current epoch that the trained batches consumed completely;
        bucketed, also ``"plan": {"epoch": e, "step": k}``, the next step of the bucket plan."""
        state = {"version": STATE_VERSION, "progress": self.progress.state_dict()}
        if self.bucket_list is not None:
            state["plan"] = {"epoch": self.plan_position[0], "step": self.plan_position[1]}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next training dataloader leaves out the units consumed in that epoch (and,
        bucketed, continues the bucket plan at the saved step)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"VideoTextDataModule: unknown state version {state.get('version')!r}")
        self.progress.load_state_dict(state["progress"])
        if "plan" in state:
            self.plan_position = (int(state["plan"]["epoch"]), int(state["plan"]["step"]))


def source_size(source: Any) -> int | None:
    """Samples in a source when known without reading it (folders, local shards), else None."""
    sizes = source.unit_sizes()
    return None if sizes is None else sum(sizes)


class _NonEmptyLoader(DataLoader):
    """A training DataLoader whose epoch must yield a batch: one that yields none raises
    ``empty_error()`` instead of letting the trainer start the next (empty) epoch."""

    empty_error: Callable[[], Exception] | None = None

    def __iter__(self) -> Iterator[Any]:
        count = 0
        for batch in super().__iter__():
            count += 1
            yield batch
        if count == 0 and self.empty_error is not None:
            raise self.empty_error()
