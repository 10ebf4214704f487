"""Bucketed batches on 2 real gloo ranks: every rank draws the same bucket at every step.

Two forked processes join a gloo process group (ranks and world size from ``torch.distributed``);
each builds bucketed folder, shard and latent datamodules with 2 DataLoader workers over clips of
mixed aspect ratios and lengths and reads an epoch, then the first steps of the next one from a
checkpointed position. The ranks must take the same number of steps with the same bucket (and
shape) at each, a resumed loader must continue the plan, and latent ranks must take disjoint
samples of the shared step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvid.data.buckets import BucketSpec
from latentvid.data.clips import ClipSpec
from latentvid.data.folder import VideoFolder
from latentvid.data.latents import LatentDataModule
from latentvid.data.shards import ShardWriter, VideoShards
from latentvid.data.video import write_video
from latentvid.data.video_text import VideoTextDataModule

WORLD, WORKERS, N = 2, 2, 16
SIZES = [(36, 64), (64, 36), (48, 48), (48, 64)]  # (height, width)
SPEC = BucketSpec(aspect_ratios=("1:1", "4:3", "16:9", "9:16"), frames=(5, 9), multiple=4, spatial_factor=4,
                  temporal_factor=4)


def make_data(root: Path) -> None:
    rows = []
    with ShardWriter(str(root / "shards" / "%02d.tar"), samples_per_shard=2) as writer:
        for i in range(N):
            (h, w), n = SIZES[i % 4], (5, 9, 13)[i % 3]
            frames = np.random.default_rng(i).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            write_video(root / f"v{i:02d}.mp4", frames, fps=8)
            rows.append({"path": f"v{i:02d}.mp4", "caption": f"clip {i}", "key": f"v{i:02d}"})
            writer.write({"__key__": f"v{i:02d}", "mp4": (root / f"v{i:02d}.mp4").read_bytes(), "txt": "c"})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    z = root / "latents"
    (z / "latents").mkdir(parents=True)
    (z / "meta.json").write_text(json.dumps({"format": "latentvid-latents", "version": 1}))
    index = []
    for i in range(3 * N):
        shape = [(2, 3, 4, 4), (2, 3, 2, 6), (2, 5, 4, 4)][i % 3]
        torch.save(torch.full(shape, float(i)), z / "latents" / f"z{i}.pt")
        index.append({"key": f"z{i}", "path": f"latents/z{i}.pt", "caption": "c", "fps": 8.0,
                      "latent_shape": list(shape), "latent_mask": [True] * shape[1]})
    (z / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))


def module(root: Path, kind: str):
    if kind == "latents":
        return LatentDataModule(root=str(root / "latents"), batch_size=2, num_workers=WORKERS, buckets=True)
    video = (VideoFolder(str(root), "index.jsonl", key_column="key") if kind == "folder"
             else VideoShards(str(root / "shards" / "*.tar"), shuffle_buffer=2))
    return VideoTextDataModule(video=video, clip=ClipSpec(num_frames=9, size=48), batch_size=4, num_workers=WORKERS,
                               probe=1, buckets=SPEC, epoch_size=2 * N)


def describe(batch: dict) -> dict:
    tensor = batch["latents"] if "latents" in batch else batch["video"]
    return {"bucket": batch.get("bucket"), "step": batch.get("plan_step"), "shape": list(tensor.shape),
            "keys": list(batch["key"])}


def rank_main(rank: int, root: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{root / 'store'}", rank=rank,
                                         world_size=WORLD)
    results = {}
    for kind in ("folder", "shards", "latents"):
        dm = module(root, kind)
        dm.setup("fit")
        loader = dm.train_dataloader()
        epoch = [describe(b) for b in loader]
        if kind == "latents":  # the position DataPosition saves after 2 steps of epoch 1
            loader.sampler.set_position(1, 2)
            state = loader.state_dict()
            resumed = module(root, kind)
            resumed.setup("fit")
            resumed_loader = resumed.train_dataloader()
            resumed_loader.load_state_dict(state)
            tail = [describe(b) for b in resumed_loader]
            whole = [describe(b) for b in loader]  # epoch 1 uninterrupted
        else:
            resumed = module(root, kind)
            resumed.load_state_dict({"version": 1, "progress": {}, "plan": {"epoch": 1, "step": 2}})
            tail = [describe(b) for b in resumed.train_dataloader()]
            whole = [describe(b) for b in loader]
        results[kind] = {"epoch": epoch, "tail": tail, "whole": whole}
    (root / f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, forked_ranks) -> list[dict]:
    root = tmp_path_factory.mktemp("ddp_buckets")
    make_data(root)
    return forked_ranks(rank_main, root, WORLD)


@pytest.mark.parametrize("kind", ["folder", "shards", "latents"])
def test_both_ranks_take_the_same_bucket_at_every_step(ranks: list[dict], kind: str) -> None:
    a, b = (r[kind]["epoch"] for r in ranks)
    assert len(a) == len(b) > 2
    assert [s["shape"] for s in a] == [s["shape"] for s in b]  # bucket shape (and its batch size) per step
    assert len({tuple(s["shape"]) for s in a}) > 1  # several buckets were drawn
    if kind != "latents":
        assert [s["bucket"] for s in a] == [s["bucket"] for s in b]
        assert [s["step"] for s in a] == [[0, k] for k in range(len(a))]
    else:  # the ranks split each shared step's samples
        assert all(not set(x["keys"]) & set(y["keys"]) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["folder", "shards", "latents"])
def test_a_resumed_loader_continues_the_plan_on_every_rank(ranks: list[dict], kind: str) -> None:
    for r in ranks:
        whole, tail = r[kind]["whole"], r[kind]["tail"]
        assert [s["shape"] for s in tail] == [s["shape"] for s in whole[2:]]
        if kind == "latents":
            assert [s["keys"] for s in tail] == [s["keys"] for s in whole[2:]]
        else:
            assert [s["step"] for s in tail] == [s["step"] for s in whole[2:]] == [[1, k] for k in range(2, len(whole))]
