"""Tests for latentvid/data/video_text.py: joint image-video batches (mixing ratio, masks, fixed
shapes), validation, pre-encoded latents, configs, resume state and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from latentvid.data.clips import ClipSpec
from latentvid.data.folder import ImageFolder, VideoFolder
from latentvid.data.shards import ShardWriter, VideoShards
from latentvid.data.sources import DataError
from latentvid.data.video import write_video
from latentvid.data.video_text import VideoTextDataModule

T, S = 3, 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """8 videos (two of them shorter than T frames at the target rate) and 6 images, with CSV indexes."""
    root = tmp_path_factory.mktemp("vt")
    lines = ["path,caption"]
    for i in range(8):
        frames = 2 if i < 2 else 12
        write_video(root / f"v{i}.mp4", np.full((frames, 12, 16, 3), 20 * i, np.uint8), fps=16)
        lines.append(f"v{i}.mp4,video {i}")
    (root / "videos.csv").write_text("\n".join(lines) + "\n")
    lines = ["path,caption"]
    for i in range(6):
        Image.fromarray(np.full((10, 14, 3), 200, np.uint8)).save(root / f"i{i}.png")
        lines.append(f"i{i}.png,image {i}")
    (root / "images.csv").write_text("\n".join(lines) + "\n")
    (root / "eval_prompts.txt").write_text("a prompt\n")
    return root


def _dm(folder: Path, **kw) -> VideoTextDataModule:
    kw.setdefault("clip", ClipSpec(num_frames=T, size=S, fps=8))
    kw.setdefault("num_workers", 0)
    return VideoTextDataModule(video=VideoFolder(str(folder), "videos.csv"),
                               images=ImageFolder(str(folder), "images.csv"), **kw)


def test_mixing_ratio_is_honoured_and_images_have_one_valid_frame(folder: Path) -> None:
    dm = _dm(folder, image_ratio=0.25, batch_size=8, resampled=True, epoch_size=800, seed=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 100
    images = videos = 0
    for batch in batches:
        assert batch["video"].shape == (8, 3, T, S, S) and batch["frame_mask"].shape == (8, T)
        columns = (batch["caption"], batch["frame_mask"], batch["fps"], batch["video"])
        for caption, mask, fps, video in zip(*columns, strict=True):
            if caption.startswith("image"):
                images += 1
                assert mask.tolist() == [True, False, False] and fps == 0.0
                assert (video[:, 1:] == 0).all()
            else:
                videos += 1
                assert mask[0] and fps == pytest.approx(8.0)
    # binomial(800, 0.25): mean 200, sd ~12; allow 4 sd
    assert abs(images - 200) < 50 and images + videos == 800


def test_one_epoch_is_one_pass_over_the_videos_with_short_clips_masked(folder: Path) -> None:
    dm = _dm(folder, image_ratio=0.0, batch_size=2)
    batches = list(dm.train_dataloader())
    captions = [c for b in batches for c in b["caption"]]
    assert sorted(captions) == [f"video {i}" for i in range(8)]
    masks = {c: m.tolist() for b in batches for c, m in zip(b["caption"], b["frame_mask"], strict=True)}
    assert masks["video 0"] == [True, False, False]  # 2 frames at 16 fps -> 1 frame at 8 fps, padded
    assert masks["video 5"] == [True, True, True]


def test_static_stills_and_validation(folder: Path) -> None:
    dm = _dm(folder, image_ratio=1.0, batch_size=3, clip=ClipSpec(num_frames=T, size=S, image_mode="static",
                                                                    static_fps=5.0),
             val=VideoFolder(str(folder), "videos.csv"))
    train = list(dm.train_dataloader())
    assert sum(len(b["key"]) for b in train) == 6
    assert all(b["frame_mask"].all() and (b["fps"] == 5.0).all() for b in train)
    val = [list(dm.val_dataloader()) for _ in range(2)]
    assert [k for b in val[0] for k in b["key"]] == [f"v{i}" for i in range(8)]  # in order, none dropped
    for a, b in zip(*val, strict=True):  # centred starts and crops: the same clips every time
        torch.testing.assert_close(a["video"], b["video"], rtol=0, atol=0)
    assert dm.root == str(folder)  # where LogSampleVideos finds eval_prompts.txt


def test_workers_decode_and_count(folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "with_bad"
    bad.mkdir()
    (bad / "videos.csv").write_text((folder / "videos.csv").read_text().replace("v0.mp4", str(folder / "v0.mp4"))
                                    .replace("v1.mp4", "nope.mp4"))
    for i in range(2, 8):
        (bad / f"v{i}.mp4").symlink_to(folder / f"v{i}.mp4")
    dm = VideoTextDataModule(video=VideoFolder(str(bad), "videos.csv"), clip=ClipSpec(num_frames=T, size=S),
                             batch_size=2, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == 1
    assert any("nope.mp4" in n for b in batches for n in b["skipped_names"])


def test_shards_feed_the_same_batches(folder: Path, tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path / "v-%d.tar"), samples_per_shard=3) as writer:
        for i in range(8):
            writer.write({"__key__": f"v{i}", "mp4": (folder / f"v{i}.mp4").read_bytes(), "txt": f"video {i}"})
    dm = VideoTextDataModule(video=VideoShards(str(tmp_path / "v-{0..2}.tar")), images=ImageFolder(str(folder),
                             "images.csv"), image_ratio=0.5, clip=ClipSpec(num_frames=T, size=S, fps=8),
                             batch_size=4, num_workers=0, seed=1)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    videos = sorted(c for b in batches for c in b["caption"] if c.startswith("video"))
    assert len(set(videos)) == len(videos) and set(videos) <= {f"video {i}" for i in range(8)}
    assert all(b["video"].shape == (4, 3, T, S, S) for b in batches)


def test_resume_state_round_trip(folder: Path) -> None:
    dm = _dm(folder, image_ratio=0.0, batch_size=2)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    loader = iter(dm.train_dataloader())
    seen = []
    for _ in range(2):
        batch = dm.on_before_batch_transfer(next(loader), 0)
        seen += batch["caption"]
    state = dm.state_dict()
    assert state["version"] == 1 and state["progress"]["video"]["epoch"] == 0
    assert len(state["progress"]["video"]["done_units"]) >= 3
    torch.save(state, Path(folder) / "state.pt")
    fresh = _dm(folder, image_ratio=0.0, batch_size=1)
    fresh.load_state_dict(torch.load(Path(folder) / "state.pt", weights_only=True))
    rest = [c for b in fresh.train_dataloader() for c in b["caption"]]
    assert sorted(set(seen) | set(rest)) == [f"video {i}" for i in range(8)]
    assert len(rest) <= 8 - len(state["progress"]["video"]["done_units"])
    with pytest.raises(ValueError, match="state version"):
        fresh.load_state_dict({"version": 99})


class _Recorder(LightningModule):
    """A one-parameter model that records the captions of the batches it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        self.seen += batch["caption"]
        return (self.w - batch["video"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_resumed_fit_does_not_reread_consumed_units(folder: Path, tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    def trainer(**kw) -> Trainer:
        return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kw)

    # a checkpoint in the middle of the epoch (after 2 of the 4 batches), as a preempted run leaves it
    first = _Recorder()
    every_2 = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2, save_top_k=-1)
    trainer(max_steps=3, callbacks=[every_2]).fit(first, datamodule=_dm(folder, image_ratio=0.0, batch_size=2))
    ckpt = tmp_path / "step=2.ckpt"
    done = torch.load(ckpt, weights_only=True)["VideoTextDataModule"]["progress"]["video"]
    assert done["epoch"] == 0 and len(done["done_units"]) == 4  # 1 row per unit: the 4 clips of batches 1-2
    rows = VideoFolder(str(folder), "videos.csv")  # unit u = block u of the epoch's row permutation
    consumed = {rows.rows[raw.data].caption for u in done["done_units"] for raw in rows.read_unit(u, 0, 0, True)}
    assert consumed == set(first.seen[:4])

    second = _Recorder()
    trainer(max_epochs=1, enable_checkpointing=False).fit(
        second, datamodule=_dm(folder, image_ratio=0.0, batch_size=2), ckpt_path=ckpt)
    assert not consumed & set(second.seen)  # nothing the checkpoint had consumed is read again
    assert sorted(consumed | set(second.seen)) == [f"video {i}" for i in range(8)] and len(second.seen) == 4


def test_latents_option_reads_a_pre_encoded_folder(tmp_path: Path) -> None:
    root = tmp_path / "latents"
    (root / "latents").mkdir(parents=True)
    (root / "meta.json").write_text(json.dumps({"format": "latentvid-latents", "version": 1, "num_frames": 5}))
    rows = []
    for i in range(4):
        torch.save(torch.full((2, 2, 3, 3), float(i)), root / "latents" / f"k{i}.pt")
        rows.append({"key": f"k{i}", "path": f"latents/k{i}.pt", "caption": f"c{i}", "fps": 8.0,
                     "latent_shape": [2, 2, 3, 3], "latent_mask": [True, i < 2], "image": i >= 2})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = VideoTextDataModule(latents=str(root), val_latents=str(root), batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (2, 2, 2, 3, 3) and batch["frame_mask"].shape == (2, 2)
    assert sum(len(b["key"]) for b in dm.val_dataloader()) == 4


def test_config_mirrors_the_constructor(folder: Path, tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    config = tmp_path / "data.yaml"
    config.write_text(f"""
data:
  video:
    class_path: latentvid.data.folder.VideoFolder
    init_args: {{root: {folder}, index: videos.csv}}
  images:
    class_path: latentvid.data.folder.ImageFolder
    init_args: {{root: {folder}, index: images.csv}}
  image_ratio: 0.3
  clip: {{num_frames: 5, size: [8, 12], fps: 4, crop: center}}
  num_workers: 0
""")
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_class_arguments(VideoTextDataModule, "data")
    cfg = parser.instantiate_classes(parser.parse_args(["--config", str(config)]))
    dm = cfg.data
    assert isinstance(dm, VideoTextDataModule) and isinstance(dm.images, ImageFolder)
    assert dm.clip == ClipSpec(num_frames=5, size=(8, 12), fps=4, crop="center") and dm.image_ratio == 0.3
    # hyperparameters are plain data: a checkpoint holding them loads with weights_only=True
    torch.save(dict(dm.hparams), tmp_path / "hp.pt")
    hp = torch.load(tmp_path / "hp.pt", weights_only=True)
    assert hp["num_frames"] == 5 and hp["clip"]["size"] == (8, 12)


def test_bad_configurations_are_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs an `images` source"):
        VideoTextDataModule(video=VideoFolder(str(folder), "videos.csv"), image_ratio=0.2)
    with pytest.raises(TypeError, match="`video` must be a VideoSource, got ImageFolder"):
        VideoTextDataModule(video=ImageFolder(str(folder), "images.csv"))
    with pytest.raises(ValueError, match="give a `video` source"):
        VideoTextDataModule()
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    (tmp_path / "videos.csv").write_text("path,caption\njunk.mp4,x\nmissing.mp4,y\n")
    dm = VideoTextDataModule(video=VideoFolder(str(tmp_path), "videos.csv"), clip=ClipSpec(num_frames=T, size=S))
    with pytest.raises(DataError, match=r"data\.video: .*nothing readable.*junk\.mp4.*missing\.mp4"):
        dm.setup("fit")
    assert len(dm.check_sources()) == 1 and (dm.num_frames, dm.size) == (T, S)  # what a preflight reads
