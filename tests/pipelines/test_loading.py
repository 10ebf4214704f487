"""latentvid/pipelines/loading.py: rebuild a module from a real `latentvid fit` checkpoint, EMA or raw."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from latentvid.nn.vae3d import CausalVAE3D
from latentvid.pipelines.loading import load_model

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
VAE = {"latent_channels": 4, "base_channels": 8, "channel_mult": [1, 2], "temporal_downsample": [True, False],
       "norm": "none", "block": "factorized"}


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory) -> Path:
    """Two EMA steps of the tiny config in the latent space of a VAE that loads from its own file."""
    from latentvid.cli import main

    tmp = tmp_path_factory.mktemp("latent_run")
    torch.manual_seed(0)
    vae_ckpt = tmp / "vae.ckpt"
    torch.save({"hyper_parameters": {"vae": {"class_path": "latentvid.nn.vae3d.CausalVAE3D", "init_args": VAE}},
                "state_dict": {f"vae.{k}": v for k, v in CausalVAE3D(**VAE, scale=0.5).state_dict().items()}},
               vae_ckpt)
    config = yaml.safe_load(TINY.read_text())
    config["trainer"].update(default_root_dir=str(tmp / "run"), max_steps=2, val_check_interval=2, logger=False)
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("LogSampleVideos"):
            cb["init_args"]["num_frames"] = 5  # 1 + 2 * 2 frames: the VAE's temporal factor is 2
    model = config["model"]["init_args"]
    model["first_stage"] = {"class_path": "latentvid.models.autoencoder.PretrainedCausalVAE",
                            "init_args": {"checkpoint": str(vae_ckpt)}}
    model["clip_sample"] = None
    model["unet"]["init_args"].update(in_channels=4, out_channels=4)
    config["data"]["init_args"].update(root=str(tmp / "shapes"), num_frames=5)
    (tmp / "latent.yaml").write_text(yaml.safe_dump(config))
    with mock.patch.object(sys, "argv", ["latentvid"]):
        main(["fit", "-c", str(tmp / "latent.yaml")])
    ckpts = sorted((tmp / "run").rglob("last.ckpt"))
    assert ckpts
    return ckpts[0]


def test_raw_weights_load_even_when_file_backed_weights_were_left_out(latent_run: Path) -> None:
    ckpt = torch.load(latent_run, map_location="cpu", weights_only=True)
    assert not any(k.startswith("first_stage.") for k in ckpt["current_model_state"]), "the VAE reloads from its file"
    ema, _ = load_model(latent_run, ema=True)
    raw, _ = load_model(latent_run, ema=False)  # strict load of the raw weights: the VAE must be refilled
    raw_unet = {k: v for k, v in ckpt["current_model_state"].items() if k.startswith("unet.")}
    for k, v in raw_unet.items():
        torch.testing.assert_close(raw.state_dict()[k], v)
    assert any(not torch.equal(ema.state_dict()[k], v) for k, v in raw_unet.items()), "EMA and raw weights differ"
    for k, v in raw.state_dict().items():
        if k.startswith("first_stage."):
            torch.testing.assert_close(v, ema.state_dict()[k])  # both from the VAE file


def test_a_run_root_resolves_to_its_newest_last_checkpoint(tmp_path) -> None:
    import os

    from latentvid.pipelines.loading import resolve_checkpoint

    with pytest.raises(FileNotFoundError, match=rf"no last\*\.ckpt under {tmp_path} "):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint .*gone.ckpt does not exist"):
        resolve_checkpoint(tmp_path / "gone.ckpt")
    files = [tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt",  # older run, higher version
             tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt",  # resumed later: written last
             tmp_path / "lightning_logs/version_0/checkpoints/.last.ckpt.tmp-host-1",  # a write in flight
             tmp_path / "lightning_logs/version_0/checkpoints/step=9.ckpt"]
    for i, path in enumerate(files):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    assert resolve_checkpoint(tmp_path) == files[1]
    assert resolve_checkpoint(tmp_path / "lightning_logs/version_1") == files[0]
    assert resolve_checkpoint(files[3]) == files[3]  # a file is itself
    sharded = tmp_path / "fsdp" / "last.ckpt"
    sharded.mkdir(parents=True)
    assert resolve_checkpoint(sharded) == sharded  # an FSDP checkpoint is a folder named like a file


@pytest.mark.parametrize("kind", ["model", "distilled"])
def test_a_missing_file_named_in_the_config_is_one_clear_error(latent_run: Path, tmp_path: Path, kind: str) -> None:
    # the run's VAE file gone (or named relative to another directory): the loader names the
    # checkpoint, the missing file and the directory relative paths resolve against, for a trained
    # model and for a distillation checkpoint (its student is built from the config it records)
    ckpt = torch.load(latent_run, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["first_stage"]["init_args"]["checkpoint"] = "elsewhere/vae.ckpt"
    if kind == "distilled":
        ckpt = {"hyper_parameters": {"_class_path": "latentvid.models.distillation.ProgressiveDistillation"},
                "distillation": {"student_config": ckpt["hyper_parameters"]}, "state_dict": {}}
    moved = tmp_path / "moved.ckpt"
    torch.save(ckpt, moved)
    with pytest.raises(FileNotFoundError, match=r"moved\.ckpt: .*elsewhere/vae\.ckpt.*directory its run was launched from"):
        load_model(moved)


@pytest.mark.parametrize("kind", ["model", "distilled"])
def test_relative_paths_resolve_against_the_runs_launch_directory(latent_run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    # a run launched in project/ names its VAE "data/vae.ckpt"; its checkpoint loads from anywhere
    ckpt = torch.load(latent_run, map_location="cpu", weights_only=True)
    assert ckpt["launch_dir"] == str(Path.cwd())  # the fit recorded where it ran
    vae_file = Path(ckpt["hyper_parameters"]["first_stage"]["init_args"]["checkpoint"])
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "vae.ckpt").write_bytes(vae_file.read_bytes())
    ckpt["hyper_parameters"]["first_stage"]["init_args"]["checkpoint"] = "data/vae.ckpt"
    ckpt["launch_dir"] = str(project)
    if kind == "distilled":  # a student of this model, as ProgressiveDistillation saves it
        from latentvid.models.distillation import build_student, student_config

        config = student_config(ckpt["hyper_parameters"], steps=2)
        with monkeypatch.context() as m:
            m.chdir(project)
            student = build_student(config)
        weights = {f"student.{k}": v for k, v in student.state_dict().items() if not k.startswith("first_stage.")}
        ckpt = {"hyper_parameters": {"_class_path": "latentvid.models.distillation.ProgressiveDistillation"},
                "distillation": {"student_config": config, "student_extras": {}}, "state_dict": weights,
                "launch_dir": str(project)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save(ckpt, elsewhere / "moved.ckpt")
    monkeypatch.chdir(elsewhere)
    model, _ = load_model("moved.ckpt")  # a relative checkpoint path, taken before moving to project/
    assert Path.cwd() == elsewhere
    reference, _ = load_model(latent_run.absolute() if latent_run.is_absolute() else ROOT / latent_run)
    for k, v in reference.state_dict().items():
        if k.startswith("first_stage."):
            torch.testing.assert_close(model.state_dict()[k], v)  # the VAE came from project/data/vae.ckpt
    (project / "data" / "vae.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match=r"data/vae\.ckpt.*launch directory .*project"):
        load_model("moved.ckpt")
