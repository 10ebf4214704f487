"""Training sets smaller than batch x workers (x ranks): ``small_data`` (latentvid/data/sources.py)
in every training source: folder and shards (SampleStream refill, video_text.py), latents
(latents.py) and shapes (datamodule.py), through real DataLoaders with 2 worker processes.

Real ranks (2 gloo processes) are in test_small_data_ddp.py; here ranks are simulated through the
datamodule's rank / world_size arguments where it has them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvid.data.clips import ClipSpec
from latentvid.data.datamodule import ShapesDataModule
from latentvid.data.folder import VideoFolder
from latentvid.data.latents import LatentDataModule
from latentvid.data.shards import ShardWriter, VideoShards
from latentvid.data.sources import DataError
from latentvid.data.video import write_video
from latentvid.data.video_text import VideoTextDataModule

BATCH, WORKERS = 4, 2
SIZES = (1, 3, BATCH * WORKERS - 1)  # 1 clip, 3 clips, one short of a batch per worker
CLIP = ClipSpec(num_frames=4, size=16)
SHAPES = Path(__file__).resolve().parents[2] / "data" / "shapes"  # the bundled set, read only


def write_clips(root: Path) -> None:
    """Into root: BATCH * WORKERS - 1 tiny clips and, per size n, ``index{n}.jsonl`` listing the first n
    and ``shards{n}/`` holding them as webdataset shards of 2 samples."""
    rows = []
    for i in range(max(SIZES)):
        frames = np.random.default_rng(i).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
        write_video(root / f"clip{i}.mp4", frames, fps=8)
        rows.append({"path": f"clip{i}.mp4", "caption": f"clip {i}", "key": f"clip{i}"})
    for n in SIZES:
        (root / f"index{n}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
        with ShardWriter(str(root / f"shards{n}" / "%03d.tar"), samples_per_shard=2) as writer:
            for r in rows[:n]:
                writer.write({"__key__": r["key"], "mp4": (root / r["path"]).read_bytes(), "txt": r["caption"]})


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder from :func:`write_clips`."""
    root = tmp_path_factory.mktemp("small")
    write_clips(root)
    return root


def stream_module(clips: Path, kind: str, n: int, **kwargs) -> VideoTextDataModule:
    if kind == "folder":
        video = VideoFolder(str(clips), index=f"index{n}.jsonl", key_column="key")
    else:
        video = VideoShards(str(clips / f"shards{n}" / "*.tar"), shuffle_buffer=4)
    return VideoTextDataModule(video=video, clip=CLIP, batch_size=BATCH, probe=1, **kwargs)


def epochs(loader, count: int = 2) -> list[list[list[str]]]:
    """The keys of each batch of ``count`` passes over ``loader``."""
    return [[list(batch["key"]) for batch in loader] for _ in range(count)]


@pytest.mark.parametrize("kind", ["folder", "shards"])
@pytest.mark.parametrize("n", SIZES)
def test_a_small_stream_fills_one_batch_per_reader(clips: Path, kind: str, n: int) -> None:
    names = {f"clip{i}" for i in range(n)}
    for rank, world in ((None, None), (0, 2), (1, 2)):
        dm = stream_module(clips, kind, n, num_workers=WORKERS, rank=rank, world_size=world)
        dm.setup("fit")
        for batches in epochs(dm.train_dataloader()):
            # each worker read its share, then the epoch's samples again up to one full batch
            assert len(batches) == WORKERS and all(len(b) == BATCH for b in batches)
            seen = {k for b in batches for k in b}
            assert seen <= names
            if world is None:  # one rank: every sample is in someone's share, so in the epoch
                assert seen == names


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_stop_ends_before_training_with_one_line_naming_the_sizes(clips: Path, kind: str) -> None:
    for n in (1, 3):
        dm = stream_module(clips, kind, n, num_workers=WORKERS, small_data="stop")
        with pytest.raises(DataError) as err:
            dm.train_dataloader()
        message = str(err.value)
        assert "\n" not in message
        assert f"{n} training sample" in message and f"batch_size {BATCH}" in message
        assert f"num_workers {WORKERS}" in message and "ranks 1" in message
    # 7 clips on 2 workers: shares of 4 and 3, so one reader fills a batch and the epoch trains
    dm = stream_module(clips, kind, 7, num_workers=WORKERS, small_data="stop")
    assert [len(b) for b in epochs(dm.train_dataloader(), 1)[0]] == [BATCH]
    # on 2 ranks every reader holds at most 2 of the 7: rank by rank, no batch
    dm = stream_module(clips, kind, 7, num_workers=WORKERS, small_data="stop", rank=1, world_size=2)
    with pytest.raises(DataError, match=r"7 training sample.*num_workers 2, ranks 2"):
        dm.train_dataloader()


def test_an_epoch_without_a_batch_stops_instead_of_spinning(clips: Path) -> None:
    """Sizes not known up front (here: a shard listing faked away) are caught at the empty epoch."""
    dm = stream_module(clips, "shards", 3, num_workers=WORKERS, small_data="stop")
    dm.video.unit_sizes = lambda: None
    loader = dm.train_dataloader()
    with pytest.raises(DataError, match=r"unknown number of training samples.*batch_size 4"):
        list(loader)


def write_latents(root: Path, n: int, prefix: str = "z") -> set[str]:
    """A latent folder (tools/encode_latents.py's layout) of n clips keyed ``{prefix}{i}``; returns the keys."""
    (root / "latents").mkdir(parents=True)
    meta = {"format": "latentvid-latents", "version": 1, "num_frames": 5, "height": 8, "width": 8,
            "latent_channels": 2, "latent_frames": 2, "spatial_factor": 4, "temporal_factor": 4}
    (root / "meta.json").write_text(json.dumps(meta))
    rows = []
    for i in range(n):
        torch.save(torch.full((2, 2, 2, 2), float(i)), root / "latents" / f"z{i}.pt")
        rows.append({"key": f"{prefix}{i}", "path": f"latents/z{i}.pt", "caption": f"clip {i}", "fps": 8.0,
                     "latent_shape": [2, 2, 2, 2], "latent_mask": [True, True], "image": False})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {r["key"] for r in rows}


def shapes_folder(tmp: Path, n: int) -> tuple[Path, set[str]]:
    """The bundled shapes folder's indexes, cut to n clips and one still (never drawn at image_ratio 0)."""
    shapes = SHAPES
    root = tmp / f"shapes{n}"
    root.mkdir()
    (root / ".complete").write_bytes((shapes / ".complete").read_bytes())
    keys = set()
    for index, keep in (("videos.jsonl", n), ("images.jsonl", 1), ("heldout.jsonl", 1)):
        rows = [json.loads(line) for line in (shapes / index).read_text().splitlines()[:keep]]
        for r in rows:  # absolute paths: the media stay in the shared folder
            r.update({k: str(shapes / v) for k, v in r.items() if isinstance(v, str) and (shapes / v).is_file()})
        (root / index).write_text("".join(json.dumps(r) + "\n" for r in rows))
        keys |= {r["key"] for r in rows} if index == "videos.jsonl" else set()
    return root, keys


@pytest.mark.parametrize("n", SIZES)
def test_map_style_sets_draw_at_least_a_batch(tmp_path: Path, n: int) -> None:
    latents = LatentDataModule(root=str(tmp_path / "z"), batch_size=BATCH, num_workers=WORKERS)
    latent_keys = write_latents(tmp_path / "z", n)
    folder, shape_keys = shapes_folder(tmp_path, n)
    shapes_dm = ShapesDataModule(root=str(folder), batch_size=BATCH, num_workers=WORKERS, image_ratio=0.0,
                                 generate=False)
    for dm, keys, total in ((latents, latent_keys, n), (shapes_dm, shape_keys, n + 1)):
        dm.setup("fit")
        loader = dm.train_dataloader()
        # an epoch is max(samples, one batch) draws with replacement; batches form in the main process
        assert len(loader) == max(total, BATCH) // BATCH
        for batches in epochs(loader):
            assert len(batches) == len(loader) and all(len(b) == BATCH for b in batches)
            assert {k for b in batches for k in b} <= keys
        dm.small_data = "stop"
        if total < BATCH:
            with pytest.raises(DataError, match=rf"^data \(.*\): {total} training sample.*batch_size {BATCH} "
                                                rf"\(num_workers {WORKERS}, ranks 1\)"):
                dm.train_dataloader()
        else:
            assert len(dm.train_dataloader()) == total // BATCH


def test_video_text_latents_pass_small_data_on(tmp_path: Path) -> None:
    write_latents(tmp_path / "z", 3)
    dm = VideoTextDataModule(latents=str(tmp_path / "z"), batch_size=BATCH, num_workers=0, small_data="stop")
    with pytest.raises(DataError, match="3 training samples"):
        dm.train_dataloader()
    dm = VideoTextDataModule(latents=str(tmp_path / "z"), batch_size=BATCH, num_workers=0)
    assert [len(b["key"]) for b in dm.train_dataloader()] == [BATCH]


def test_small_data_must_be_a_known_policy() -> None:
    for make in (lambda: LatentDataModule(small_data="again"), lambda: ShapesDataModule(small_data="again"),
                 lambda: VideoTextDataModule(latents="x", small_data="again")):
        with pytest.raises(ValueError, match=r"small_data must be one of \['repeat', 'stop'\], got 'again'"):
            make()


def test_refill_reads_are_spread_over_the_set(clips: Path) -> None:
    """One clip fills a batch by itself; three clips on one worker fill it from all of them."""
    dm = stream_module(clips, "folder", 3, num_workers=0)
    (batch,) = epochs(dm.train_dataloader(), 1)[0]
    assert sorted(Counter(batch).values()) == [1, 1, 2]
