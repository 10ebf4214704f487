"""Training the causal 3D VAE, and loading a trained one as a frozen first stage.

* :class:`AutoencoderModule`: reconstruction (L1 / L2) + KL, optional LPIPS-style perceptual loss
  (VGG16 weights from a local file) and optional 3D patch-GAN with the adaptive weight of
  taming-transformers / LDM, trained with manual optimisation (two optimisers).
* :func:`load_vae_from_checkpoint` and :class:`PretrainedCausalVAE`: rebuild the VAE of an
  ``AutoencoderModule`` checkpoint (its config is in the checkpoint's hyper-parameters) as a frozen
  :class:`~latentvid.nn.first_stage.FirstStage`, which is what a diffusion config points to.

The losses are pure functions in :mod:`latentvid.models.autoencoder_losses`. Video tensors are
(B, C, T, H, W) in [-1, 1]; frame masks (B, T) bool.
"""

from __future__ import annotations

import importlib
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from latentvid.data.video import to_uint8
from latentvid.data.video_log import save_and_log_video, slug
from latentvid.models.autoencoder_losses import (
    RECON_LOSSES,
    PerceptualLoss,
    adaptive_weight,
    decoder_last_layer,
    frame_psnr_ssim,
    hinge_d_loss,
    hinge_g_loss,
    kl_loss,
    reconstruction_loss,
)
from latentvid.models.lr_schedules import warmup_cosine_lambda, warmup_lambda
from latentvid.nn.discriminator import PatchDiscriminator3D
from latentvid.nn.first_stage import FirstStage
from latentvid.nn.gaussian_autoencoder import DiagonalGaussian, GaussianAutoencoder

LR_DECAYS = ("none", "cosine")
VAE_RECIPE = "python tools/fit.py -c configs/vae.yaml"


# ---- the LightningModule --------------------------------------------------------------------------


class AutoencoderModule(LightningModule):
    """Trains a VAE (:class:`~latentvid.nn.vae3d.CausalVAE3D`, or any
    :class:`~latentvid.nn.vae3d.GaussianAutoencoder` such as Video LDM's
    :class:`~latentvid.nn.video_decoder.TemporalDecoderVAE`): reconstruction + KL [+ perceptual] [+ patch GAN].

    Loss of the autoencoder step (one batch of ``video`` (B, 3, T, H, W), ``frame_mask`` (B, T))::

        nll  = recon(x_hat, x) + perceptual_factor * perceptual(x_hat, x)   # per element, valid frames
        loss = nll + kl_weight * KL + disc_weight * adaptive_weight * (-E[D(x_hat)])

    ``recon`` and ``KL`` are means per element (see :func:`kl_loss` for converting LDM's
    ``kl_weight``); the GAN term is active from training step ``disc_start_step`` on, with
    ``adaptive_weight`` = ||grad nll|| / ||grad g|| at the decoder's last layer. The discriminator
    then takes one hinge-loss step per batch on the clip vs. its reconstruction (masked frames of
    the reconstruction replaced by the input's, so padding is not a give-away). Manual optimisation:
    with a discriminator, ``trainer.global_step`` counts both optimisers' steps (Lightning's rule),
    so ``disc_start_step`` counts training batches instead (stored in the checkpoint).

    Video LDM's recipe (Blattmann et al., 2023) fine-tunes only the decoder so existing latents
    stay valid: ``freeze_encoder=True`` does that here. For our 3D VAE the whole decoder (temporal
    layers included) is then trained on video; for a pretrained image VAE,
    :class:`~latentvid.nn.video_decoder.TemporalDecoderVAE` inserts identity-initialised causal
    temporal layers into a diffusers ``AutoencoderKL``'s decoder and trains those (optionally the
    whole decoder, optionally with the 3D discriminator), keeping its latent scale with
    ``scale_batches=0`` (``configs/vae-videoldm.yaml``).

    At the end of fit, and whenever a checkpoint is written, the latent ``scale`` / ``shift`` are
    re-estimated with :meth:`GaussianAutoencoder.estimate_scale` from the last ``scale_batches`` training
    batches (their full-length clips), so every checkpoint carries the scale a diffusion model
    needs. The perceptual network is not stored in checkpoints (it is reloaded from its file).

    Validation logs ``val/recon``, ``val/kl``, ``val/psnr`` and ``val/ssim`` (decoding the posterior
    mean) and writes the first ``log_videos`` clips of the first batch, input | reconstruction side
    by side, as mp4 files under ``<log dir>/reconstructions/step<N>/`` (and TensorBoard, if used).

    Args:
        vae: the autoencoder to train.
        recon_loss: "l1" or "l2" reconstruction error.
        kl_weight: weight of the per-element KL term.
        perceptual_weights: local path of VGG16 / LPIPS weights (see :class:`PerceptualLoss`);
            ``None`` turns the perceptual loss off. Nothing is downloaded.
        perceptual_factor: weight of the perceptual term when it is on.
        discriminator: 3D patch discriminator; ``None`` turns the GAN off.
        disc_weight: weight of the generator loss (times the adaptive weight).
        disc_start_step: training batch from which the GAN term is used and the discriminator trained.
        disc_lr: discriminator learning rate (default: ``lr``).
        lr: learning rate of the autoencoder's AdamW.
        warmup_steps: linear LR warm-up of both optimisers over this many training batches.
        lr_decay: "none" (constant after warm-up) or "cosine" (half cosine down to
            ``final_lr_ratio * lr`` at the end of training, ``trainer.estimated_stepping_batches``).
        final_lr_ratio: the cosine's end point as a fraction of ``lr``.
        betas: AdamW betas of both optimisers (LDM uses (0.5, 0.9) with a GAN).
        weight_decay: AdamW weight decay of both optimisers.
        grad_clip: clip each optimiser's gradient norm to this (``None``: no clipping).
            (Trainer-level clipping does not apply under manual optimisation.)
        sample_posterior: decode a posterior sample while training (the mean when False).
        freeze_encoder: train the decoder only (Video LDM's recipe, see above).
        scale_batches: training batches used to estimate the latent scale / shift (0: keep the
            VAE's own, e.g. a pretrained image VAE's config value).
        log_videos: reconstructions written at each validation (0: none).
    """

    def __init__(
        self,
        vae: GaussianAutoencoder,
        recon_loss: str = "l1",
        kl_weight: float = 1e-6,
        perceptual_weights: str | None = None,
        perceptual_factor: float = 1.0,
        discriminator: PatchDiscriminator3D | None = None,
        disc_weight: float = 0.5,
        disc_start_step: int = 0,
        disc_lr: float | None = None,
        lr: float = 1e-3,
        warmup_steps: int = 0,
        lr_decay: str = "none",
        final_lr_ratio: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        grad_clip: float | None = 1.0,
        sample_posterior: bool = True,
        freeze_encoder: bool = False,
        scale_batches: int = 4,
        log_videos: int = 4,
    ) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"model.recon_loss must be one of {RECON_LOSSES}, got {recon_loss!r}")
        if lr_decay not in LR_DECAYS:
            raise ValueError(f"model.lr_decay must be one of {LR_DECAYS}, got {lr_decay!r}")
        for name, value in (("kl_weight", kl_weight), ("perceptual_factor", perceptual_factor),
                            ("disc_weight", disc_weight), ("disc_start_step", disc_start_step),
                            ("scale_batches", scale_batches), ("log_videos", log_videos),
                            ("warmup_steps", warmup_steps), ("final_lr_ratio", final_lr_ratio)):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        # Under LightningCLI the saved hparams are the resolved config, so `vae` is stored as its
        # class_path / init_args (what load_vae_from_checkpoint rebuilds); module objects are not hparams.
        self.save_hyperparameters()
        self.remove_ignored_hparams([k for k, v in self.hparams.items() if isinstance(v, nn.Module)])
        self.automatic_optimization = False
        self.vae = vae
        self.discriminator = discriminator
        self.perceptual = PerceptualLoss(perceptual_weights) if perceptual_weights is not None else None
        self.recon_loss = recon_loss
        self.kl_weight = kl_weight
        self.perceptual_factor = perceptual_factor
        self.disc_weight = disc_weight
        self.disc_start_step = disc_start_step
        self.grad_clip = grad_clip
        self.sample_posterior = sample_posterior
        self.freeze_encoder = freeze_encoder
        self.log_videos = log_videos
        if freeze_encoder:
            self.vae.encoder.requires_grad_(False)
        # training batches seen; a buffer so a resumed run keeps the GAN schedule
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self._scale_clips: deque[Tensor] = deque(maxlen=max(scale_batches, 1))
        self._scale_batches = scale_batches

    # ---- losses ----------------------------------------------------------------------------------

    def gan_active(self) -> bool:
        """Whether this training step uses the discriminator."""
        return self.discriminator is not None and int(self.train_steps) >= self.disc_start_step

    def autoencoder_losses(self, video: Tensor, recon: Tensor, posterior: DiagonalGaussian,
                           frame_mask: Tensor) -> dict[str, Tensor]:
        """Scalars ``recon``, ``kl``, ``nll`` (recon + perceptual) and ``perceptual`` (if on) for
        video / recon (B, 3, T, H, W) and frame mask (B, T)."""
        losses = {"recon": reconstruction_loss(recon, video, frame_mask, self.recon_loss),
                  "kl": kl_loss(posterior, self.vae.latent_mask(frame_mask))}
        losses["nll"] = losses["recon"]
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(recon, video, frame_mask)
            losses["nll"] = losses["nll"] + self.perceptual_factor * losses["perceptual"]
        return losses

    # ---- training ----------------------------------------------------------------------------------

    def _optimizers(self) -> tuple[Any, Any]:
        opts = self.optimizers()
        if isinstance(opts, (list, tuple)):
            return opts[0], (opts[1] if len(opts) > 1 else None)
        return opts, None

    def _step(self, opt: Any, loss: Tensor) -> None:
        opt.zero_grad()
        self.manual_backward(loss)
        if self.grad_clip is not None:
            self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        opt.step()

    def _step_schedulers(self) -> None:
        """Advance the LR schedules once per training batch (manual optimisation steps them itself)."""
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if scheduler is not None:
                scheduler.step()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One autoencoder step, then (GAN active) one discriminator step, on ``video`` (B, 3, T, H, W)."""
        video, frame_mask = batch["video"], batch["frame_mask"].bool()
        self._remember_for_scale(video, frame_mask)
        opt_ae, opt_d = self._optimizers()
        use_gan = self.gan_active()
        bs = video.shape[0]

        if opt_d is not None:
            self.toggle_optimizer(opt_ae)  # no discriminator grads from the generator pass
        recon, posterior = self.vae(video, sample_posterior=self.sample_posterior)
        losses = self.autoencoder_losses(video, recon, posterior, frame_mask)
        loss = losses["nll"] + self.kl_weight * losses["kl"]
        fake = torch.where(frame_mask[:, None, :, None, None], recon, video)  # padding frames are not evidence
        if use_gan:
            g_loss = hinge_g_loss(self.discriminator(fake))
            d_weight = adaptive_weight(losses["nll"], g_loss, decoder_last_layer(self.vae)) * self.disc_weight
            loss = loss + d_weight * g_loss
            self.log_dict({"train/g_loss": g_loss.detach(), "train/d_weight": d_weight}, batch_size=bs)
        self._step(opt_ae, loss)
        if opt_d is not None:
            self.untoggle_optimizer(opt_ae)

        if use_gan:
            self.toggle_optimizer(opt_d)
            logits_real = self.discriminator(video.detach())
            logits_fake = self.discriminator(fake.detach())
            d_loss = hinge_d_loss(logits_real, logits_fake)
            self._step(opt_d, d_loss)
            self.untoggle_optimizer(opt_d)
            self.log_dict({"train/d_loss": d_loss.detach(), "train/logits_real": logits_real.detach().mean(),
                           "train/logits_fake": logits_fake.detach().mean()}, batch_size=bs)

        self.train_steps += 1
        self._step_schedulers()
        with torch.no_grad():
            psnr = frame_psnr_ssim(recon.detach(), video, frame_mask)[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "nll"}, batch_size=bs)
        self.log("train/psnr", psnr, prog_bar=True, batch_size=bs)
        return loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        """Reconstruct ``video`` (B, 3, T, H, W) from the posterior mean; log losses, PSNR and SSIM."""
        video, frame_mask = batch["video"], batch["frame_mask"].bool()
        recon, posterior = self.vae(video, sample_posterior=False)
        losses = self.autoencoder_losses(video, recon, posterior, frame_mask)
        psnr, ssim = frame_psnr_ssim(recon, video, frame_mask)
        bs = video.shape[0]
        self.log_dict({f"val/{k}": v for k, v in losses.items() if k != "nll"}, batch_size=bs, sync_dist=True)
        self.log("val/psnr", psnr, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log("val/ssim", ssim, batch_size=bs, sync_dist=True)
        if batch_idx == 0 and self.log_videos > 0 and not self.trainer.sanity_checking:
            # trainer.log_dir is a collective under DDP: read it on every rank, write on rank 0
            self.save_reconstructions(video, recon, frame_mask, batch, Path(self.trainer.log_dir or
                                                                            self.trainer.default_root_dir))
        return losses["recon"]

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[Any]]:
        params = [p for p in self.vae.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the VAE has no trainable parameters (is it frozen?)")
        betas = tuple(self.hparams.betas)
        opts = [torch.optim.AdamW(params, lr=self.hparams.lr, betas=betas, weight_decay=self.hparams.weight_decay)]
        if self.discriminator is not None:
            lr_d = self.hparams.disc_lr if self.hparams.disc_lr is not None else self.hparams.lr
            opts.append(torch.optim.AdamW(self.discriminator.parameters(), lr=lr_d, betas=betas,
                                          weight_decay=self.hparams.weight_decay))
        hp = self.hparams
        if hp.lr_decay == "cosine":
            factor = warmup_cosine_lambda(hp.warmup_steps, int(self.trainer.estimated_stepping_batches), hp.final_lr_ratio)
        else:
            factor = warmup_lambda(hp.warmup_steps)
        return opts, [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in opts]

    # ---- reconstructions as videos ----------------------------------------------------------------

    @rank_zero_only
    def save_reconstructions(self, video: Tensor, recon: Tensor, frame_mask: Tensor, batch: dict,
                             run_dir: Path) -> list[Path]:
        """Write input | reconstruction side by side for the first ``log_videos`` clips under
        ``run_dir/reconstructions/step<N>/`` (rank 0 only) -> mp4 paths."""
        trainer = self.trainer
        out_dir = run_dir / "reconstructions" / f"step{trainer.global_step:07d}"
        keys = list(batch.get("key", [str(i) for i in range(video.shape[0])]))
        paths = []
        for i in range(min(self.log_videos, video.shape[0])):
            valid = frame_mask[i]
            pair = torch.cat([video[i][:, valid], recon[i][:, valid]], dim=-1)  # (3, t, H, 2W)
            frames = to_uint8(pair.float().cpu())  # (t, H, 2W, 3)
            fps = float(batch["fps"][i]) if "fps" in batch and float(batch["fps"][i]) > 0 else 8.0
            paths.append(save_and_log_video(out_dir / f"{i:02d}_{slug(str(keys[i]))}.mp4", frames, fps,
                                            trainer.loggers, f"reconstructions/{i:02d}", trainer.global_step))
        return paths

    # ---- latent scale -----------------------------------------------------------------------------

    def _remember_for_scale(self, video: Tensor, frame_mask: Tensor) -> None:
        """Keep the full-length clips of recent batches (on the CPU) for :meth:`estimate_latent_scale`."""
        if self._scale_batches == 0:
            return
        full = frame_mask.all(dim=1)
        clips = video[full] if bool(full.any()) else video  # (b, 3, T, H, W): stills' padding would skew the std
        self._scale_clips.append(clips.detach().cpu())

    def estimate_latent_scale(self) -> tuple[float, float] | None:
        """Set the VAE's scale / shift from the remembered training clips -> (scale, shift), or None
        when no batch has been seen."""
        if not self._scale_clips:
            return None
        was_training = self.vae.training
        self.vae.eval()
        scale, shift = self.vae.estimate_scale(list(self._scale_clips))
        self.vae.train(was_training)
        return scale, shift

    def on_train_end(self) -> None:
        self.estimate_latent_scale()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store a fresh latent scale / shift and leave the (file-backed) perceptual network out.

        Runs after the callbacks' hooks, so with an EMA callback both ``state_dict`` (averaged
        weights) and ``current_model_state`` (raw ones) are handled; the scale is estimated with
        the raw weights in either case."""
        estimated = self.estimate_latent_scale() is not None
        for key in ("state_dict", "current_model_state"):
            state = checkpoint.get(key)
            if state is None:
                continue
            if estimated:
                state["vae.scale"], state["vae.shift"] = self.vae.scale.detach().clone(), self.vae.shift.detach().clone()
            for name in [k for k in state if k.startswith("perceptual.")]:
                del state[name]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put this module's perceptual network back, so strict loading finds every key."""
        if self.perceptual is None:
            return
        own = {f"perceptual.{k}": v for k, v in self.perceptual.state_dict().items()}
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                for name, value in own.items():
                    checkpoint[key].setdefault(name, value)


# ---- loading a trained VAE -----------------------------------------------------------------------


def _import_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_vae_from_checkpoint(path: str) -> GaussianAutoencoder:
    """Rebuild the VAE of an :class:`AutoencoderModule` checkpoint, frozen and in eval mode.

    The architecture comes from the checkpoint's hyper-parameters (``vae: {class_path, init_args}``,
    saved by LightningCLI, i.e. ``tools/fit.py -c configs/vae.yaml``), the weights and latent
    scale / shift from its ``state_dict`` (``vae.*`` keys; the EMA weights when an EMA callback
    stored them there).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"VAE checkpoint {file} does not exist; train one with `{VAE_RECIPE}` "
            f"(it writes runs/vae/lightning_logs/version_*/checkpoints/last.ckpt) and point the config there"
        )
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    config = ckpt.get("hyper_parameters", {}).get("vae")
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(
            f"{file} has no VAE config (hyper_parameters['vae'] with class_path / init_args): expected a "
            f"checkpoint of latentvid.models.autoencoder.AutoencoderModule written by `{VAE_RECIPE}`"
        )
    cls = _import_class(config["class_path"])
    if not (isinstance(cls, type) and issubclass(cls, GaussianAutoencoder)):
        raise ValueError(f"{file}: hyper_parameters['vae'] is {config['class_path']}, not a GaussianAutoencoder "
                         f"(CausalVAE3D, TemporalDecoderVAE)")
    vae = cls(**config.get("init_args", {}))
    state = {k[len("vae."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("vae.")}
    if not state:
        raise ValueError(f"{file}: the state_dict has no vae.* weights")
    try:
        vae.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{file}: the vae.* weights do not fit its config: {err}") from err
    vae.requires_grad_(False)
    return vae.eval()


class PretrainedCausalVAE(FirstStage):
    """A VAE trained with ``configs/vae.yaml`` (a :class:`~latentvid.nn.vae3d.CausalVAE3D`) or
    ``configs/vae-videoldm.yaml`` (a :class:`~latentvid.nn.video_decoder.TemporalDecoderVAE`), as a
    frozen first stage.

    Video (B, 3, T, H, W), T = 1 + k * tf <-> scaled latents (B, C, 1 + k, H / sf, W / sf), with the
    scale / shift stored in the checkpoint. Always in eval mode; ``encode`` runs without gradients.

    Args:
        checkpoint: path of an ``AutoencoderModule`` checkpoint (``.../checkpoints/last.ckpt``).
            Its weights are not copied into diffusion checkpoints (``weights_path``), so the file
            must stay where the config says.
    """

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        self.vae = load_vae_from_checkpoint(checkpoint)
        # reloaded from this file, so LatentDiffusion leaves these weights out of its checkpoints
        self.weights_path = str(checkpoint)
        self.latent_channels = self.vae.latent_channels
        self.spatial_factor = self.vae.spatial_factor
        self.temporal_factor = self.vae.temporal_factor
        if float(self.vae.scale) == 1.0 and float(self.vae.shift) == 0.0:
            warnings.warn(f"{checkpoint}: latent scale 1 and shift 0, i.e. never estimated; latents may be far "
                          f"from unit variance", stacklevel=2)

    def train(self, mode: bool = True) -> PretrainedCausalVAE:
        """Frozen: stays in eval mode whatever the parent module does."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> scaled latents (B, C, t, h, w) (posterior sample
        from ``generator``, else the mean)."""
        return self.vae.encode(video, generator=generator)

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, C, t, h, w) -> video (B, 3, 1 + (t - 1) * tf, h * sf, w * sf)."""
        return self.vae.decode(latents)
