"""Tests for latentvid/data/folder.py: folder + CSV/TSV/JSONL indexes, the bad-file zoo, clear errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from latentvid.data.clips import ClipSpec
from latentvid.data.folder import ImageFolder, VideoFolder, auto_block_size, read_table
from latentvid.data.sources import DataError
from latentvid.data.stream import Batched, SampleStream, keep_batch

SPEC = ClipSpec(num_frames=4, size=8, fps=8)


@pytest.fixture(scope="module")
def zoo_folder(zoo, tmp_path_factory) -> tuple[Path, set[str], int]:
    """The zoo in a folder with a CSV index that also lists a missing file and a row whose caption
    is not UTF-8: (folder, keys that must come out, number of rows that must be skipped)."""
    root = tmp_path_factory.mktemp("zoo_folder")
    for path in zoo.values():
        shutil.copy(path, root / path.name)
    rows = [[p.name, f"caption of {name}", name] for name, p in zoo.items()]
    rows.append(["not_here.mp4", "a missing file", "missing"])
    shutil.copy(zoo["good"], root / "good_copy.mp4")
    rows.append(["good_copy.mp4", b"caf\xe9 in latin-1", "bad_caption"])  # caption bytes are not UTF-8
    header = ["file", "text", "id"]
    lines = [",".join(header).encode()]
    lines += [b",".join(c if isinstance(c, bytes) else c.encode() for c in r) for r in rows]
    (root / "index.csv").write_bytes(b"\n".join(lines) + b"\n")
    good = {"good", "one_frame", "vfr", "odd", "tiny", "narrow", "rotated", "gray", "tenbit"}
    return root, good, len(rows) - len(good)


def _folder(root: Path, **kw) -> VideoFolder:
    return VideoFolder(str(root), "index.csv", path_column="file", caption_column="text", key_column="id", **kw)


# ------------------------------------------------------------------------------------ indexes


def test_csv_columns_windows_and_path_format(tmp_path: Path, counter_video, decode_counter, csv_writer) -> None:
    (tmp_path / "page1").mkdir()
    counter_video(tmp_path / "page1" / "17.mp4", num_frames=40, fps=10)
    csv_writer(tmp_path / "webvid.csv", ["videoid", "page_dir", "name", "t0", "t1", "rate"],
               [["17", "page1", "  a clip  ", "2.0", "4", ""]])
    ds = VideoFolder(str(tmp_path), "webvid.csv", caption_column="name", key_column="videoid",
                     path_format="{page_dir}/{videoid}.mp4", start_column="t0", end_column="t1", fps_column="rate",
                     clip=ClipSpec(num_frames=3, size=(16, 64), stride=2, start="first"))
    item = ds[0]
    assert item["key"] == "17" and item["caption"] == "a clip" and item["skipped"] == 0
    assert item["video"].shape == (3, 3, 16, 64) and item["fps"].item() == pytest.approx(5.0)
    from latentvid.data.video import to_uint8

    assert decode_counter(to_uint8(item["video"])) == [20, 22, 24]  # the 2 s .. 4 s window


def test_jsonl_and_tsv_indexes_read_the_same_rows(tmp_path: Path, jsonl_writer) -> None:
    rows = [{"path": f"v{i}.mp4", "caption": f"c {i}", "key": f"k{i}"} for i in range(3)]
    jsonl_writer(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.tsv").write_text("path\tcaption\tkey\n" + "".join(f"v{i}.mp4\tc {i}\tk{i}\n" for i in range(3)))
    for index in ("a.jsonl", "a.tsv"):
        table = read_table(tmp_path, index, key_column="key")
        assert [(r.key, Path(r.path).name, r.caption, r.error) for r in table] == [
            (f"k{i}", f"v{i}.mp4", f"c {i}", None) for i in range(3)]


def test_wrong_paths_and_columns_stop_with_the_file_and_column(tmp_path: Path, jsonl_writer, csv_writer) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VideoFolder(str(tmp_path / "nowhere"), "x.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        VideoFolder(str(tmp_path), "missing.csv")
    csv_writer(tmp_path / "v.csv", ["path", "name"], [["a.mp4", "x"]])
    with pytest.raises(DataError, match=r"v\.csv: no column 'caption' \(the caption column\).*\['path', 'name'\]"):
        VideoFolder(str(tmp_path), "v.csv")
    with pytest.raises(DataError, match="no column 'page_dir'"):
        VideoFolder(str(tmp_path), "v.csv", caption_column="name", path_format="{page_dir}/{videoid}.mp4")
    jsonl_writer(tmp_path / "v.jsonl", [{"file": "a.mp4", "caption": "x"}])
    with pytest.raises(DataError, match=r"v\.jsonl: no row has the field 'path'"):
        VideoFolder(str(tmp_path), "v.jsonl")
    (tmp_path / "empty.csv").write_text("path,caption\n")
    with pytest.raises(DataError, match="empty.csv: no rows"):
        VideoFolder(str(tmp_path), "empty.csv")
    (tmp_path / "v.parquet").write_text("")
    with pytest.raises(DataError, match="unknown index format"):
        VideoFolder(str(tmp_path), "v.parquet")


def test_bad_rows_are_marked_not_fatal(tmp_path: Path, jsonl_writer) -> None:
    jsonl_writer(tmp_path / "v.jsonl", [{"path": "a.mp4", "caption": "ok"}, "{not json", [1, 2],
                                        {"path": "b.mp4"}, {"path": "c.mp4", "caption": 3},
                                        {"path": "d.mp4", "caption": "x", "fps": "fast"}])
    errors = [r.error for r in read_table(tmp_path, "v.jsonl", fps_column="fps")]
    assert errors[0] is None
    assert "invalid JSON" in errors[1] and "JSON object" in errors[2] and "'caption'" in errors[3]
    assert "not text" in errors[4] and "fast" in errors[5]


def test_auto_block_size() -> None:
    assert [auto_block_size(n) for n in (1, 54, 256, 257, 10_000, 10_000_000)] == [1, 1, 1, 2, 40, 64]


# ------------------------------------------------------------------------------------- the zoo


def test_zoo_yields_only_good_samples_and_counts_the_rest(zoo_folder, caplog) -> None:
    root, good, bad = zoo_folder
    stream = SampleStream(_folder(root), SPEC, seed=0)
    with caplog.at_level(logging.WARNING, logger="latentvid.data"):
        items = list(stream)
    assert {it["key"] for it in items} == good
    assert sum(it["skipped"] for it in items) == bad
    names = [n for it in items for n in it["skipped_names"]]
    for name in ("zero_byte.mp4", "truncated.mp4", "text.mp4", "codec.mp4", "audio_only.mp4", "not_here.mp4"):
        assert sum(name in n for n in names) == 1, name
        assert any(name in r.getMessage() for r in caplog.records), f"no warning names {name}"
    assert any("index.csv" in n and "UTF-8" in n for n in names)
    for it in items:  # fixed shapes, all valid frames except the padded 1-frame video
        assert it["video"].shape == (3, 4, 8, 8)
        assert it["frame_mask"].tolist() == ([True, False, False, False] if it["key"] == "one_frame" else [True] * 4)


def test_zoo_with_worker_processes_and_the_skip_policy(zoo_folder) -> None:
    root, good, bad = zoo_folder
    spec = ClipSpec(num_frames=4, size=8, short="skip")  # now the 1-frame video is skipped too
    loader = DataLoader(Batched(SampleStream(_folder(root), spec, seed=1), batch_size=3, drop_last=True),
                        batch_size=None, num_workers=2, collate_fn=keep_batch)
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    assert set(keys) <= good - {"one_frame"} and len(keys) == len(set(keys))
    # the partial batch of each worker is dropped, but its skip count is not
    assert sum(b["skipped"] for b in batches) == bad + 1
    assert all(b["video"].shape == (3, 3, 4, 8, 8) for b in batches)


def test_nothing_readable_stops_at_the_probe(tmp_path: Path, zoo, csv_writer) -> None:
    for name in ("text", "zero_byte", "truncated"):
        shutil.copy(zoo[name], tmp_path / zoo[name].name)
    csv_writer(tmp_path / "v.csv", ["path", "caption"], [[zoo[n].name, n] for n in ("text", "zero_byte", "truncated")])
    with pytest.raises(DataError, match=r"v\.csv: nothing readable: the first 3 samples all failed: .*text\.mp4"):
        VideoFolder(str(tmp_path), "v.csv").probe(SPEC)


def test_map_style_access_replaces_a_bad_row_with_the_next(zoo_folder) -> None:
    root, good, _ = zoo_folder
    ds = _folder(root, clip=SPEC)
    keys = [r.key for r in ds.rows]
    i = keys.index("truncated")
    item = ds[i]
    order = keys[i:] + keys[:i]  # the rows tried, wrapping around
    following = next(k for k in order if k in good)
    assert item["key"] == following and item["skipped"] == order.index(following) > 0
    assert ds[keys.index("good")]["skipped"] == 0
    with pytest.raises(ValueError, match="set .clip"):
        _folder(root)[0]


def test_epoch_orders_are_permutations_shared_by_all_processes(zoo_folder) -> None:
    root, _, _ = zoo_folder
    ds = _folder(root)
    rows = lambda epoch: [raw.data for u in range(ds.num_units()) for raw in ds.read_unit(u, epoch, 0, True)]  # noqa: E731
    first, again, second = rows(0), rows(0), rows(1)
    assert sorted(first) == list(range(len(ds))) and first == again and first != second
    assert [raw.data for u in range(ds.num_units()) for raw in ds.read_unit(u, 0, 0, False)] == list(range(len(ds)))


# ------------------------------------------------------------------------------------- images


def test_image_folder_masks_and_skips(tmp_path: Path, csv_writer) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 256, (16, 8, 4), dtype=np.uint8)).save(tmp_path / "alpha.webp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    csv_writer(tmp_path / "images.csv", ["path", "caption"],
               [["a.jpg", "a"], ["gray.png", "g"], ["alpha.webp", "w"], ["broken.png", "b"], ["gone.jpg", "x"]])
    items = list(SampleStream(ImageFolder(str(tmp_path)), ClipSpec(num_frames=3, size=8), shuffle=False))
    assert [it["key"] for it in items] == ["a", "gray", "alpha"]
    assert sum(it["skipped"] for it in items) == 2
    for it in items:
        assert it["video"].shape == (3, 3, 8, 8) and it["frame_mask"].tolist() == [True, False, False]
        assert it["fps"].item() == 0.0 and (it["video"][:, 1:] == 0).all()
    static = list(SampleStream(ImageFolder(str(tmp_path)), ClipSpec(num_frames=3, size=8, image_mode="static",
                                                                     static_fps=4), shuffle=False))[0]
    assert static["frame_mask"].all() and static["fps"].item() == 4.0
    torch.testing.assert_close(static["video"][:, 2], static["video"][:, 0], rtol=0, atol=0)
