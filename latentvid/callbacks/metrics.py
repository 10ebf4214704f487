"""Evaluation metrics on generated samples during validation (FVD, CLIPSIM, shapes probe, ...).

Every ``every_n_validations``-th validation run (sanity checks excluded), :class:`SampleMetrics`
samples fixed captions with fixed seeds through the module's ``sample()`` and feeds the videos to
each configured torchmetrics ``Metric``, logs the results as ``val/{name}`` (a dict result
``{"colour": ..}`` of metric ``probe`` becomes ``val/probe_colour``) and resets the metrics.

Example (``trainer.callbacks`` in a config; every key mirrors a constructor argument)::

    - class_path: latentvid.callbacks.metrics.SampleMetrics
      init_args:
        captions: data/shapes/eval_prompts.txt   # or a list of captions
        num_per_caption: 2
        every_n_validations: 2
        steps: 30
        guidance_scale: 3.0
        metrics:
          probe:
            class_path: latentvid.metrics.shapes.ShapesProbe
          fvd:
            class_path: latentvid.metrics.fvd.FrechetVideoDistance
            init_args:
              weights: /path/to/rgb_imagenet.pt   # pytorch-i3d weights (see the README)
              num_frames: 8                       # <= the clip length
          clip:
            class_path: latentvid.metrics.clip_score.VideoCLIPScore
            init_args:
              arch: ViT-B-32
              checkpoint: /path/to/open_clip_pytorch_model.bin

Dispatch: a :class:`~latentvid.metrics.fvd.FrechetVideoDistance` gets the validation clips as
real videos (``update(clips, real=True)``, clips whose every frame is valid, from every
validation batch of dataloader 0) and the samples as generated ones (``real=False``); every
other metric gets ``update(videos, captions)``. An FVD built with ``reset_real_features: false``
encodes the real clips at the first scored run only and keeps their statistics afterwards.

Distributed runs: the sample list (captions x ``num_per_caption``, in that order) is cut into
batches of ``batch_size``; batch ``j`` is always sampled with seed ``seed + j`` and rank ``r``
samples batches ``j`` with ``j % world_size == r``. Every rank updates its own metric states and
``compute()`` sums them across ranks (torchmetrics' ``sync_on_compute``), so the logged numbers
do not depend on the number of processes; FVD's real statistics likewise come from every
rank's share of the validation data.

The metric modules belong to this callback, not to the LightningModule, so their weights (I3D,
CLIP) and states never enter model checkpoints; they are moved to the module's device when
they are used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric

from latentvid.diffusion.samplers import SAMPLERS
from latentvid.metrics.fvd import FrechetVideoDistance

__all__ = ["SampleMetrics", "sample_plan", "flatten_result", "read_prompts"]

log = logging.getLogger(__name__)


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a prompts file (one caption per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    captions = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not captions:
        raise ValueError(f"prompts file {path} has no captions")
    return captions


def sample_plan(
    captions: list[str], num_per_caption: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[tuple[int, list[str]]]:
    """This rank's sampling batches as ``(seed, captions)`` pairs.

    The full list is ``captions`` each repeated ``num_per_caption`` times (caption-major), cut
    into consecutive batches of ``batch_size``; batch ``j`` has seed ``seed + j`` and belongs to
    rank ``j % world_size``. The union over ranks is the same for any ``world_size``.
    """
    if num_per_caption < 1 or batch_size < 1:
        raise ValueError(f"num_per_caption and batch_size must be >= 1, got {num_per_caption}, {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    items = [c for c in captions for _ in range(num_per_caption)]
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    return [(seed + j, batch) for j, batch in enumerate(batches) if j % world_size == rank]


def flatten_result(name: str, value: Tensor | float | dict[str, Any]) -> Iterator[tuple[str, float]]:
    """``("probe", {"colour": 0.5, "shape": 1.0})`` -> ``("probe_colour", 0.5), ("probe_shape", 1.0)``;
    a scalar gives ``(name, value)``. Nested dicts join their keys with ``_``."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from flatten_result(f"{name}_{key}", sub)
        return
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} returned a tensor of shape {tuple(value.shape)}; need a scalar")
        value = value.item()
    yield name, float(value)


def _real_clips(batch: Any) -> Tensor | None:
    """The fully valid clips ``(N, 3, T, H, W)`` of a validation batch (stills and padded clips
    left out), or None when the batch has no ``video``."""
    if not isinstance(batch, dict) or "video" not in batch:
        return None
    video = batch["video"]
    mask = batch.get("frame_mask")
    if mask is None:
        return video
    keep = mask.bool().all(dim=1)  # (B,)
    return video[keep]


def _wants_real(metric: Metric) -> bool:
    """An FVD metric takes real clips unless it kept real statistics from an earlier run
    (``reset_real_features=False``): adding them again would count them twice."""
    if not isinstance(metric, FrechetVideoDistance):
        return False
    return metric.reset_real_features or int(metric.real_n) == 0


class SampleMetrics(Callback):
    """Sample captions at validation and score the samples with torchmetrics Metrics.

    Sampling runs inside the first validation batch, after an EMA callback has swapped its
    averaged weights in (its ``on_validation_epoch_start`` has run by then whatever the callback
    order). See the module docstring for the YAML form, the dispatch rule and DDP behaviour.

    Args:
        metrics: name -> Metric; results are logged as ``val/{name}`` (dict results as
            ``val/{name}_{key}``). ``FrechetVideoDistance`` instances also receive real clips.
        captions: captions to sample, or the path of a prompts file (one caption per line);
            None reads ``eval_prompts.txt`` from the datamodule's ``root``.
        num_per_caption: samples per caption (different seeds).
        num_frames: frames per sample; None = the validation clips' T.
        height: sample height in pixels; None = the validation clips' H.
        width: sample width in pixels; None = the validation clips' W.
        fps: frame rate the model is conditioned on.
        steps: sampler steps (None = the model's default).
        sampler: a name in :data:`~latentvid.diffusion.samplers.SAMPLERS` (None = the model's default).
        guidance_scale: classifier-free guidance weight (None = the model's default).
        every_n_validations: score at validation runs 0, n, 2n, ... (sanity checks not counted).
        seed: batch ``j`` of samples uses seed ``seed + j`` (see :func:`sample_plan`).
        batch_size: captions per ``sample()`` call; results depend on it (noise is drawn per batch).
    """

    def __init__(
        self,
        metrics: dict[str, Metric],
        captions: list[str] | str | None = None,
        num_per_caption: int = 1,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float = 8.0,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        every_n_validations: int = 1,
        seed: int = 0,
        batch_size: int = 1,
    ) -> None:
        if not metrics:
            raise ValueError("SampleMetrics needs at least one metric in `metrics`")
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"SampleMetrics: metrics[{name!r}] is a {type(metric).__name__}, not a torchmetrics Metric"
                )
        if every_n_validations < 1 or num_per_caption < 1 or batch_size < 1:
            raise ValueError(
                f"SampleMetrics: every_n_validations, num_per_caption and batch_size must be >= 1, got "
                f"{every_n_validations}, {num_per_caption}, {batch_size}"
            )
        if sampler is not None and sampler not in SAMPLERS:
            raise ValueError(f"SampleMetrics: unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
        # A plain dict, not an nn.ModuleDict on the LightningModule: nothing reaches checkpoints.
        self.metrics = dict(metrics)
        self.captions = captions
        self.num_per_caption = num_per_caption
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.steps, self.sampler, self.guidance_scale = steps, sampler, guidance_scale
        self.every_n_validations = every_n_validations
        self.seed = seed
        self.batch_size = batch_size
        self._validations = 0  # validation runs seen, sanity checks excluded
        self._active = False  # this validation run is being scored
        self._fill_real: list[str] = []  # FVD metrics that take this run's validation clips

    # ---- configuration ----------------------------------------------------------------------
    def resolve_captions(self, trainer: Trainer | None) -> list[str]:
        """The caption list: given, read from the prompts file, or the datamodule's eval_prompts.txt."""
        if isinstance(self.captions, str):
            return read_prompts(self.captions)
        if self.captions is not None:
            if not self.captions:
                raise ValueError("SampleMetrics: `captions` is an empty list")
            return list(self.captions)
        datamodule = getattr(trainer, "datamodule", None)
        root = getattr(datamodule, "root", None)
        if root and (Path(root) / "eval_prompts.txt").is_file():
            return read_prompts(Path(root) / "eval_prompts.txt")
        raise ValueError(
            "SampleMetrics has no captions: set `captions` (a list or a prompts file), or use a "
            "datamodule whose `root` holds eval_prompts.txt"
        )

    def _clip_shape(self, batch: Any) -> tuple[int, int, int]:
        """(T, H, W) to sample: the configured values, gaps filled from the validation clips."""
        given = (self.num_frames, self.height, self.width)
        if all(v is not None for v in given):
            return given  # type: ignore[return-value]
        if not isinstance(batch, dict) or "video" not in batch:
            raise ValueError("SampleMetrics: set num_frames, height and width (the validation batch has no 'video')")
        t, h, w = batch["video"].shape[2:]  # (B, 3, T, H, W)
        return tuple(int(v if v is not None else d) for v, d in zip(given, (t, h, w)))  # type: ignore[return-value]

    # ---- hooks ------------------------------------------------------------------------------
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or dataloader_idx != 0:
            return
        if batch_idx == 0:
            self._active = self._validations % self.every_n_validations == 0
            self._validations += 1
            if self._active:
                for metric in self.metrics.values():
                    metric.reset()
                    metric.to(pl_module.device)
                self._fill_real = [name for name, m in self.metrics.items() if _wants_real(m)]
                self.sample_and_update(trainer, pl_module, self._clip_shape(batch))
        if self._active:
            self.update_real(batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._active:
            return
        self._active = False
        for name, value in self.compute().items():
            if math.isnan(value):  # e.g. the probe's direction accuracy without moving captions
                continue
            pl_module.log(f"val/{name}", value, sync_dist=False)  # compute() has already synced ranks
        for metric in self.metrics.values():
            metric.reset()

    # ---- work -------------------------------------------------------------------------------
    def sample_and_update(self, trainer: Trainer, pl_module: LightningModule, shape: tuple[int, int, int]) -> int:
        """Sample this rank's share of the captions and feed the metrics; returns the number of videos."""
        captions = self.resolve_captions(trainer)
        plan = sample_plan(captions, self.num_per_caption, self.batch_size, self.seed,
                           trainer.global_rank, trainer.world_size)
        num_frames, height, width = shape
        count = 0
        for seed, batch_captions in plan:
            g = torch.Generator(device=pl_module.device).manual_seed(seed)
            videos = pl_module.sample(batch_captions, num_frames, height, width, fps=self.fps, steps=self.steps,
                                      sampler=self.sampler, guidance_scale=self.guidance_scale, generator=g)
            self.update_generated(videos, batch_captions)  # videos (B, 3, T, H, W)
            count += len(batch_captions)
        log.info("SampleMetrics: rank %d sampled %d videos", trainer.global_rank, count)
        return count

    def update_generated(self, videos: Tensor, captions: list[str]) -> None:
        """Feed generated ``videos (B, 3, T, H, W)`` in [-1, 1] and their captions to every metric."""
        for metric in self.metrics.values():
            if isinstance(metric, FrechetVideoDistance):
                metric.update(videos, real=False)
            else:
                metric.update(videos, captions)

    def update_real(self, batch: Any) -> None:
        """Feed a validation batch's fully valid clips to the FVD metrics that still need real videos."""
        fvds = [self.metrics[name] for name in self._fill_real]
        if not fvds:
            return
        clips = _real_clips(batch)
        if clips is None or clips.shape[0] == 0:
            return
        for metric in fvds:
            metric.update(clips, real=True)

    def compute(self) -> dict[str, float]:
        """Every metric's result, flattened to ``{name or name_key: float}``."""
        results: dict[str, float] = {}
        for name, metric in self.metrics.items():
            try:
                value = metric.compute()
            except Exception as err:  # name the metric: the torchmetrics error does not
                raise RuntimeError(f"SampleMetrics: metric {name!r} ({type(metric).__name__}) failed: {err}") from err
            results.update(flatten_result(name, value))
        return results
