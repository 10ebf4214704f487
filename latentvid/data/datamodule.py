"""LightningDataModule for the synthetic shapes data (joint video + image training)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from latentvid.data.datasets import ImageTextDataset, VideoTextDataset
from latentvid.data.sampler import ResumableDataLoader, ResumableSampler, small_data_minimum
from latentvid.data.sources import check_small_data
from latentvid.data.shapes import FPS as SHAPES_FPS
from latentvid.data.shapes import (TRAVEL_RANGE, check_frame_rates, check_leave_ratio, check_travel_range,
                                   generate_shapes_dataset, read_marker)


def mixing_weights(num_videos: int, num_images: int, image_ratio: float) -> torch.Tensor:
    """Per-sample weights (num_videos + num_images,) so that images are drawn with
    probability ``image_ratio`` overall; videos come first, as in ``ConcatDataset([v, i])``."""
    if not 0.0 <= image_ratio <= 1.0:
        raise ValueError(f"image_ratio must be in [0, 1], got {image_ratio}")
    if (num_images == 0 and image_ratio > 0) or (num_videos == 0 and image_ratio < 1):
        raise ValueError(
            f"cannot draw image_ratio={image_ratio} from {num_videos} videos and {num_images} images"
        )
    video_w = (1.0 - image_ratio) / num_videos if num_videos else 0.0
    image_w = image_ratio / num_images if num_images else 0.0
    return torch.cat([torch.full((num_videos,), video_w), torch.full((num_images,), image_w)]).double()


class ShapesDataModule(LightningDataModule):
    """Shapes clips and stills for training, held-out clips for validation.

    Batches are dicts: ``video`` (B, 3, T, H, W) float in [-1, 1], ``frame_mask`` (B, T) bool,
    ``fps`` (B,), ``caption`` list[str], ``key`` list[str].

    Args:
        root: data folder; generated there when missing (see ``generate``). A complete folder
            made with other parameters is used as it is, with a warning.
        num_frames: frames per clip (T); also the generation length.
        size: frame side in pixels (H = W); also the generation size. A folder generated at
            another size is resized on load.
        batch_size: samples per batch (train and validation).
        num_workers: DataLoader worker processes (0 = load in the main process).
        image_ratio: expected fraction of stills among training samples.
        generate: create the data set in ``root`` when its ``.complete`` marker is missing;
            if False a missing data set is an error.
        seed: generation seed and seed of the training sampler.
        clips_per_combo: training clips per (colour, shape, direction) when generating.
        leave_ratio: share of those clips in which the shape may leave the frame (generation;
            :func:`latentvid.data.shapes.generate_shapes_dataset`); 0 keeps every shape inside.
        travel_range: the training clips' travel over a clip, as fractions of the frame side
            (generation; default ``TRAVEL_RANGE``); lower values add slow clips.
        frame_rates: the training clips' frame rates, cycled over each combination's clips
            (generation; None: all at 8 fps): a clip at r fps shows the same motion r / 8 times as
            densely and says so in its fps, which the denoiser is conditioned on.
        val_batches: number of validation batches (the first ``val_batches * batch_size``
            held-out clips; the held-out index is ordered so any prefix covers every combo).
        small_data: a training set with fewer samples than ``batch_size`` x ranks: ``"repeat"``
            draws more per epoch (at least one batch per rank; draws are with replacement anyway),
            ``"stop"`` stops before training with one line naming the sizes.
    """

    def __init__(
        self,
        root: str = "data/shapes",
        num_frames: int = 9,
        size: int = 32,
        batch_size: int = 16,
        num_workers: int = 0,
        image_ratio: float = 0.25,
        generate: bool = True,
        seed: int = 0,
        clips_per_combo: int = 4,
        val_batches: int = 1,
        small_data: str = "repeat",
        leave_ratio: float = 0.0,
        travel_range: tuple[float, float] = TRAVEL_RANGE,
        frame_rates: list[float] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or val_batches < 1 or num_workers < 0:
            raise ValueError(f"invalid {batch_size=} {val_batches=} {num_workers=}")
        mixing_weights(1, 1, image_ratio)  # validate early
        check_leave_ratio(leave_ratio)  # before training, not only when the data is generated
        travel_range = check_travel_range(travel_range)
        frame_rates = check_frame_rates(frame_rates, SHAPES_FPS, travel_range)
        check_small_data(small_data)
        self.save_hyperparameters()
        self.root = root
        self.num_frames = num_frames
        self.size = size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_ratio = image_ratio
        self.generate = generate
        self.seed = seed
        self.clips_per_combo = clips_per_combo
        self.leave_ratio = leave_ratio
        self.travel_range = travel_range
        self.frame_rates = frame_rates
        self.val_batches = val_batches
        self.small_data = small_data
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._num_videos = self._num_images = 0

    def prepare_data(self) -> None:
        """Generate the data set once (rank 0) if it is missing and ``generate`` is set."""
        marker = read_marker(self.root)
        if marker is None:
            if not self.generate:
                raise FileNotFoundError(
                    f"no complete shapes data set in {self.root} (missing {Path(self.root) / '.complete'}); "
                    f"create it with `python tools/prepare_data.py shapes --out {self.root} "
                    f"--size {self.size} --frames {self.num_frames} --seed {self.seed} "
                    f"--clips-per-combo {self.clips_per_combo}"
                    + (f" --leave-ratio {self.leave_ratio}" if self.leave_ratio else "")
                    + (" --travel-range {} {}".format(*self.travel_range) if self.travel_range != TRAVEL_RANGE else "")
                    + (" --frame-rates " + " ".join(f"{r:g}" for r in self.frame_rates)
                       if self.frame_rates != (SHAPES_FPS,) else "")
                    + "` or set generate=True"
                )
            generate_shapes_dataset(self.root, seed=self.seed, clips_per_combo=self.clips_per_combo,
                                    leave_ratio=self.leave_ratio, travel_range=self.travel_range,
                                    frame_rates=self.frame_rates,
                                    num_frames=self.num_frames, size=self.size)
            return
        params = marker.get("params", {})
        # the marker records leave_ratio, travel_range and frame_rates only when they differ from the defaults
        params = {"leave_ratio": 0.0, **params, "travel_range": tuple(params.get("travel_range", TRAVEL_RANGE)),
                  "frame_rates": tuple(params.get("frame_rates", [params.get("fps", SHAPES_FPS)]))}
        wanted = {"seed": self.seed, "clips_per_combo": self.clips_per_combo, "num_frames": self.num_frames,
                  "size": self.size, "leave_ratio": self.leave_ratio, "travel_range": self.travel_range,
                  "frame_rates": self.frame_rates}
        differ = {k: (params.get(k), v) for k, v in wanted.items() if params.get(k) != v}
        if differ:
            rank_zero_warn(f"using existing shapes data in {self.root}; (found, requested) differ: {differ}")

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (generating first when used outside a Trainer)."""
        if read_marker(self.root) is None:
            self.prepare_data()
        if self.train_set is None:
            videos = VideoTextDataset(self.root, "videos.jsonl", self.num_frames, self.size)
            images = ImageTextDataset(self.root, "images.jsonl", self.num_frames, self.size)
            self._num_videos, self._num_images = len(videos), len(images)
            self.train_set = ConcatDataset([videos, images])
        if self.val_set is None:
            heldout = VideoTextDataset(self.root, "heldout.jsonl", self.num_frames, self.size)
            self.val_set = Subset(heldout, range(min(len(heldout), self.val_batches * self.batch_size)))

    def _loader_kwargs(self) -> dict:
        return {"batch_size": self.batch_size, "num_workers": self.num_workers,
                "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        """Videos and stills drawn with replacement, ``image_ratio`` stills on average;
        an epoch is (number of videos + number of stills) draws, at least one batch per rank
        (``small_data``), split over ranks, last partial batch dropped. The order is fixed by
        (seed, epoch) and the loader's position is saved in checkpoints (:mod:`latentvid.data.sampler`)."""
        if self.train_set is None:
            self.setup("fit")
        weights = mixing_weights(self._num_videos, self._num_images, self.image_ratio)
        num_samples = len(weights)
        minimum = small_data_minimum(f"data ({self.root})", num_samples, self.batch_size, self.num_workers,
                                     self.small_data)
        sampler = ResumableSampler(num_samples, weights=weights, replacement=True, seed=self.seed,
                                   min_per_replica=minimum)
        return ResumableDataLoader(self.train_set, sampler=sampler, drop_last=True, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """Held-out clips in a fixed order."""
        if self.val_set is None:
            self.setup("validate")
        return DataLoader(self.val_set, shuffle=False, drop_last=False, **self._loader_kwargs())
