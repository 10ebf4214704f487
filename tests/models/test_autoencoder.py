"""Tests of latentvid/models/autoencoder.py: manual optimisation with a GAN, the perceptual network
left out of checkpoints, and a short real training run through LightningCLI that writes
reconstruction videos and whose checkpoint loads back as a frozen first stage. The losses are in
test_autoencoder_losses.py."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from latentvid.data.datamodule import ShapesDataModule
from latentvid.data.shapes import generate_shapes_dataset
from latentvid.models.autoencoder import AutoencoderModule, PretrainedCausalVAE, load_vae_from_checkpoint
from latentvid.nn.discriminator import PatchDiscriminator3D
from latentvid.nn.vae3d import CausalVAE3D

T, SIZE = 5, 16  # 1 + 2 * 2 frames: fits the tiny VAE's temporal factor 2
TINY_VAE = dict(base_channels=8, channel_mult=(1, 2), temporal_downsample=(True, False), latent_channels=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: one thread is faster (tests/conftest.py)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, seed=0, clips_per_combo=1, num_frames=T, size=SIZE, images_per_combo=1,
                            heldout_clips_per_combo=1)
    return root


def tiny_vae(seed: int = 0) -> CausalVAE3D:
    torch.manual_seed(seed)
    return CausalVAE3D(**TINY_VAE)


def random_video(b: int = 2, t: int = T, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, SIZE, SIZE, generator=g) * 2 - 1


# ---- checkpoints and reconstruction videos -------------------------------------------------------------


def test_checkpoint_leaves_out_perceptual_network_and_reloads(vgg_file) -> None:
    path = vgg_file[0]
    module = AutoencoderModule(tiny_vae(), perceptual_weights=str(path))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert not [k for k in ckpt["state_dict"] if k.startswith("perceptual.")]
    other = AutoencoderModule(tiny_vae(seed=1), perceptual_weights=str(path))
    other.on_load_checkpoint(ckpt)
    other.load_state_dict(ckpt["state_dict"])  # strict
    torch.testing.assert_close(other.vae.decoder[-1].conv.weight, module.vae.decoder[-1].conv.weight)


def test_save_reconstructions_writes_input_beside_reconstruction(tmp_path: Path) -> None:
    """Valid frames only, input on the left and reconstruction on the right, named by the clip's
    key, at its fps, to TensorBoard as well."""
    from types import SimpleNamespace

    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from latentvid.data.video import read_video, video_info

    module = AutoencoderModule(tiny_vae(), log_videos=1)
    logger = TensorBoardLogger(tmp_path, name="tb")
    module._trainer = SimpleNamespace(global_step=3, loggers=[logger])  # what save_reconstructions reads
    ramp = torch.linspace(-0.8, 0.8, SIZE)
    video = (ramp[None, None, None, :, None] * torch.tensor([1.0, -1.0, 0.5])[None, :, None, None, None]
             ).expand(2, 3, T, SIZE, SIZE)  # smooth, so the codec keeps it
    recon = -video
    mask = torch.tensor([[True, True, True, False, False], [True] * T])
    batch = {"key": ["clip/a b", "other"], "fps": torch.tensor([12.0, 8.0])}
    (path,) = module.save_reconstructions(video, recon, mask, batch, tmp_path)
    assert path == tmp_path / "reconstructions" / "step0000003" / "00_clip_a_b.mp4"
    assert video_info(path)["fps"] == pytest.approx(12.0)
    back = read_video(path)  # (3, 3, SIZE, 2 * SIZE)
    assert back.shape == (3, 3, SIZE, 2 * SIZE)
    assert (back[..., :SIZE] - video[0, :, :3]).abs().mean() < 0.1  # codec error only
    assert (back[..., SIZE:] - recon[0, :, :3]).abs().mean() < 0.1
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert acc.Tags()["images"] == ["reconstructions/00"] and acc.Images("reconstructions/00")[0].step == 3


# ---- manual optimisation ---------------------------------------------------------------------------------


class _Snapshots(L.Callback):
    """Copies of the VAE and discriminator parameters before and after every training batch."""

    def __init__(self) -> None:
        self.before: list[tuple[dict, dict]] = []
        self.after: list[tuple[dict, dict]] = []

    @staticmethod
    def _copy(module) -> tuple[dict, dict]:
        disc = module.discriminator.state_dict() if module.discriminator is not None else {}
        return copy.deepcopy(module.vae.state_dict()), copy.deepcopy(disc)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(self._copy(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(self._copy(pl_module))


def _changed(a: dict, b: dict, prefix: str = "") -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix) and a[k].is_floating_point())


def _fit(module: AutoencoderModule, root: Path, batches: int, tmp: Path) -> tuple[L.Trainer, _Snapshots]:
    snaps = _Snapshots()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp), callbacks=[snaps])
    dm = ShapesDataModule(root=str(root), num_frames=T, size=SIZE, batch_size=2, clips_per_combo=1,
                          image_ratio=0.25)
    trainer.fit(module, dm)
    return trainer, snaps


def test_discriminator_trains_only_from_disc_start_step(shapes_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    module = AutoencoderModule(tiny_vae(), discriminator=PatchDiscriminator3D(base_channels=8, num_layers=2),
                               disc_start_step=1, lr=1e-3, log_videos=0)
    trainer, snaps = _fit(module, shapes_root, 3, tmp_path)
    (vae0, d0), (vae0_after, d0_after) = snaps.before[0], snaps.after[0]
    assert _changed(vae0, vae0_after), "the autoencoder steps from the first batch"
    assert not _changed(d0, d0_after), "the discriminator is untouched before disc_start_step"
    for i in (1, 2):
        (vae_b, d_b), (vae_a, d_a) = snaps.before[i], snaps.after[i]
        assert _changed(vae_b, vae_a) and _changed(d_b, d_a), f"both optimisers step at batch {i}"
    assert int(module.train_steps) == 3
    assert trainer.global_step == 1 + 2 * 2  # Lightning counts each optimiser's steps under manual optimisation


def test_freeze_encoder_trains_the_decoder_only(shapes_root: Path, tmp_path: Path) -> None:
    module = AutoencoderModule(tiny_vae(), freeze_encoder=True, lr=1e-3, log_videos=0)
    _, snaps = _fit(module, shapes_root, 2, tmp_path)
    first, last = snaps.before[0][0], snaps.after[-1][0]
    assert not _changed(first, last, "encoder.")
    assert _changed(first, last, "decoder.")


class _LearningRates(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([opt.param_groups[0]["lr"] for opt in trainer.optimizers])


def test_lr_warmup_and_cosine_are_stepped_once_per_batch(shapes_root: Path, tmp_path: Path) -> None:
    """Manual optimisation steps the schedules itself: both optimisers follow warm-up + cosine
    over the run's batches (trainer.estimated_stepping_batches = 4 here)."""
    from latentvid.models.lr_schedules import warmup_cosine_lambda

    module = AutoencoderModule(tiny_vae(), discriminator=PatchDiscriminator3D(base_channels=8, num_layers=2),
                               disc_start_step=0, lr=1e-3, disc_lr=2e-3, warmup_steps=2, lr_decay="cosine",
                               final_lr_ratio=0.1, log_videos=0)
    lrs = _LearningRates()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[lrs])
    trainer.fit(module, ShapesDataModule(root=str(shapes_root), num_frames=T, size=SIZE, batch_size=2,
                                         clips_per_combo=1, image_ratio=0.0))
    factor = warmup_cosine_lambda(2, 4, 0.1)
    expected = [(1e-3 * factor(i), 2e-3 * factor(i)) for i in range(4)]
    for got, want in zip(lrs.lrs, expected, strict=True):
        assert got == pytest.approx(want)
    with pytest.raises(ValueError, match="lr_decay"):
        AutoencoderModule(tiny_vae(), lr_decay="linear")


# ---- a real run through the CLI, then loading the checkpoint ------------------------------------------------

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {steps}
  limit_val_batches: 1
  val_check_interval: {steps}
  check_val_every_n_epoch: null
  num_sanity_val_steps: 0
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        save_last: true
model:
  class_path: latentvid.models.autoencoder.AutoencoderModule
  init_args:
    recon_loss: l2
    lr: 1.0e-3
    log_videos: 2
    vae:
      class_path: latentvid.nn.vae3d.CausalVAE3D
      init_args:
        base_channels: 8
        channel_mult: [1, 2]
        temporal_downsample: [true, false]
        latent_channels: 4
data:
  class_path: latentvid.data.datamodule.ShapesDataModule
  init_args:
    root: {root}
    num_frames: 5
    size: 16
    batch_size: 4
    clips_per_combo: 1
    image_ratio: 0.0
"""


def few_clips_folder(src: Path, dst: Path, keep: tuple[int, ...] = (0, 13, 27, 40)) -> Path:
    """A copy of a shapes folder whose training (and held-out) index lists only a few clips."""
    shutil.copytree(src, dst)
    rows = (src / "videos.jsonl").read_text().splitlines()
    text = "".join(rows[i] + "\n" for i in keep)
    (dst / "videos.jsonl").write_text(text)
    (dst / "heldout.jsonl").write_text(text)
    return dst


@pytest.fixture(scope="module")
def trained(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Overfit 4 clips for 200 steps through the real CLI (as tools/fit.py runs it)."""
    from latentvid.cli import main

    run = tmp_path_factory.mktemp("vae_run")
    root = few_clips_folder(shapes_root, run / "few")
    cfg = run / "vae.yaml"
    cfg.write_text(CONFIG.format(steps=200, root=root))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["latentvid", "fit", "-c", str(cfg), "--trainer.default_root_dir", str(run)])
        main()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return run, ckpt, root


def _clips(root: Path) -> torch.Tensor:
    from latentvid.data.datasets import VideoTextDataset

    ds = VideoTextDataset(str(root), "videos.jsonl", num_frames=T)
    return torch.stack([ds[i]["video"] for i in range(len(ds))])  # (4, 3, T, H, W)


def _psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return 10 * float(np.log10(4.0 / ((x - y) ** 2).mean().item()))


def test_short_training_run_reaches_psnr(trained) -> None:
    _, ckpt, root = trained
    vae = load_vae_from_checkpoint(str(ckpt))
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    clips = _clips(root)
    with torch.no_grad():
        psnr = _psnr(vae.decode(vae.encode(clips)).clamp(-1, 1), clips)
    # the best constant colour per channel (what a VAE stuck on the background reaches)
    constant = _psnr(clips.mean(dim=(0, 2, 3, 4), keepdim=True).expand_as(clips), clips)
    assert psnr > 20.0, f"PSNR after 200 steps {psnr:.1f} dB"  # about 22 dB measured
    assert psnr > constant + 6.0, (psnr, constant)  # constant: about 13 dB


def test_checkpoint_stores_latent_scale_and_loads_as_first_stage(trained) -> None:
    run, ckpt, root = trained
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    scale, shift = state["state_dict"]["vae.scale"].item(), state["state_dict"]["vae.shift"].item()
    assert scale != 1.0 and shift != 0.0
    assert state["hyper_parameters"]["vae"]["class_path"] == "latentvid.nn.vae3d.CausalVAE3D"
    assert list((run / "reconstructions").rglob("*.mp4")), "validation writes reconstruction videos"

    stage = PretrainedCausalVAE(str(ckpt))
    stage.train()
    assert not stage.vae.training, "stays frozen in eval mode"
    assert (stage.latent_channels, stage.spatial_factor, stage.temporal_factor) == (4, 2, 2)
    clips = _clips(root)
    z = stage.encode(clips)
    assert z.shape == (4, 4, 3, 8, 8)
    # scaled latents of training clips are roughly standardised
    assert abs(z.mean().item()) < 0.3 and 0.6 < z.std().item() < 1.6
    raw = stage.vae.encode_posterior(clips).mode()
    torch.testing.assert_close(z, (raw - shift) * scale)
    video = stage.decode(z)
    assert video.shape == clips.shape
    torch.testing.assert_close(video, stage.vae.decode_raw(raw), rtol=1e-4, atol=1e-4)


def test_missing_checkpoint_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        PretrainedCausalVAE(str(tmp_path / "missing.ckpt"))
    assert "missing.ckpt" in str(err.value) and "tools/fit.py -c configs/vae.yaml" in str(err.value)
    not_vae = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {"lr": 1.0}, "state_dict": {}}, not_vae)
    with pytest.raises(ValueError, match="other.ckpt.*no VAE config"):
        load_vae_from_checkpoint(str(not_vae))
