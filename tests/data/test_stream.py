"""Tests for latentvid/data/stream.py: every sample once per epoch across ranks x workers, shuffling,
resampling, resume positions, skip counts through worker processes, batching and collation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from latentvid.data.clips import ClipSpec
from latentvid.data.folder import VideoFolder
from latentvid.data.shards import ShardWriter, VideoShards
from latentvid.data.stream import (
    Batched,
    MixedStream,
    Partition,
    SampleStream,
    StreamProgress,
    collate,
    keep_batch,
    split_units,
)

SPEC = ClipSpec(num_frames=2, size=8)
N = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """N tiny clips as a folder + CSV and as 8 shards of 2, plus one bad sample in each."""
    import av  # noqa: F401  (PyAV writes the clips)
    import numpy as np

    from latentvid.data.video import write_video

    root = tmp_path_factory.mktemp("stream")
    keys = [f"c{i:02d}" for i in range(N)]
    lines = ["path,caption,key"]
    with ShardWriter(str(root / "s-%02d.tar"), samples_per_shard=2) as writer:
        for i, key in enumerate(keys):
            write_video(root / f"{key}.mp4", np.full((3, 8, 8, 3), 10 * i, np.uint8), fps=8)
            writer.write({"__key__": key, "mp4": (root / f"{key}.mp4").read_bytes(), "txt": f"clip {i}"})
            lines.append(f"{key}.mp4,clip {i},{key}")
        writer.write({"__key__": "broken", "mp4": b"garbage", "txt": "bad"})  # the ninth shard
    lines.append("gone.mp4,missing,gone")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return {"root": root, "keys": keys, "shards": str(root / "s-{00..08}.tar")}


def _sources(data: dict) -> dict:
    return {"shards": lambda: VideoShards(data["shards"], shuffle_buffer=3),
            "folder": lambda: VideoFolder(str(data["root"]), "index.csv", key_column="key")}


def _read(stream: SampleStream, workers: int) -> list[dict]:
    loader = DataLoader(Batched(stream, batch_size=2, drop_last=False), batch_size=None, num_workers=workers,
                        collate_fn=keep_batch)
    return list(loader)


def test_split_units_is_disjoint_and_covering() -> None:
    order = list(range(23))
    parts = [Partition(r, 3, w, 2) for r in range(3) for w in range(2)]
    shares = [split_units(order, p) for p in parts]
    assert sorted(u for s in shares for u in s) == order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("kind", ["shards", "folder"])
def test_two_ranks_by_two_workers_read_every_sample_once(data, kind) -> None:
    seen, skipped, units = [], 0, []
    for rank in (0, 1):
        stream = SampleStream(_sources(data)[kind](), SPEC, seed=7, rank=rank, world_size=2)
        batches = _read(stream, workers=2)
        rank_keys = [k for b in batches for k in b["key"]]
        assert rank_keys, f"rank {rank} read nothing"
        seen.append(rank_keys)
        skipped += sum(b["skipped"] for b in batches)
        units += [u for b in batches for u in b["units_done"]]
    assert not set(seen[0]) & set(seen[1])  # disjoint across ranks
    everything = seen[0] + seen[1]
    assert sorted(everything) == data["keys"]  # covering, and nothing read twice
    assert skipped == 1  # the one bad sample, counted by whichever worker met it
    num_units = stream.source.num_units()
    assert sorted(u for _, _, u in units) == list(range(num_units))  # every unit completed exactly once


def test_epochs_reshuffle_with_persistent_workers(data) -> None:
    stream = SampleStream(VideoShards(data["shards"], shuffle_buffer=4), SPEC, seed=3)
    loader = DataLoader(Batched(stream, 2, drop_last=False), batch_size=None, num_workers=2, collate_fn=keep_batch,
                        persistent_workers=True)
    epochs = [[k for b in loader for k in b["key"]] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == data["keys"]
    assert epochs[0] != epochs[1]
    epoch_ids = {e for b in loader for _, e, _ in b["units_done"]}
    assert epoch_ids == {2}  # the third pass is epoch 2 in the workers
    # the same seed and epoch give the same order in a fresh process
    again = SampleStream(VideoShards(data["shards"], shuffle_buffer=4), SPEC, seed=3)
    fresh = DataLoader(Batched(again, 2, drop_last=False), batch_size=None, num_workers=2, collate_fn=keep_batch)
    assert [k for b in fresh for k in b["key"]] == epochs[0]


def test_resampled_streams_draw_with_replacement_for_epoch_size(data) -> None:
    stream = SampleStream(VideoShards(data["shards"], shuffle_buffer=0), SPEC, resampled=True, epoch_size=40, seed=1)
    items = list(stream)
    assert len(items) == 40
    counts = Counter(it["key"] for it in items)
    assert set(counts) <= set(data["keys"]) and max(counts.values()) > 1
    assert all(not it["units_done"] for it in items)  # no position to resume in a resampled stream
    with pytest.raises(ValueError, match="epoch_size"):
        SampleStream(VideoShards(data["shards"]), SPEC, epoch_size=0)


def test_resume_skips_consumed_units_and_rereads_the_unit_in_flight(data) -> None:
    def stream() -> SampleStream:
        return SampleStream(VideoShards(data["shards"], shuffle_buffer=0), SPEC, seed=11)

    progress = StreamProgress()
    first = iter(stream())
    before = []
    for _ in range(7):  # stop in the middle of the fourth shard
        item = next(first)
        before.append(item["key"])
        progress.update(item["units_done"])
    state = progress.state_dict()
    assert state["video"]["epoch"] == 0 and len(state["video"]["done_units"]) == 3

    restored = StreamProgress()
    restored.load_state_dict(state)
    resumed = stream()
    resumed.resume(*restored.resume_point("video", resumed.source.num_units()))
    after = [it["key"] for it in resumed]
    done_keys = set(before[:6])  # the three completed shards
    assert not done_keys & set(after)
    assert before[6] in after  # the shard in flight is read again from its start
    assert sorted(set(before) | set(after)) == data["keys"]
    # a finished epoch resumes at the next one
    full = StreamProgress()
    for item in stream():
        full.update(item["units_done"])
    assert full.resume_point("video", 9) == (1, [])


def test_skips_after_the_last_good_sample_are_not_lost(tmp_path: Path, data) -> None:
    with ShardWriter(str(tmp_path / "t-%d.tar")) as writer:
        writer.write({"__key__": "ok", "mp4": (data["root"] / "c00.mp4").read_bytes(), "txt": "fine"})
        for i in range(3):
            writer.write({"__key__": f"bad{i}", "mp4": b"junk", "txt": "bad"})
    items = list(SampleStream(VideoShards(str(tmp_path / "t-0.tar"), shuffle_buffer=0), SPEC))
    assert [it["key"] for it in items] == ["ok"] and items[0]["skipped"] == 3


def test_batched_moves_the_bookkeeping_of_dropped_items() -> None:
    items = [{"video": torch.zeros(1), "key": str(i), "skipped": i % 2, "skipped_names": [f"n{i}"] * (i % 2),
              "units_done": [("video", 0, i)]} for i in range(7)]
    batches = list(Batched(items, batch_size=3, drop_last=True))
    assert [b["key"] for b in batches] == [["0", "1", "2"], ["3", "4", "5"]]
    assert sum(b["skipped"] for b in batches) == 3  # items 1, 3, 5 ... and the dropped 6 carried 0
    assert [u for b in batches for _, _, u in b["units_done"]] == list(range(7))
    assert [len(b["key"]) for b in Batched(items, 3, drop_last=False)] == [3, 3, 1]


def test_collate_stacks_sums_and_rejects_ragged_shapes() -> None:
    a = {"video": torch.ones(3, 2, 4, 4), "fps": torch.tensor(8.0), "caption": "x", "key": "a", "skipped": 2,
         "skipped_names": ["p", "q"]}
    b = {**a, "video": torch.zeros(3, 2, 4, 4), "key": "b", "skipped": 1, "skipped_names": ["r"]}
    batch = collate([a, b])
    assert batch["video"].shape == (2, 3, 2, 4, 4) and batch["fps"].tolist() == [8.0, 8.0]
    assert batch["key"] == ["a", "b"] and batch["skipped"] == 3 and batch["skipped_names"] == ["p", "q", "r"]
    assert collate([{"key": "x", "v": torch.zeros(1)}])["skipped"] == 0  # items that never skip
    with pytest.raises(ValueError, match="'video'"):
        collate([a, {**b, "video": torch.zeros(3, 3, 4, 4)}])


def test_mixed_stream_validates_its_sources(data) -> None:
    videos = SampleStream(VideoShards(data["shards"]), SPEC)
    with pytest.raises(ValueError, match="image source"):
        MixedStream(videos, None, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MixedStream(videos, videos, 1.5)
    assert [it["key"] for it in MixedStream(videos, None, 0.0)] != []
