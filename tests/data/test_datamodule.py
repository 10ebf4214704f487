"""Tests for latentvid/data/datasets.py and latentvid/data/datamodule.py on generated shapes data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from latentvid.data.datamodule import ShapesDataModule, mixing_weights
from latentvid.data.datasets import ImageTextDataset, VideoTextDataset
from latentvid.data.shapes import HELD_OUT, generate_shapes_dataset, parse_caption
from latentvid.data.video import from_uint8, read_image, read_video

T, SIZE = 4, 16
GEN = dict(seed=1, clips_per_combo=1, num_frames=T, size=SIZE, fps=8, images_per_combo=1)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, **GEN)
    return root


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ datasets


def test_video_item_matches_the_file(root: Path) -> None:
    ds = VideoTextDataset(str(root), num_frames=T)
    rows = _rows(root / "videos.jsonl")
    assert len(ds) == len(rows) == 54
    for i in (0, 17, 53):
        item = ds[i]
        assert set(item) == {"video", "caption", "fps", "frame_mask", "key"}
        assert item["video"].shape == (3, T, SIZE, SIZE) and item["video"].dtype == torch.float32
        assert item["frame_mask"].dtype == torch.bool and item["frame_mask"].all()
        assert item["fps"].dtype == torch.float32 and item["fps"].item() == 8.0
        assert item["caption"] == rows[i]["caption"] and item["key"] == rows[i]["key"]
        torch.testing.assert_close(item["video"], read_video(root / rows[i]["path"]), rtol=0, atol=0)
        torch.testing.assert_close(ds[i]["video"], item["video"], rtol=0, atol=0)  # cached copy
    assert set(ds._decoded) == {0, 17, 53}  # decoded once, kept


def test_long_clips_are_cut_and_short_clips_padded_and_masked(root: Path) -> None:
    full = read_video(root / _rows(root / "videos.jsonl")[5]["path"])  # (3, T, H, W)
    short = VideoTextDataset(str(root), num_frames=2, cache=False)[5]
    torch.testing.assert_close(short["video"], full[:, :2], rtol=0, atol=0)
    assert short["frame_mask"].tolist() == [True, True]
    long = VideoTextDataset(str(root), num_frames=T + 3)[5]
    assert long["video"].shape == (3, T + 3, SIZE, SIZE)
    assert long["frame_mask"].tolist() == [True] * T + [False] * 3
    torch.testing.assert_close(long["video"][:, :T], full, rtol=0, atol=0)
    assert (long["video"][:, T:] == 0).all()


def test_image_item_is_a_masked_one_frame_video(root: Path) -> None:
    ds = ImageTextDataset(str(root), num_frames=T)
    rows = _rows(root / "images.jsonl")
    assert len(ds) == 15
    item = ds[4]
    assert item["video"].shape == (3, T, SIZE, SIZE)
    assert item["frame_mask"].tolist() == [True] + [False] * (T - 1)
    assert item["fps"].item() == 0.0 and item["fps"].dtype == torch.float32
    assert item["caption"] == rows[4]["caption"] and "moving" not in item["caption"]
    still = from_uint8(read_image(root / rows[4]["path"])[None])[:, 0]  # (3, H, W)
    torch.testing.assert_close(item["video"][:, 0], still, rtol=0, atol=0)
    assert (item["video"][:, 1:] == 0).all()
    resized = ImageTextDataset(str(root), num_frames=T, size=8)[4]
    assert resized["video"].shape == (3, T, 8, 8)


def test_index_with_a_missing_key_names_file_line_and_key(root: Path, tmp_path: Path) -> None:
    rows = _rows(root / "videos.jsonl")[:3]
    del rows[1]["caption"]
    for row in rows:
        row["path"] = str(root / row["path"])  # absolute paths still resolve against root
    (tmp_path / "broken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"broken\.jsonl:2.*caption"):
        VideoTextDataset(str(tmp_path), index="broken.jsonl")


def test_index_errors_name_the_fault(root: Path, tmp_path: Path) -> None:
    row = _rows(root / "videos.jsonl")[0]
    (tmp_path / "gone.jsonl").write_text(json.dumps({**row, "path": "videos/not_there.mp4"}) + "\n")
    with pytest.raises(FileNotFoundError, match="not_there.mp4"):
        VideoTextDataset(str(tmp_path), index="gone.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({**row, "path": str(root / row["path"])}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        VideoTextDataset(str(tmp_path), index="bad.jsonl")
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        ImageTextDataset(str(tmp_path), index="nothing.jsonl")


# ---------------------------------------------------------------------------------- datamodule


def test_mixing_weights_give_the_requested_ratio() -> None:
    w = mixing_weights(30, 10, 0.25)
    assert w.shape == (40,)
    assert w[30:].sum() / w.sum() == pytest.approx(0.25)
    assert w[:30].unique().numel() == 1 and w[30:].unique().numel() == 1
    with pytest.raises(ValueError, match="image_ratio"):
        mixing_weights(30, 10, 1.5)
    with pytest.raises(ValueError, match="0 images"):
        mixing_weights(30, 0, 0.5)


def test_batches_have_the_documented_layout(tmp_path: Path) -> None:
    dm = ShapesDataModule(root=str(tmp_path / "gen"), num_frames=T, size=SIZE, batch_size=8,
                          clips_per_combo=1, image_ratio=0.5, seed=2)
    dm.prepare_data()  # generates: the folder has no marker yet
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (8, 3, T, SIZE, SIZE)
    assert batch["frame_mask"].shape == (8, T) and batch["fps"].shape == (8,)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 8
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    is_image = batch["fps"] == 0
    for b in range(8):
        words = parse_caption(batch["caption"][b])
        assert ("direction" not in words) == bool(is_image[b])
        if is_image[b]:
            assert batch["frame_mask"][b].tolist() == [True] + [False] * (T - 1)
            assert (batch["video"][b, :, 1:] == 0).all()
        else:
            assert batch["frame_mask"][b].all()


def test_image_ratio_over_many_batches(root: Path) -> None:
    for ratio in (0.25, 0.75):
        dm = ShapesDataModule(root=str(root), num_frames=T, size=SIZE, batch_size=8, image_ratio=ratio,
                              generate=False, seed=1, clips_per_combo=1)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert len(loader) == (54 + 15) // 8  # drop_last
        images = total = 0
        keys = []
        for _ in range(6):  # epochs; the sampler keeps drawing fresh samples
            for batch in loader:
                images += int((batch["fps"] == 0).sum())
                total += len(batch["fps"])
                keys.append(batch["key"])
        # 408 draws: the binomial standard deviation is about 0.021
        assert images / total == pytest.approx(ratio, abs=0.07)
        assert keys[0] != keys[len(loader)]  # a new order each epoch


def test_validation_loader_is_the_held_out_clips_in_order(root: Path) -> None:
    dm = ShapesDataModule(root=str(root), num_frames=T, size=SIZE, batch_size=4, val_batches=2,
                          generate=False, seed=1, clips_per_combo=1)
    dm.setup("validate")
    first = [b["key"] for b in dm.val_dataloader()]
    second = [b["key"] for b in dm.val_dataloader()]
    assert first == second and len(first) == 2
    captions = [c for b in dm.val_dataloader() for c in b["caption"]]
    assert len(captions) == 8
    held = {" ".join(("a", c, s, "moving", d)) for c, s, d in HELD_OUT}
    assert set(captions) <= held
    assert len(set(captions)) == min(8, len(HELD_OUT))  # clip-major order covers every combo


def test_missing_data_without_generate_says_how_to_make_it(tmp_path: Path) -> None:
    dm = ShapesDataModule(root=str(tmp_path / "absent"), generate=False)
    with pytest.raises(FileNotFoundError, match="tools/prepare_data.py shapes --out"):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match="absent"):
        dm.setup("fit")
    assert not (tmp_path / "absent").exists()


def test_leave_ratio_reaches_generation_and_a_folder_made_without_it_warns(root: Path, tmp_path: Path) -> None:
    dm = ShapesDataModule(root=str(tmp_path / "leave"), num_frames=T, size=SIZE, clips_per_combo=2, seed=1,
                          leave_ratio=0.5)
    dm.prepare_data()
    assert json.loads((tmp_path / "leave" / ".complete").read_text())["params"]["leave_ratio"] == 0.5
    with pytest.warns(UserWarning, match="leave_ratio"):
        ShapesDataModule(root=str(root), num_frames=T, size=SIZE, clips_per_combo=1, seed=1,
                         leave_ratio=0.5).prepare_data()
    absent = ShapesDataModule(root=str(tmp_path / "absent"), generate=False, leave_ratio=0.5)
    with pytest.raises(FileNotFoundError, match="--leave-ratio 0.5"):
        absent.prepare_data()


def test_travel_range_reaches_generation_and_a_folder_made_without_it_warns(root: Path, tmp_path: Path) -> None:
    dm = ShapesDataModule(root=str(tmp_path / "slow"), num_frames=T, size=SIZE, clips_per_combo=1, seed=1,
                          travel_range=(0.1, 0.5))
    dm.prepare_data()
    assert json.loads((tmp_path / "slow" / ".complete").read_text())["params"]["travel_range"] == [0.1, 0.5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same parameters: used quietly
        ShapesDataModule(root=str(tmp_path / "slow"), num_frames=T, size=SIZE, clips_per_combo=1, seed=1,
                         travel_range=(0.1, 0.5)).prepare_data()
    with pytest.warns(UserWarning, match="travel_range"):
        ShapesDataModule(root=str(root), num_frames=T, size=SIZE, clips_per_combo=1, seed=1,
                         travel_range=(0.1, 0.5)).prepare_data()
    absent = ShapesDataModule(root=str(tmp_path / "absent"), generate=False, travel_range=(0.1, 0.5))
    with pytest.raises(FileNotFoundError, match="--travel-range 0.1 0.5"):
        absent.prepare_data()
    with pytest.raises(ValueError, match="travel_range"):
        ShapesDataModule(travel_range=(0.5, 0.1))


def test_frame_rates_reach_generation_and_the_batches(root: Path, tmp_path: Path) -> None:
    dm = ShapesDataModule(root=str(tmp_path / "rates"), num_frames=T, size=SIZE, clips_per_combo=2, seed=1,
                          frame_rates=[8, 16], image_ratio=0.0, batch_size=8)
    dm.prepare_data()
    assert json.loads((tmp_path / "rates" / ".complete").read_text())["params"]["frame_rates"] == [8.0, 16.0]
    dm.setup("fit")
    rates = torch.cat([b["fps"] for b, _ in zip(dm.train_dataloader(), range(4))])
    assert set(rates.tolist()) == {8.0, 16.0}  # the fps the denoiser is conditioned on comes from the clips
    with pytest.warns(UserWarning, match="frame_rates"):
        ShapesDataModule(root=str(root), num_frames=T, size=SIZE, clips_per_combo=1, seed=1,
                         frame_rates=[8, 16]).prepare_data()
    absent = ShapesDataModule(root=str(tmp_path / "absent"), generate=False, frame_rates=[8, 16])
    with pytest.raises(FileNotFoundError, match="--frame-rates 8 16"):
        absent.prepare_data()
    for bad in ([8, -1], [8, 2]):  # 2 fps: a clip would cross two frame sides; refused before any folder
        with pytest.raises(ValueError, match="frame_rates"):
            ShapesDataModule(frame_rates=bad)


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="image_ratio"):
        ShapesDataModule(image_ratio=-0.1)
    with pytest.raises(ValueError, match="leave_ratio must be in"):
        ShapesDataModule(leave_ratio=1.5)  # in the constructor: no folder is touched
    with pytest.raises(ValueError, match="batch_size"):
        ShapesDataModule(batch_size=0)
