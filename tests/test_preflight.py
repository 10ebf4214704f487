"""Start-up checks of bucketed data (latentvid/preflight.py): every bucket's frames and sides against
the first stage's factors and the U-Net's down-sampling, listed in one line; the factors the batch
sizes were counted with against the first stage's; every latent shape of a bucketed latent folder
against the denoiser; and the CLI stopping on them before any work."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from latentvid.data.buckets import BucketSpec
from latentvid.data.clips import ClipSpec
from latentvid.data.folder import VideoFolder
from latentvid.data.latents import LatentDataModule
from latentvid.data.video import write_video
from latentvid.data.video_text import VideoTextDataModule
from latentvid.preflight import check_fit

ROOT = Path(__file__).resolve().parents[1]
MODEL = SimpleNamespace(first_stage=SimpleNamespace(spatial_factor=8, temporal_factor=4, latent_channels=4),
                        unet=SimpleNamespace(downsample_factor=2))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preflight")
    write_video(root / "a.mp4", np.zeros((9, 36, 64, 3), np.uint8), fps=8)
    (root / "index.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "c"}) + "\n")
    return root


def data(folder: Path, spec: BucketSpec, clip: ClipSpec = ClipSpec(num_frames=17, size=64)) -> VideoTextDataModule:
    return VideoTextDataModule(video=VideoFolder(str(folder), "index.jsonl"), clip=clip, batch_size=4, probe=1,
                               buckets=spec)


def test_good_buckets_pass(folder: Path) -> None:
    spec = BucketSpec(aspect_ratios=("1:1", "16:9", "9:16"), frames=(9, 17), multiple=16)
    assert check_fit(MODEL, data(folder, spec), []) == []


def test_every_bad_bucket_is_listed_in_one_line(folder: Path) -> None:
    spec = BucketSpec(buckets=[[64, 64, 17], [36, 64, 17], [64, 64, 8], [48, 40, 12], [32, 96, 9]])
    problems = check_fit(MODEL, data(folder, spec), [])
    assert problems == [
        "data.buckets: 3 of 5 buckets do not fit the first stage (spatial factor 8, temporal factor 4) and the U-Net "
        "(down-sampling 2), which need sides that are multiples of 16 px and 1 + k * 4 frames: 36x64x17 (height 36); "
        "64x64x8 (frames 8); 48x40x12 (frames 12, width 40)"]


def test_token_factors_must_be_the_first_stage_s(folder: Path) -> None:
    spec = BucketSpec(aspect_ratios=("1:1",), multiple=16, spatial_factor=4, temporal_factor=1)
    problems = check_fit(MODEL, data(folder, spec), [])
    assert problems == [
        "data.buckets: spatial_factor=4 but the first stage's spatial_factor is 8 (batch sizes count latent tokens "
        "with it; set buckets.spatial_factor: 8)",
        "data.buckets: temporal_factor=1 but the first stage's temporal_factor is 4 (batch sizes count latent "
        "tokens with it; set buckets.temporal_factor: 4)"]


def test_the_cli_stops_on_bad_buckets_before_any_work(folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from latentvid.callbacks.rng import capture_rng_state, restore_rng_state
    from latentvid.cli import main

    config = {"class_path": "latentvid.data.video_text.VideoTextDataModule",
              "init_args": {"video": {"class_path": "latentvid.data.folder.VideoFolder",
                                      "init_args": {"root": str(folder), "index": "index.jsonl"}},
                            "clip": {"num_frames": 4, "size": 16}, "batch_size": 2, "num_workers": 0,
                            "buckets": {"buckets": [[16, 16, 4], [15, 16, 4], [16, 30, 2]], "spatial_factor": 1,
                                        "temporal_factor": 1}}}
    argv = ["latentvid", "fit", "-c", str(ROOT / "tests/configs/tiny.yaml"), "--trainer.default_root_dir",
            str(tmp_path / "run"), "--data", json.dumps(config)]
    monkeypatch.setattr(sys, "argv", argv)
    for key in ("LATENTVID_DEBUG", "PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # the CLI seeds: leave no trace
        monkeypatch.setenv(key, os.environ[key]) if key in os.environ else monkeypatch.delenv(key, raising=False)
    state = capture_rng_state()
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        restore_rng_state(state)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert ("  - data.buckets: 1 of 3 buckets do not fit the first stage (spatial factor 1, temporal factor 1) and "
            "the U-Net (down-sampling 2), which need sides that are multiples of 2 px: 15x16x4 (height 15)\n") in err
    assert not (tmp_path / "run").exists()


def latent_folder(root: Path, shapes: list[tuple[int, int, int, int]]) -> Path:
    """A latent folder's meta.json and index.jsonl (the checks read no latent file)."""
    root.mkdir()
    meta = {"format": "latentvid-latents", "version": 1, "num_frames": 9, "height": 64, "width": 64,
            "latent_channels": 4, "latent_frames": 3, "spatial_factor": 8, "temporal_factor": 4}
    (root / "meta.json").write_text(json.dumps(meta))
    rows = [{"key": f"z{i}", "path": f"latents/z{i}.pt", "caption": "c", "fps": 8.0, "latent_shape": list(shape),
             "latent_mask": [True] * shape[1]} for i, shape in enumerate(shapes)]
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_every_bad_latent_shape_is_listed_with_its_files(tmp_path: Path) -> None:
    model = SimpleNamespace(first_stage=MODEL.first_stage, unet=SimpleNamespace(downsample_factor=2, in_channels=4))
    shapes = [(4, 3, 8, 8)] * 2 + [(4, 3, 5, 8)] * 4 + [(8, 3, 8, 8)] + [(4, 5, 6, 4)] * 2
    root = latent_folder(tmp_path / "z", shapes)
    assert check_fit(model, LatentDataModule(root=str(root), buckets=True), []) == [
        f"data.root: 2 of 4 latent shapes in {root} do not fit the denoiser (in_channels 4, down-sampling 2), which "
        "needs C = 4, h and w multiples of 2: (4, 3, 5, 8) (h 5; 4 files: latents/z2.pt, latents/z3.pt, "
        "latents/z4.pt, ...); (8, 3, 8, 8) (C 8; 1 file: latents/z6.pt)"]
    # a DiT's temporal patch: t must be a multiple of it
    dit = SimpleNamespace(first_stage=MODEL.first_stage,
                          unet=SimpleNamespace(downsample_factor=2, in_channels=4, patch_size=(2, 2, 2)))
    good = latent_folder(tmp_path / "good", [(4, 4, 8, 8), (4, 2, 6, 4), (4, 3, 8, 8)])
    assert check_fit(dit, LatentDataModule(root=str(good), buckets=True), []) == [
        f"data.root: 1 of 3 latent shapes in {good} do not fit the denoiser (in_channels 4, down-sampling 2, temporal "
        "patch 2), which needs C = 4, t a multiple of 2, h and w multiples of 2: (4, 3, 8, 8) (t 3; 1 file: "
        "latents/z2.pt)"]
