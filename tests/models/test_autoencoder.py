"""Tests of latentvid/models/autoencoder.py: losses against references, manual optimisation with a
GAN, perceptual loss from a local file, and a short real training run through LightningCLI whose
checkpoint loads back as a frozen first stage."""

from __future__ import annotations

import copy
import math
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from latentvid.data.datamodule import ShapesDataModule
from latentvid.data.shapes import generate_shapes_dataset
from latentvid.models.autoencoder import (
    AutoencoderModule,
    PerceptualLoss,
    PretrainedCausalVAE,
    adaptive_weight,
    decoder_last_layer,
    frame_psnr_ssim,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    load_vae_from_checkpoint,
    reconstruction_loss,
)
from latentvid.nn.discriminator import PatchDiscriminator3D
from latentvid.nn.vae3d import CausalVAE3D, DiagonalGaussian

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


# ---- losses ----------------------------------------------------------------------------------------


def test_kl_term_equals_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 3, 4, 4, generator=g), torch.randn(3, 4, 3, 4, 4, generator=g)
    posterior = DiagonalGaussian(mean, logvar)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mean), torch.ones_like(mean)))
    full = torch.ones(3, 3, dtype=torch.bool)
    torch.testing.assert_close(kl_loss(posterior, full), ref.mean())
    # masked latent frames: each sample averages its valid frames, then samples are averaged
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    per_sample = [ref[i][:, mask[i]].mean() for i in range(3)]
    torch.testing.assert_close(kl_loss(posterior, mask), torch.stack(per_sample).mean())


def test_reconstruction_loss_ignores_padding_and_matches_numpy() -> None:
    x, y = random_video(seed=1), random_video(seed=2)
    mask = torch.tensor([[True] * T, [True] + [False] * (T - 1)])
    xn, yn = x.numpy(), y.numpy()
    ref_l1 = np.mean([np.abs(xn[0] - yn[0]).mean(), np.abs(xn[1][:, :1] - yn[1][:, :1]).mean()])
    ref_l2 = np.mean([((xn[0] - yn[0]) ** 2).mean(), ((xn[1][:, :1] - yn[1][:, :1]) ** 2).mean()])
    assert reconstruction_loss(x, y, mask, "l1").item() == pytest.approx(ref_l1, rel=1e-5)
    assert reconstruction_loss(x, y, mask, "l2").item() == pytest.approx(ref_l2, rel=1e-5)
    y2 = y.clone()
    y2[1, :, 1:] = float("nan")  # padding frames may hold anything
    assert reconstruction_loss(x, y2, mask, "l1").item() == pytest.approx(ref_l1, rel=1e-5)
    with pytest.raises(ValueError, match="recon_loss"):
        reconstruction_loss(x, y, mask, "huber")


def test_hinge_losses_closed_form() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 - real) = [0, .5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 1.5] -> mean 5/6
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 5 / 6))
    assert hinge_g_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 0.5) / 3)


def test_psnr_matches_closed_form() -> None:
    x = random_video(seed=3)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, T, dtype=torch.bool)
    psnr, ssim = frame_psnr_ssim(noisy, x, mask)
    mse = ((noisy.clamp(-1, 1) - x) ** 2).mean().item()
    assert psnr.item() == pytest.approx(10 * math.log10(4.0 / mse), rel=1e-4)
    assert frame_psnr_ssim(x, x, mask)[1].item() == pytest.approx(1.0, abs=1e-5)
    assert 0 < ssim.item() < 1


def test_adaptive_weight_equals_gradient_norm_ratio() -> None:
    vae = tiny_vae()
    torch.manual_seed(1)
    disc = PatchDiscriminator3D(base_channels=8, num_layers=2)
    video = random_video()
    recon, _ = vae(video, sample_posterior=False)
    nll = (recon - video).abs().mean()
    g_loss = hinge_g_loss(disc(recon))
    last = decoder_last_layer(vae)
    ours = adaptive_weight(nll, g_loss, last)

    # reference: two separate backward passes, reading .grad of the decoder's final conv
    grads = []
    for make_loss in (lambda r: (r - video).abs().mean(), lambda r: -disc(r).mean()):
        vae.zero_grad()
        make_loss(vae(video, sample_posterior=False)[0]).backward()
        grads.append(vae.decoder[-1].conv.weight.grad.clone())
    ref = grads[0].norm() / (grads[1].norm() + 1e-4)
    torch.testing.assert_close(ours, ref.clamp(0, 1e4))
    assert not ours.requires_grad
    assert last is vae.decoder[-1].conv.weight


# ---- perceptual loss ---------------------------------------------------------------------------------


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]  # to relu5_3


def _random_vgg_weights(path: Path, with_lin: bool = True) -> dict:
    """A random state dict in torchvision's VGG16 key layout (features.{i}.*) plus LPIPS lin weights."""
    g = torch.Generator().manual_seed(0)
    state, index, channels = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            index += 1
            continue
        bound = 1 / math.sqrt(channels * 9)
        state[f"features.{index}.weight"] = (torch.rand(v, channels, 3, 3, generator=g) * 2 - 1) * bound
        state[f"features.{index}.bias"] = (torch.rand(v, generator=g) * 2 - 1) * bound
        index, channels = index + 2, v  # conv, relu
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    if with_lin:
        for k, c in enumerate((64, 128, 256, 512, 512)):
            state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g)  # LPIPS's own key names
    torch.save(state, path)
    return state


def _reference_lpips(state: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent recomputation with functional ops: VGG16 convs read straight from the state dict,
    activations taken after the last ReLU of each of the five blocks (relu1_2 ... relu5_3)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    a, b = ((x + 1) / 2 - mean) / std, ((y + 1) / 2 - mean) / std
    total, index, block = torch.zeros(x.shape[0]), 0, 0
    for pos, v in enumerate(VGG16_CFG + ["M"]):
        if v == "M":
            na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            w = state[f"lin{block}.model.1.weight"].view(1, -1, 1, 1)
            total += ((na - nb) ** 2 * w).sum(1).mean((1, 2))
            block, index = block + 1, index + 1
            if pos < len(VGG16_CFG):
                a, b = F.max_pool2d(a, 2), F.max_pool2d(b, 2)
            continue
        weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
        a, b = F.relu(F.conv2d(a, weight, bias, padding=1)), F.relu(F.conv2d(b, weight, bias, padding=1))
        index += 2
    return total


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("vgg") / "vgg_lpips.pth"
    return path, _random_vgg_weights(path)


def test_perceptual_loss_loads_local_weights_and_matches_reference(vgg_file) -> None:
    path, state = vgg_file
    loss = PerceptualLoss(str(path))
    assert not any(p.requires_grad for p in loss.parameters())
    x, y = random_video(b=2, seed=5), random_video(b=2, seed=6)
    mask = torch.tensor([[True] * T, [True, True, False, False, False]])
    frames_x = torch.cat([x[0].transpose(0, 1), x[1, :, :2].transpose(0, 1)])  # (7, 3, H, W) valid frames
    frames_y = torch.cat([y[0].transpose(0, 1), y[1, :, :2].transpose(0, 1)])
    with torch.no_grad():
        ref = _reference_lpips(state, frames_x, frames_y)
        assert (ref > 0).all()
        torch.testing.assert_close(loss.frame_distance(frames_x, frames_y), ref, rtol=1e-4, atol=1e-6)
        expected = torch.stack([ref[:T].mean(), ref[T:].mean()]).mean()
        torch.testing.assert_close(loss(x, y, mask), expected, rtol=1e-4, atol=1e-6)
        assert loss(x, x, mask).item() == pytest.approx(0.0, abs=1e-6)
    # the gradient reaches the reconstruction
    xr = x.clone().requires_grad_(True)
    loss(xr, y, mask).backward()
    assert xr.grad.abs().sum() > 0 and xr.grad[1, :, 2:].abs().sum() == 0  # masked frames get none


def test_perceptual_loss_errors_name_the_file(tmp_path: Path, vgg_file) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        PerceptualLoss(str(tmp_path / "nowhere.pth"))
    bad = tmp_path / "bad.pth"
    state = dict(vgg_file[1])
    state["lin2.model.1.weight"] = torch.ones(1, 3, 1, 1)
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*lin2"):
        PerceptualLoss(str(bad))
    del state["features.28.weight"]
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*features"):
        PerceptualLoss(str(bad))


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
