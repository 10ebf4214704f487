"""Tests for latentvid/cli.py (and latentvid/preflight.py, which it runs): defaults every run gets,
one message per config problem before any heavy work, ``--ckpt_path last``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from latentvid.callbacks.checkpoint_io import AtomicCheckpointIO
from latentvid.callbacks.data_position import DataPosition
from latentvid.callbacks.numerics import NumericalGuard
from latentvid.callbacks.preemption import Preemption
from latentvid.callbacks.rng import RNGState
from latentvid.cli import LatentVidCLI, find_last_checkpoint, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _leave_global_rng_and_seed_env_alone(monkeypatch: pytest.MonkeyPatch):
    """The CLI runs seed_everything (global RNGs, PL_GLOBAL_SEED): undo it for the tests that follow."""
    from latentvid.callbacks.rng import capture_rng_state, restore_rng_state

    for key in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(key, os.environ[key]) if key in os.environ else monkeypatch.delenv(key, raising=False)
    state = capture_rng_state()
    yield
    restore_rng_state(state)


def _run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int | None, str]:
    monkeypatch.setattr(sys, "argv", ["latentvid", *args])
    monkeypatch.delenv("LATENTVID_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def test_every_run_gets_the_resilience_callbacks_and_atomic_checkpoints(tmp_path: Path) -> None:
    cli = LatentVidCLI(args=["-c", str(TINY), "--trainer.default_root_dir", str(tmp_path),
                             "--numerics.policy", "stop", "--preemption.signals", "[SIGUSR2]"], run=False)
    defaults = (DataPosition, RNGState, NumericalGuard, Preemption)
    ours = [type(cb) for cb in cli.trainer.callbacks if type(cb) in defaults]
    assert ours == [DataPosition, RNGState, NumericalGuard, Preemption]  # recorded before preemption may save
    guard = next(cb for cb in cli.trainer.callbacks if isinstance(cb, NumericalGuard))
    assert guard.policy == "stop"
    preemption = next(cb for cb in cli.trainer.callbacks if isinstance(cb, Preemption))
    assert [s.name for s in preemption.signals] == ["SIGUSR2"]
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    own = tmp_path / "own.yaml"  # a writer chosen in the config is kept
    own.write_text("trainer:\n  plugins:\n    - class_path: lightning.pytorch.plugins.io.TorchCheckpointIO\n")
    cli = LatentVidCLI(args=["-c", str(TINY), "-c", str(own), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"


def test_model_construction_problems_are_listed_together(tmp_path: Path, monkeypatch, capsys) -> None:
    code, err = _run_main(["fit", "-c", str(TINY), "--trainer.default_root_dir", str(tmp_path),
                           "--model.init_args.unet.init_args.in_channels", "4",
                           "--model.init_args.unet.init_args.context_dim", "16"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert "  - unet.in_channels=4 but the first stage has 3 latent channels" in err
    assert "  - unet.context_dim=16 but the text encoder gives 32-d tokens" in err  # text width vs cross-attention
    assert not any(tmp_path.iterdir())


VAE = json.dumps({"class_path": "latentvid.nn.vae3d.CausalVAE3D",
                  "init_args": {"latent_channels": 4, "base_channels": 8, "channel_mult": [1, 2],
                                "temporal_downsample": [True, False], "num_res_blocks": 1}})


def test_clip_shapes_are_checked_against_the_first_stage_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "shapes"
    code, err = _run_main(["fit", "-c", str(TINY), "--trainer.default_root_dir", str(tmp_path / "run"),
                           "--model.init_args.first_stage", VAE,  # temporal factor 2, spatial factor 2
                           "--model.init_args.unet.init_args.in_channels", "4",
                           "--model.init_args.unet.init_args.out_channels", "4",
                           "--data.init_args.root", str(data), "--data.init_args.size", "18"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert "the run cannot start (4 problem(s))" in err
    assert "  - data: num_frames=4 does not fit the first stage's temporal factor 2 (clips need 1 + k * 2 frames" in err
    assert "  - data: height=18 gives latents of 9 px, not a multiple of the U-Net's down-sampling factor 2" in err
    assert "  - data: width=18 gives latents of 9 px" in err
    assert "  - callback LogSampleVideos: num_frames=4 does not fit the first stage's temporal factor 2" in err
    assert not data.exists() and not (tmp_path / "run").exists(), "stopped before generating data or training"


def test_a_latent_folder_and_paths_are_checked_against_the_model(tmp_path: Path, monkeypatch, capsys) -> None:
    latents = tmp_path / "latents"
    latents.mkdir()
    (latents / "meta.json").write_text(json.dumps({"format": "latentvid-latents", "latent_channels": 4,
                                                   "spatial_factor": 4, "temporal_factor": 4}))
    data = json.dumps({"class_path": "latentvid.data.latents.LatentDataModule",
                       "init_args": {"root": str(latents), "val_root": str(tmp_path / "no-val")}})
    code, err = _run_main(["fit", "-c", str(TINY), "--trainer.default_root_dir", str(tmp_path / "run"), "--data", data,
                           "--ckpt_path", str(tmp_path / "gone.ckpt")], monkeypatch, capsys)
    assert code == 2 and "(5 problem(s))" in err
    for line in (f"ckpt_path: checkpoint file {tmp_path / 'gone.ckpt'} does not exist",
                 f"data.val_root: folder {tmp_path / 'no-val'} does not exist",
                 "have latent_channels=4 but the model's first stage has latent_channels=3",
                 "have spatial_factor=4 but the model's first stage has spatial_factor=1",
                 "have temporal_factor=4 but the model's first stage has temporal_factor=1"):
        assert line in err


def test_a_data_source_with_nothing_readable_stops_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    rows = []
    for i in range(3):  # text files named .mp4: listed, present, undecodable
        (folder / f"clip{i}.mp4").write_text("not a video")
        rows.append(json.dumps({"path": f"clip{i}.mp4", "caption": "a red circle moving left"}))
    (folder / "index.jsonl").write_text("\n".join(rows) + "\n")
    source = {"class_path": "latentvid.data.folder.VideoFolder", "init_args": {"root": str(folder),
                                                                                "index": "index.jsonl"}}
    data = json.dumps({"class_path": "latentvid.data.video_text.VideoTextDataModule",
                       "init_args": {"video": source, "clip": {"num_frames": 4, "size": 16}, "batch_size": 2,
                                     "num_workers": 0}})
    code, err = _run_main(["fit", "-c", str(TINY), "--trainer.default_root_dir", str(tmp_path / "run"), "--data", data],
                          monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "the run cannot start" in err and "data.video:" in err and str(folder) in err
    assert not (tmp_path / "run").exists()


def test_find_last_checkpoint_takes_the_newest_and_ignores_partial_writes(tmp_path: Path) -> None:
    assert find_last_checkpoint([tmp_path, tmp_path / "absent"]) is None
    old = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    new = tmp_path / "lightning_logs/version_1/checkpoints/last-v1.ckpt"
    partial = tmp_path / "lightning_logs/version_1/checkpoints/.last.ckpt.tmp-host-123"
    other = tmp_path / "lightning_logs/version_1/checkpoints/step=9.ckpt"
    for i, p in enumerate((old, new, partial, other)):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        os.utime(p, (time.time() + i, time.time() + i))
    assert find_last_checkpoint([tmp_path]) == new


def test_ckpt_path_last_without_a_checkpoint_starts_fresh(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(sys, "argv", ["latentvid", "fit", "-c", str(TINY), "--trainer.default_root_dir",
                                      str(tmp_path / "run"), "--data.init_args.root", str(tmp_path / "shapes"),
                                      "--trainer.max_steps", "1", "--ckpt_path", "last"])
    with caplog.at_level(logging.INFO):
        main()
    assert "--ckpt_path last: no last*.ckpt under" in caplog.text and "starting fresh" in caplog.text
    assert list((tmp_path / "run").rglob("last.ckpt"))
