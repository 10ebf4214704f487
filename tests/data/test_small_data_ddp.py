"""Training sets smaller than batch x workers x ranks on 2 real gloo ranks (``small_data``).

Two forked processes join a gloo process group; each builds the folder, shard, latent and shapes
datamodules with 2 DataLoader workers over 1, 3 and 7 samples and reads an epoch. The ranks must
take the same number of full batches (DDP steps in lockstep), or both stop with the same line.
tests/tools/test_fit_small_data.py runs tools/fit.py itself on 2 ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentvid.data.clips import ClipSpec
from latentvid.data.folder import VideoFolder
from latentvid.data.latents import LatentDataModule
from latentvid.data.shards import VideoShards
from latentvid.data.video_text import VideoTextDataModule

from .test_small_data import SIZES, write_clips, write_latents

BATCH, WORKERS, WORLD = 4, 2, 2


def make_data(root: Path) -> None:
    """Per size n: clips listed in ``index{n}.jsonl``, the same as shards in ``shards{n}/``, and a
    latent folder ``latents{n}/`` keyed like the clips."""
    write_clips(root)
    for n in SIZES:
        write_latents(root / f"latents{n}", n, prefix="clip")


def module(root: Path, kind: str, n: int, policy: str):
    common = {"batch_size": BATCH, "num_workers": WORKERS, "small_data": policy}
    if kind == "latents":
        return LatentDataModule(root=str(root / f"latents{n}"), **common)
    video = (VideoFolder(str(root), index=f"index{n}.jsonl", key_column="key") if kind == "folder"
             else VideoShards(str(root / f"shards{n}" / "*.tar"), shuffle_buffer=4))
    return VideoTextDataModule(video=video, clip=ClipSpec(num_frames=4, size=16), probe=1, **common)


def rank_main(rank: int, root: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{root / 'store'}", rank=rank,
                                         world_size=WORLD)
    results = {}
    for kind in ("folder", "shards", "latents"):
        for n in SIZES:
            for policy in ("repeat", "stop"):
                dm = module(root, kind, n, policy)
                dm.setup("fit")
                try:
                    loader = dm.train_dataloader()
                    batches = [list(b["key"]) for b in loader]
                except Exception as err:  # noqa: BLE001 (recorded for the parent to judge)
                    results[f"{kind}/{n}/{policy}"] = {"error": f"{type(err).__name__}: {err}"}
                else:
                    results[f"{kind}/{n}/{policy}"] = {"batches": batches}
    (root / f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, forked_ranks) -> list[dict]:
    root = tmp_path_factory.mktemp("ddp_small")
    make_data(root)
    return forked_ranks(rank_main, root, WORLD)


@pytest.mark.parametrize("kind", ["folder", "shards", "latents"])
@pytest.mark.parametrize("n", SIZES)
def test_repeat_gives_both_ranks_the_same_full_batches(ranks: list[dict], kind: str, n: int) -> None:
    got = [r[f"{kind}/{n}/repeat"] for r in ranks]
    assert all("batches" in g for g in got), got
    counts = [len(g["batches"]) for g in got]
    # streams: one batch per worker of each rank; latents: max(n, batch x ranks) draws, a batch per rank
    assert counts == ([WORKERS] * WORLD if kind != "latents" else [1] * WORLD)
    for g in got:
        assert all(len(b) == BATCH and set(b) <= {f"clip{i}" for i in range(n)} for b in g["batches"])


@pytest.mark.parametrize("kind", ["folder", "shards", "latents"])
@pytest.mark.parametrize("n", SIZES)
def test_stop_stops_both_ranks_with_one_line(ranks: list[dict], kind: str, n: int) -> None:
    got = [r[f"{kind}/{n}/stop"] for r in ranks]
    # 7 samples: at most 2 per reader (streams), 3 per rank (latents): no rank fills a batch of 4
    assert got[0] == got[1] and "error" in got[0], got
    message = got[0]["error"]
    assert message.startswith("SmallDataError: data") and "\n" not in message
    assert f"{n} training sample" in message
    assert f"batch_size {BATCH} (num_workers {WORKERS}, ranks {WORLD})" in message
