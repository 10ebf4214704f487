"""Tests for latentvid/data/shards.py: writing and reading webdataset shards, patterns and URLs,
bad samples and broken shards skipped and counted."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentvid.data.clips import ClipSpec
from latentvid.data.shards import ImageShards, ShardWriter, VideoShards, expand_shards, iter_shard
from latentvid.data.sources import DataError
from latentvid.data.stream import SampleStream

SPEC = ClipSpec(num_frames=4, size=8)


def _keys(stream) -> tuple[list[str], int, list[str]]:
    items = list(stream)
    names = [n for it in items for n in it["skipped_names"]]
    return [it["key"] for it in items], sum(it["skipped"] for it in items), names


def test_writer_round_trip_is_atomic(tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path / "out" / "s-%04d.tar"), samples_per_shard=2) as writer:
        for i in range(5):
            writer.write({"__key__": f"{i:03d}", "mp4": bytes([i]) * 10, "txt": f"caption {i}", "json": {"i": i}})
    assert [Path(p).name for p in writer.paths] == ["s-0000.tar", "s-0001.tar", "s-0002.tar"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s-0000.tar", "s-0001.tar", "s-0002.tar"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # what any new file gets under this process's umask (not mkstemp's 0o600)
    assert {Path(p).stat().st_mode & 0o777 for p in writer.paths} == {plain.stat().st_mode & 0o777}
    errors: list[str] = []
    samples = [s for p in writer.paths for s in iter_shard(p, errors)]
    assert not errors
    assert [s["__key__"] for s in samples] == ["000", "001", "002", "003", "004"]
    assert samples[3]["mp4"] == bytes([3]) * 10 and samples[3]["txt"] == b"caption 3"
    assert json.loads(samples[4]["json"]) == {"i": 4}
    # a failure mid-shard leaves no partial shard and no temporary file behind
    with pytest.raises(RuntimeError), ShardWriter(str(tmp_path / "fail" / "s-%04d.tar"), samples_per_shard=10) as w:
        w.write({"__key__": "a", "txt": "x"})
        raise RuntimeError("interrupted")
    assert list((tmp_path / "fail").iterdir()) == []
    with pytest.raises(ValueError, match="integer field"):
        ShardWriter(str(tmp_path / "no-field.tar"))
    with pytest.raises(ValueError, match="without dots"):
        ShardWriter(str(tmp_path / "d-%d.tar")).write({"__key__": "a.b", "txt": "x"})


def _video_shards(tmp_path: Path, encoder, smooth_frames, n: int = 6, per_shard: int = 2) -> tuple[str, list[str]]:
    keys = []
    with ShardWriter(str(tmp_path / "shards" / "v-%03d.tar"), samples_per_shard=per_shard) as writer:
        for i in range(n):
            path = encoder(tmp_path / f"{i}.mp4", smooth_frames(5, 12, 16, seed=i))
            writer.write({"__key__": f"clip{i:02d}", "mp4": path.read_bytes(), "txt": f"clip number {i}"})
            keys.append(f"clip{i:02d}")
    return str(tmp_path / "shards" / ("v-{000..%03d}.tar" % (len(writer.paths) - 1))), keys


def test_patterns_globs_lists_and_urls_name_the_same_shards(tmp_path: Path, encoder, smooth_frames) -> None:
    pattern, keys = _video_shards(tmp_path, encoder, smooth_frames)
    files = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    assert expand_shards(pattern) == files
    assert expand_shards(str(tmp_path / "shards" / "*.tar")) == files
    assert expand_shards(files[:1] + [files[1] + "::" + files[2]]) == files
    for urls in (pattern, [f"file://{f}" for f in files], [f"pipe:cat {f}" for f in files]):
        got, skipped, _ = _keys(SampleStream(VideoShards(urls), SPEC, shuffle=False))
        assert got == keys and skipped == 0


def test_fsspec_urls_are_read_through_fsspec(tmp_path: Path, encoder, smooth_frames) -> None:
    import fsspec

    pattern, keys = _video_shards(tmp_path, encoder, smooth_frames, n=2)
    fs = fsspec.filesystem("memory")
    fs.pipe("/latentvid-test/v-000.tar", Path(expand_shards(pattern)[0]).read_bytes())
    got, skipped, _ = _keys(SampleStream(VideoShards("memory:///latentvid-test/v-000.tar"), SPEC))
    assert sorted(got) == keys and skipped == 0


def test_wrong_paths_stop_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no shards match"):
        VideoShards(str(tmp_path / "*.tar"))
    (tmp_path / "a-0.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"a-1\.tar \(1 of the 2 shards"):
        VideoShards(str(tmp_path / "a-{0..1}.tar"))


def test_bad_samples_and_broken_shards_are_skipped_and_counted(tmp_path: Path, zoo, zoo_names) -> None:
    good_names, bad_names = zoo_names
    expected, bad = [], 0
    with ShardWriter(str(tmp_path / "z-%d.tar"), samples_per_shard=100) as writer:
        for name in good_names + bad_names:  # every zoo file as a shard member
            ext = zoo[name].suffix.lstrip(".")
            writer.write({"__key__": name, ext: zoo[name].read_bytes(), "txt": f"the {name} video"})
        expected += list(good_names)
        bad += len(bad_names)
        good = zoo["good"].read_bytes()
        writer.write({"__key__": "json_caption", "mp4": good, "json": {"caption": "from json", "url": "x"}})
        expected.append("json_caption")
        writer.write({"__key__": "no_caption", "mp4": good})
        writer.write({"__key__": "latin1_caption", "mp4": good, "txt": b"caf\xe9"})
        writer.write({"__key__": "json_without_caption", "mp4": good, "json": {"text": "wrong key"}})
        writer.write({"__key__": "broken_json", "mp4": good, "json": b"{oops"})
        writer.write({"__key__": "no_media", "txt": "a caption without a video"})
        bad += 5
    # a second shard cut off in the middle of its third member: two samples survive, the rest is one skip
    with ShardWriter(str(tmp_path / "cut-%d.tar"), samples_per_shard=100) as writer:
        for i in range(4):
            writer.write({"__key__": f"cut{i}", "mp4": good, "txt": f"cut {i}"})
    whole = Path(writer.paths[0]).read_bytes()
    with tarfile.open(writer.paths[0]) as tar:
        offset = tar.getmembers()[4].offset_data  # inside cut2.mp4
    Path(writer.paths[0]).write_bytes(whole[: offset + 100])
    expected += ["cut0", "cut1"]
    bad += 1

    got, skipped, names = _keys(SampleStream(VideoShards([str(tmp_path / "z-0.tar"), str(tmp_path / "cut-0.tar")]),
                                             SPEC, shuffle=False))
    assert got == expected
    assert skipped == bad
    for key in ("zero_byte", "truncated", "no_caption", "latin1_caption", "no_media", "broken_json"):
        assert any(f"z-0.tar:{key}" in n for n in names), key
    assert any("cut-0.tar: read error after 2 samples" in n for n in names)


def test_a_shard_set_with_nothing_readable_fails_the_probe(tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path / "x-%d.tar")) as writer:
        for i in range(3):
            writer.write({"__key__": f"k{i}", "mp4": b"not a video", "txt": "x"})
    with pytest.raises(DataError, match=r"nothing readable.*x-0\.tar:k0"):
        VideoShards(str(tmp_path / "x-0.tar")).probe(SPEC)


def test_image_shards(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    keys = []
    with ShardWriter(str(tmp_path / "img-%d.tar"), samples_per_shard=3) as writer:
        for i, ext in enumerate(("jpg", "png", "webp", "jpeg")):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)).save(
                buf, format={"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext])
            writer.write({"__key__": f"im{i}", ext: buf.getvalue(), "txt": f"image {i}"})
            keys.append(f"im{i}")
        writer.write({"__key__": "im_bad", "png": b"\x89PNG broken", "txt": "bad"})
    items = list(SampleStream(ImageShards(str(tmp_path / "img-{0..1}.tar"), shuffle_buffer=0),
                              ClipSpec(num_frames=2, size=6), shuffle=False))
    assert [it["key"] for it in items] == keys
    assert sum(it["skipped"] for it in items) == 1
    assert all(it["frame_mask"].tolist() == [True, False] and it["video"].shape == (3, 2, 6, 6) for it in items)
