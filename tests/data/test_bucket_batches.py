"""Tests for latentvid/data/bucket_batches.py and the bucketed VideoTextDataModule / LatentDataModule:
a real folder (and shards) of mp4s of mixed aspect ratios and lengths gives batches whose shapes are
their buckets'; simulated ranks draw identical bucket sequences; a resumed run continues the plan
exactly; unit completions wait for the samples still buffered; over-full buffers drop and count;
latent folders of several shapes are cut into steps of one shape, every sample once per epoch."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latentvid.data.bucket_batches import BatchDataset, BucketBatched, BucketSampler
from latentvid.data.buckets import Bucket, BucketSpec, assign, mean_batch_size
from latentvid.data.clips import ClipSpec
from latentvid.data.folder import VideoFolder
from latentvid.data.latents import LatentDataModule
from latentvid.data.shards import ShardWriter, VideoShards
from latentvid.data.sources import Raw
from latentvid.data.video import write_video
from latentvid.data.video_text import VideoTextDataModule

# (height, width): 16:9, 9:16, 1:1, 4:3; lengths in frames at 8 fps
SIZES = [(36, 64), (64, 36), (48, 48), (48, 64)]
LENGTHS = [5, 9, 13, 17]
N = 24
CLIP = ClipSpec(num_frames=9, size=48, crop="center")
SPEC = BucketSpec(aspect_ratios=("1:1", "4:3", "16:9", "9:16"), frames=(5, 9), multiple=4, spatial_factor=4,
                  temporal_factor=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """N clips cycling through SIZES and LENGTHS, as a folder + JSONL index and as shards of 4."""
    root = tmp_path_factory.mktemp("buckets")
    rows, shapes = [], {}
    with ShardWriter(str(root / "shards" / "%02d.tar"), samples_per_shard=4) as writer:
        for i in range(N):
            (h, w), n = SIZES[i % 4], LENGTHS[(i // 4) % 4]
            frames = np.random.default_rng(i).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            write_video(root / f"v{i:02d}.mp4", frames, fps=8)
            rows.append({"path": f"v{i:02d}.mp4", "caption": f"clip {i}", "key": f"v{i:02d}"})
            writer.write({"__key__": f"v{i:02d}", "mp4": (root / f"v{i:02d}.mp4").read_bytes(), "txt": f"clip {i}"})
            shapes[f"v{i:02d}"] = (h, w, n)
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "shapes": shapes}


def module(data: dict, kind: str = "folder", workers: int = 2, **kw) -> VideoTextDataModule:
    video = (VideoFolder(str(data["root"]), "index.jsonl", key_column="key") if kind == "folder"
             else VideoShards(str(data["root"] / "shards" / "*.tar"), shuffle_buffer=4))
    args = {"clip": CLIP, "batch_size": 4, "num_workers": workers, "probe": 1, "buckets": SPEC, "seed": 3, **kw}
    dm = VideoTextDataModule(video=video, **args)
    dm.setup("fit")
    return dm


def read(dm: VideoTextDataModule, limit: int | None = None) -> list[dict]:
    out = []
    for batch in dm.train_dataloader():
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_batches_take_the_shapes_of_their_buckets(data, kind) -> None:
    dm = module(data, kind)
    buckets = dm.bucket_list
    assert [b.name for b in buckets] == ["48x48x5", "48x48x9", "40x56x5", "40x56x9", "36x64x5", "36x64x9",
                                         "64x36x5", "64x36x9"]
    batches = read(dm)
    assert len(batches) == dm.steps_per_epoch() > 1
    assert [b["plan_step"] for b in batches] == [[0, k] for k in range(len(batches))]
    seen = set()
    for batch in batches:
        bucket = buckets[batch["bucket"]]
        assert batch["video"].shape == (bucket.batch_size, 3, bucket.frames, bucket.height, bucket.width)
        assert batch["frame_mask"].shape == (bucket.batch_size, bucket.frames) and batch["frame_mask"].all()
        for key in batch["key"]:  # each clip is in the bucket its source's shape picks
            h, w, n = data["shapes"][key]
            assert assign(buckets, h, w, n) == batch["bucket"], key
            seen.add(key)
    assert len({b["bucket"] for b in batches}) > 1 and len(seen) > N // 2


def test_two_ranks_draw_the_same_bucket_at_every_step(data) -> None:
    runs = [read(module(data, rank=r, world_size=2)) for r in (0, 1)]
    assert len(runs[0]) == len(runs[1]) == module(data, rank=0, world_size=2).steps_per_epoch()
    assert [b["bucket"] for b in runs[0]] == [b["bucket"] for b in runs[1]]
    assert [b["plan_step"] for b in runs[0]] == [b["plan_step"] for b in runs[1]]
    assert [b["video"].shape for b in runs[0]] == [b["video"].shape for b in runs[1]]


def test_a_resumed_run_continues_the_bucket_plan(data) -> None:
    dm = module(data, workers=2, epoch_size=N * 2)
    loader = dm.train_dataloader()
    first = list(loader) + list(loader)  # epoch 0, then epoch 1 from the same (persistent) workers
    steps = dm.steps_per_epoch()
    assert len(first) == 2 * steps and first[steps]["plan_step"] == [1, 0]
    # the run trains k batches, saves its state and is killed; a new process resumes from it
    dm = module(data, workers=2, epoch_size=N * 2)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    loader = dm.train_dataloader()
    trained = list(loader)
    for batch in loader:  # 3 steps into epoch 1
        trained.append(batch)
        if len(trained) == steps + 3:
            break
    for batch in trained:
        dm.on_before_batch_transfer(batch, 0)
    state = dm.state_dict()
    assert state["plan"] == {"epoch": 1, "step": 3}
    resumed = module(data, workers=2, epoch_size=N * 2)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = read(resumed)
    assert [(b["plan_step"], b["bucket"], b["video"].shape) for b in rest] == \
           [(b["plan_step"], b["bucket"], b["video"].shape) for b in first[steps + 3:]]
    # resumed at the end of an epoch: the next epoch from its first step
    resumed = module(data, workers=2, epoch_size=N * 2)
    resumed.load_state_dict({**state, "plan": {"epoch": 0, "step": steps}})
    assert [b["plan_step"] for b in read(resumed)] == [[1, k] for k in range(steps)]


def test_samples_too_short_for_every_bucket_are_skipped_and_counted(data) -> None:
    spec = BucketSpec(aspect_ratios=("1:1", "16:9"), frames=(9,), multiple=4)
    dm = module(data, workers=0, clip=ClipSpec(num_frames=9, size=48, short="skip"), buckets=spec, probe=8)
    batches = read(dm)
    names = [n for b in batches for n in b["skipped_names"]]
    assert sum(b["skipped"] for b in batches) == len(names) > 0
    assert all("too short for every bucket (5 frames" in n for n in names)
    assert all(data["shapes"][k][2] >= 9 for b in batches for k in b["key"])


# ---- BucketBatched on a stream of stand-in samples ---------------------------------------------------


class FakeSource:
    """Decodes a raw sample into a zero clip of the spec's shape (no files)."""

    def decode(self, raw: Raw, clip: ClipSpec, generator=None) -> dict:
        h, w = clip.hw
        return {"video": torch.zeros(3, clip.num_frames, h, w), "frame_mask": torch.ones(clip.num_frames, dtype=bool),
                "fps": torch.tensor(8.0), "caption": raw.name, "key": raw.name}


class Fixed:
    """A plan over two buckets that draws ``sequence`` (then bucket 0)."""

    weights = [1.0, 1.0]

    def __init__(self, *sequence: int) -> None:
        self.sequence = sequence

    def bucket(self, epoch: int, step: int) -> int:
        return self.sequence[step] if step < len(self.sequence) else 0


def items(shapes: list[tuple[int, int, int]], done: dict[int, list] | None = None) -> list[dict]:
    source = FakeSource()
    return [{"raw": Raw(f"s{i}", i), "source": source, "shape": shape, "units_done": (done or {}).get(i, [])}
            for i, shape in enumerate(shapes)]


def test_unit_completions_wait_for_the_samples_still_buffered() -> None:
    buckets = [Bucket(8, 8, 1, 2), Bucket(8, 16, 1, 2)]
    square, wide = (8, 8, 1), (8, 16, 1)
    # step 0 (square) reads s0 (wide: it waits) and s1, s2; a unit completes with s2, but s0 is read
    # before it and still waiting: the completion rides on step 1, which takes s0
    stream = items([wide, square, square, wide, square, square], done={2: [("video", 0, 7)]})
    got = list(BucketBatched(stream, buckets, Fixed(0, 1, 0), ClipSpec(num_frames=1, size=8), steps_per_epoch=3))
    assert [(b["bucket"], b["key"], b["units_done"]) for b in got] == [
        (0, ["s1", "s2"], []), (1, ["s0", "s3"], [("video", 0, 7)]), (0, ["s4", "s5"], [])]
    assert [tuple(b["video"].shape) for b in got] == [(2, 3, 1, 8, 8), (2, 3, 1, 8, 16), (2, 3, 1, 8, 8)]


def test_over_full_buffers_drop_the_oldest_of_the_fullest_bucket() -> None:
    buckets = [Bucket(8, 8, 1, 2), Bucket(8, 16, 1, 2)]
    shapes = [(8, 16, 1)] * 10 + [(8, 8, 1)] * 2  # ten wide samples before the square batch can fill
    got = list(BucketBatched(items(shapes), buckets, Fixed(), ClipSpec(num_frames=1, size=8), steps_per_epoch=1,
                             buffer=4))
    assert got[0]["key"] == ["s10", "s11"] and got[0]["bucket_dropped"] == 7  # 4 held at most (3 wide + 1 square)
    with pytest.raises(Exception, match="ran out at step 1 of epoch 0"):
        list(BucketBatched(items(shapes), buckets, Fixed(), ClipSpec(num_frames=1, size=8), steps_per_epoch=2))
    with pytest.raises(Exception, match=r"bucket 8x8x1 is planned for step 0 of epoch 0, but 5 samples"):
        list(BucketBatched(items(shapes), buckets, Fixed(), ClipSpec(num_frames=1, size=8), steps_per_epoch=1,
                           max_pulls=5))


# ---- latents of several shapes ------------------------------------------------------------------------


def latent_folder(root: Path, shapes: list[tuple[int, int, int, int]]) -> Path:
    (root / "latents").mkdir(parents=True)
    meta = {"format": "latentvid-latents", "version": 1, "num_frames": 9, "height": 32, "width": 32,
            "latent_channels": 4, "latent_frames": 3, "spatial_factor": 4, "temporal_factor": 4}
    (root / "meta.json").write_text(json.dumps(meta))
    rows = []
    for i, shape in enumerate(shapes):
        torch.save(torch.full(shape, float(i)), root / "latents" / f"z{i}.pt")
        rows.append({"key": f"z{i}", "path": f"latents/z{i}.pt", "caption": "c", "fps": 8.0,
                     "latent_shape": list(shape), "latent_mask": [True] * shape[1]})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


LATENT_SHAPES = [(4, 3, 8, 8)] * 13 + [(4, 3, 4, 10)] * 9 + [(4, 5, 8, 8)] * 6  # 3 buckets


def test_latent_buckets_by_stored_shape(tmp_path: Path) -> None:
    root = latent_folder(tmp_path / "z", LATENT_SHAPES)
    with pytest.raises(ValueError, match="different latent shapes .* buckets: true"):
        LatentDataModule(root=str(root)).setup("fit")
    dm = LatentDataModule(root=str(root), batch_size=4, buckets=True)
    # reference: 3 x 8 x 8 latent tokens (meta.json) x 4 clips
    assert dm.bucket_batch_sizes() == [6, 4, 2]  # sorted shapes: (4,3,4,10) 120, (4,3,8,8) 192, (4,5,8,8) 320
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 9 // 6 + 13 // 4 + 6 // 2
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys))  # every sample at most once per epoch
    for b in batches:
        values = {int(v) for v in b["latents"].flatten(1).max(1).values}
        assert {LATENT_SHAPES[i] for i in values} == {tuple(b["latents"].shape[1:])}
    with pytest.raises(ValueError, match="image_ratio=0.25 cannot be combined with buckets"):
        LatentDataModule(root=str(root), buckets=True, image_ratio=0.25)


def test_bucket_sampler_ranks_share_steps_and_resume(tmp_path: Path) -> None:
    bucket_of = [i % 3 for i in range(40)]
    samplers = [BucketSampler(bucket_of, [2, 3, 4], seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    epochs = [[list(s) for _ in range(2)] for s in samplers]  # two epochs each
    steps = samplers[0].steps(0)
    assert len(epochs[0][0]) == len(epochs[1][0]) == len(steps) == 14 // 4 + 13 // 6 + 13 // 8
    for e in range(2):
        for a, b, (bucket, _) in zip(epochs[0][e], epochs[1][e], samplers[0].steps(e)):
            assert {bucket_of[i] for i in a + b} == {bucket} and not set(a) & set(b)  # same bucket, own samples
            assert len(a) == len(b) == [2, 3, 4][bucket]
    assert epochs[0][0] != epochs[0][1]
    # resumed after 3 steps of epoch 1 (DataPosition counts steps: draws_per_step = 1)
    samplers[0].set_position(1, 3 * BucketSampler.draws_per_step)
    resumed = BucketSampler(bucket_of, [2, 3, 4], seed=1, num_replicas=2, rank=0)
    resumed.load_state_dict(samplers[0].state_dict())
    assert list(resumed) == epochs[0][1][3:]
    data = BatchDataset([{"x": torch.tensor(float(i)), "key": str(i)} for i in range(40)])
    assert data[[3, 5]]["x"].tolist() == [3.0, 5.0]


def test_the_example_config_builds_its_buckets() -> None:
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    root = Path(__file__).resolve().parents[2]
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    config = parser.parse_args(["--data", str(root / "configs" / "bucket-data.yaml")])
    dm = parser.instantiate_classes(config).data
    assert isinstance(dm, VideoTextDataModule) and dm.bucket_spec.aspect_ratios == ("1:1", "16:9", "9:16")
    # 16 clips of 3 x 8 x 8 latent tokens (9 frames of 32 x 32 through factors 4 and 4) per batch
    assert [(b.name, b.batch_size) for b in dm.bucket_list] == [
        ("32x32x5", 24), ("32x32x9", 16), ("24x40x5", 26), ("24x40x9", 17), ("40x24x5", 26), ("40x24x9", 17)]


def test_stills_mix_into_the_bucket_of_their_aspect_with_the_fewest_frames(data, tmp_path: Path) -> None:
    from PIL import Image

    from latentvid.data.folder import ImageFolder

    rows = []
    for i, (w, h) in enumerate([(64, 36), (36, 64), (50, 50)] * 2):
        Image.new("RGB", (w, h), (10 * i, 0, 0)).save(tmp_path / f"s{i}.png")
        rows.append({"path": f"s{i}.png", "caption": "still", "key": f"s{i}"})
    (tmp_path / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stills = {"s0": 4, "s1": 6, "s2": 0, "s3": 4, "s4": 6, "s5": 0}  # bucket: 36x64x5, 64x36x5, 48x48x5
    dm = module(data, workers=0, images=ImageFolder(str(tmp_path), "images.jsonl", key_column="key"),
                image_ratio=0.5)
    # an epoch ends with its N videos, half the samples: 2N samples over the plan's mean batch size
    assert dm.steps_per_epoch() == int(2 * N // mean_batch_size(dm.bucket_weights(), dm.bucket_list))
    seen = 0
    for batch in read(dm):
        for key, mask in zip(batch["key"], batch["frame_mask"]):
            if key in stills:
                seen += 1
                assert batch["bucket"] == stills[key] and mask.tolist() == [True] + [False] * 4  # a one-frame video
    assert seen > 0


def test_small_data_stop_stops_before_training(data, tmp_path: Path) -> None:
    (tmp_path / "index.jsonl").write_text(json.dumps({"path": str(data["root"] / "v00.mp4"), "caption": "c"}) + "\n")
    dm = VideoTextDataModule(video=VideoFolder(str(tmp_path), "index.jsonl"), clip=CLIP, batch_size=4,
                             num_workers=0, probe=1, buckets=SPEC, small_data="stop")
    dm.setup("fit")
    with pytest.raises(Exception, match=r"1 training samples give some rank no full batch of batch_size 4"):
        dm.train_dataloader()
    dm = VideoTextDataModule(video=VideoFolder(str(tmp_path), "index.jsonl"), clip=CLIP, batch_size=4,
                             num_workers=0, probe=1, buckets=SPEC)  # small_data repeat: one step of that clip
    dm.setup("fit")
    assert [b["key"] for b in read(dm)] == [[str(data["root"] / "v00")] * 6]  # bucket 36x64x5: batches of 6
