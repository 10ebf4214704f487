"""Pre-encoded latents: a dataset and DataModule that train the diffusion model without the VAE.

``tools/encode_latents.py`` writes a folder like this (all paths relative to it)::

    meta.json            {"format": "latentvid-latents", "version": 1, "vae": source, "num_frames": T,
                          "height": H, "width": W, "latent_channels": C, "latent_frames": t,
                          "spatial_factor": sf, "temporal_factor": tf, "dtype": "float32", ...}
    index.jsonl          one row per sample: {"key", "path", "caption", "fps", "num_frames",
                          "latent_shape": [C, t, h, w], "frame_mask": [T bools], "latent_mask": [t bools],
                          "image": bool, "source": the data index it came from}
    latents/{key}.pt     a (C, t, h, w) tensor saved with torch.save: the *scaled* latents of the
                          first stage (what ``FirstStage.encode`` returns, posterior mean)
    eval_prompts.txt     copied from the data folder when it has one (used by LogSampleVideos)

Every sample has the same (C, t, h, w): stills were encoded as their padded T-frame video (as
the datasets serve them), and their ``latent_mask`` marks latent frame 0 only. A folder of
several shapes (clips encoded at their buckets' shapes) trains with ``buckets=True``: each
distinct latent shape is a bucket, one bucket per step on every rank
(:class:`~latentvid.data.bucket_batches.BucketSampler`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from latentvid.data.bucket_batches import BatchDataset, BucketSampler
from latentvid.data.buckets import batch_size_for
from latentvid.data.datamodule import mixing_weights
from latentvid.data.datasets import read_index
from latentvid.data.sampler import ResumableDataLoader, ResumableSampler, small_data_minimum
from latentvid.data.sources import check_small_data
from latentvid.data.stream import keep_batch

META_FILE = "meta.json"
INDEX_FILE = "index.jsonl"
FORMAT = "latentvid-latents"
ROW_KEYS = ("key", "path", "caption", "fps", "latent_shape", "latent_mask")
ENCODE_COMMAND = "python tools/encode_latents.py --vae CKPT_OR_DIFFUSERS_DIR --data DATA_FOLDER --out {root}"


def read_meta(root: str | os.PathLike) -> dict[str, Any]:
    """``root/meta.json`` as a dict; FileNotFoundError saying how to create the folder."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no pre-encoded latents in {root} ({path} not found); create them with "
            f"`{ENCODE_COMMAND.format(root=root)}`"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a latentvid latent folder (expected \"format\": \"{FORMAT}\")")
    return meta


def read_latent_index(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of ``root/index.jsonl``, checked: required keys present, files exist, masks fit shapes.

    Errors name the file, line number and offending key.
    """
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"latent index {path} not found; create it with `{ENCODE_COMMAND.format(root=root)}`")
    rows = read_index(root, INDEX_FILE, required=ROW_KEYS)  # JSON, keys and file existence, by line
    for row in rows:
        shape = row["latent_shape"]
        if len(shape) != 4 or len(row["latent_mask"]) != shape[1]:
            raise ValueError(
                f"{path}: row {row['key']!r}: latent_shape {shape} must be [C, t, h, w] and latent_mask must have "
                f"t entries (got {len(row['latent_mask'])})"
            )
    return rows


def latent_shape_paths(root: str | os.PathLike) -> dict[tuple[int, ...], list[str]]:
    """The stored latent shapes (C, t, h, w) of ``root/index.jsonl`` and the ``path`` of every
    sample of each, in index order; reads the index only (no latent file is opened or stat'ed), so
    start-up checks can afford it on a large folder. Rows without a readable ``latent_shape`` are
    left out: :func:`read_latent_index` names them when the data is set up."""
    path = Path(root) / INDEX_FILE
    shapes: dict[tuple[int, ...], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
            shape = tuple(int(v) for v in row["latent_shape"])
        except (ValueError, TypeError, KeyError):
            continue
        shapes.setdefault(shape, []).append(str(row.get("path", row.get("key", "?"))))
    return shapes


class LatentDataset(Dataset):
    """Pre-encoded samples of one latent folder (see the module docstring for the layout).

    Item: ``{"latents": float32 (C, t, h, w), "frame_mask": bool (t,) latent-frame mask,
    "fps": float32 scalar tensor, "caption": str, "key": str}``.

    Args:
        root: folder written by ``tools/encode_latents.py``.
        cache: keep loaded latents in memory (they are small; each worker holds its own copy).
        buckets: allow samples of several latent shapes (``latent_shapes``, each sample's
            ``bucket_of``); otherwise every sample must have the same shape.
    """

    def __init__(self, root: str, cache: bool = True, buckets: bool = False) -> None:
        self.root = str(root)
        self.meta = read_meta(root)
        self.rows = read_latent_index(root)
        shapes = sorted({tuple(r["latent_shape"]) for r in self.rows})
        if len(shapes) != 1 and not buckets:
            raise ValueError(f"{Path(root) / INDEX_FILE}: samples have different latent shapes {shapes} "
                             "(train them with buckets: true)")
        self.latent_shapes: list[tuple[int, int, int, int]] = shapes
        self.bucket_of = [shapes.index(tuple(r["latent_shape"])) for r in self.rows]
        self.latent_shape: tuple[int, int, int, int] = max(shapes, key=self.bucket_of.count)  # the most common
        self.cache = cache
        self._latents: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def is_image(self, i: int) -> bool:
        """Whether sample i is a still (one valid frame)."""
        row = self.rows[i]
        return bool(row.get("image", sum(map(bool, row.get("frame_mask", row["latent_mask"]))) == 1))

    def _load(self, i: int) -> torch.Tensor:
        if i in self._latents:
            return self._latents[i]
        path = self.rows[i]["path"]
        try:
            z = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file
            raise ValueError(f"cannot load latents from {path}: {err}") from err
        want = self.latent_shapes[self.bucket_of[i]]
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != want:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{path}: expected a latent tensor of shape {want}, got {got}")
        z = z.float()
        if self.cache:
            self._latents[i] = z
        return z

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item with ``latents`` (C, t, h, w), ``frame_mask`` (t,), ``fps``, ``caption``, ``key``."""
        row = self.rows[i]
        return {"latents": self._load(i), "frame_mask": torch.tensor(row["latent_mask"], dtype=torch.bool),
                "fps": torch.tensor(float(row["fps"]), dtype=torch.float32), "caption": row["caption"],
                "key": row["key"]}


class LatentDataModule(LightningDataModule):
    """Batches of pre-encoded latents for :class:`~latentvid.models.latent_diffusion.LatentDiffusion`.

    Batches are dicts: ``latents`` (B, C, t, h, w) float (scaled, as the first stage's ``encode``
    returns them), ``frame_mask`` (B, t) bool latent-frame mask, ``fps`` (B,), ``caption``
    list[str], ``key`` list[str]. The diffusion model's first stage must be the one that encoded
    them (it is still used to decode samples).

    Args:
        root: training latent folder (``tools/encode_latents.py --out``).
        batch_size: samples per batch (train and validation).
        num_workers: DataLoader worker processes (0 = load in the main process).
        image_ratio: expected fraction of stills among training samples; ``None`` draws every
            sample with equal probability.
        val_root: latent folder for validation (e.g. the held-out clips encoded separately);
            ``None``: no validation data.
        seed: seed of the training sampler.
        small_data: a training set with fewer samples than ``batch_size`` x ranks: ``"repeat"``
            draws more per epoch (at least one batch per rank), ``"stop"`` stops before training
            with one line naming the sizes.
        buckets: train a folder of several latent shapes, each a bucket whose batch size keeps
            ``batch_size`` x the latent tokens of the folder's reference clip (``meta.json``'s
            ``latent_frames``, ``height``, ``width``; else its most common shape) per batch; each
            step is one bucket's batch on every rank, every sample once per epoch. Not with
            ``image_ratio``.
    """

    def __init__(
        self,
        root: str = "data/shapes-latents",
        batch_size: int = 16,
        num_workers: int = 0,
        image_ratio: float | None = None,
        val_root: str | None = None,
        seed: int = 0,
        small_data: str = "repeat",
        buckets: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"invalid {batch_size=} {num_workers=}")
        check_small_data(small_data)
        if buckets and image_ratio is not None:
            raise ValueError(f"LatentDataModule: image_ratio={image_ratio} cannot be combined with buckets "
                             "(each bucket's samples are drawn once per epoch); set image_ratio: null")
        if image_ratio is not None:
            mixing_weights(1, 1, image_ratio)  # validate early
        self.save_hyperparameters()
        self.root = root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_ratio = image_ratio
        self.val_root = val_root
        self.seed = seed
        self.small_data = small_data
        self.buckets = buckets
        self.train_set: LatentDataset | None = None
        self.val_set: LatentDataset | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """The training folder's meta.json (clip length, frame size, first stage, ...)."""
        return read_meta(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Read the indexes (train always; validation when ``val_root`` is set)."""
        if self.train_set is None:
            self.train_set = LatentDataset(self.root, buckets=self.buckets)
        if self.val_root is not None and self.val_set is None:
            self.val_set = LatentDataset(self.val_root)
            if self.val_set.latent_shape not in self.train_set.latent_shapes:
                raise ValueError(
                    f"latent shapes differ: {self.root} has {self.train_set.latent_shape}, "
                    f"{self.val_root} has {self.val_set.latent_shape}"
                )

    def _loader_kwargs(self) -> dict:
        return {"batch_size": self.batch_size, "num_workers": self.num_workers,
                "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        """Samples drawn with replacement (stills at ``image_ratio`` when set); an epoch is the
        data set's size in draws, at least one batch per rank (``small_data``), split over ranks,
        last partial batch dropped; resumable (:mod:`latentvid.data.sampler`)."""
        if self.train_set is None:
            self.setup("fit")
        ds = self.train_set
        if self.buckets:
            return self._bucket_loader(ds)
        minimum = small_data_minimum(f"data ({self.root})", len(ds), self.batch_size, self.num_workers,
                                     self.small_data)
        if self.image_ratio is None:
            sampler = ResumableSampler(len(ds), replacement=True, seed=self.seed, min_per_replica=minimum)
        else:
            images = [i for i in range(len(ds)) if ds.is_image(i)]
            videos = [i for i in range(len(ds)) if not ds.is_image(i)]
            order = torch.tensor(videos + images, dtype=torch.long)
            weights = torch.empty(len(ds), dtype=torch.double)
            weights[order] = mixing_weights(len(videos), len(images), self.image_ratio)  # videos first, then stills
            sampler = ResumableSampler(len(ds), weights=weights, replacement=True, seed=self.seed,
                                       min_per_replica=minimum)
        return ResumableDataLoader(ds, sampler=sampler, drop_last=True, **self._loader_kwargs())

    def bucket_batch_sizes(self) -> list[int]:
        """Clips per batch of each latent shape of the training folder (``LatentDataset.latent_shapes``)."""
        if self.train_set is None:
            self.setup("fit")
        meta, shapes = self.train_set.meta, self.train_set.latent_shapes
        sf = meta.get("spatial_factor") or 1
        if all(meta.get(k) for k in ("latent_frames", "height", "width")):
            reference = meta["latent_frames"] * (meta["height"] / sf) * (meta["width"] / sf)
        else:
            _, t, h, w = self.train_set.latent_shape
            reference = t * h * w
        return [batch_size_for(t * h * w, reference, self.batch_size) for _, t, h, w in shapes]

    def _bucket_loader(self, ds: LatentDataset) -> DataLoader:
        """One latent shape per step on every rank (:class:`~latentvid.data.bucket_batches.BucketSampler`)."""
        sampler = BucketSampler(ds.bucket_of, self.bucket_batch_sizes(), seed=self.seed,
                                repeat=self.small_data == "repeat")
        if sampler.epoch_size == 0:
            from latentvid.data.sources import too_small_error

            raise too_small_error(f"data ({self.root})", len(ds), min(self.bucket_batch_sizes()), self.num_workers,
                                  sampler.num_replicas)
        return ResumableDataLoader(BatchDataset(ds), sampler=sampler, batch_size=None, collate_fn=keep_batch,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        """Validation samples in a fixed order (no loader when ``val_root`` is None)."""
        if self.val_root is None:
            return []
        if self.val_set is None:
            self.setup("validate")
        return DataLoader(self.val_set, shuffle=False, drop_last=False, **self._loader_kwargs())
