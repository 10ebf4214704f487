"""Training the causal 3D VAE, and loading a trained one as a frozen first stage.

* :class:`AutoencoderModule`: reconstruction (L1 / L2) + KL, optional LPIPS-style perceptual loss
  (VGG16 weights from a local file) and optional 3D patch-GAN with the adaptive weight of
  taming-transformers / LDM, trained with manual optimisation (two optimisers).
* :func:`load_vae_from_checkpoint` and :class:`PretrainedCausalVAE`: rebuild the VAE of an
  ``AutoencoderModule`` checkpoint (its config is in the checkpoint's hyper-parameters) as a frozen
  :class:`~latentvid.nn.first_stage.FirstStage`, which is what a diffusion config points to.

Losses are small pure functions on tensors, each with its shapes, so tests can check them against
independent references. Video tensors are (B, C, T, H, W) in [-1, 1]; frame masks (B, T) bool.
"""

from __future__ import annotations

import importlib
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from latentvid.models.lr_schedules import warmup_cosine_lambda, warmup_lambda
from latentvid.nn.discriminator import PatchDiscriminator3D
from latentvid.nn.first_stage import FirstStage
from latentvid.nn.gaussian_autoencoder import DiagonalGaussian, GaussianAutoencoder

RECON_LOSSES = ("l1", "l2")
LR_DECAYS = ("none", "cosine")
VAE_RECIPE = "python tools/fit.py -c configs/vae.yaml"


# ---- losses: pure functions ------------------------------------------------------------------


def masked_frame_mean(per_frame: Tensor, frame_mask: Tensor) -> Tensor:
    """Per-frame values (B, T) -> scalar: each sample's mean over its valid frames, then the mean
    over samples (an image, one valid frame, weighs as much as a clip). ``frame_mask`` (B, T) bool."""
    per_frame = torch.where(frame_mask, per_frame, torch.zeros_like(per_frame))  # no NaN leaks from masked frames
    per_sample = per_frame.sum(dim=1) / frame_mask.sum(dim=1).clamp_min(1).to(per_frame.dtype)  # (B,)
    return per_sample.mean()


def reconstruction_loss(recon: Tensor, target: Tensor, frame_mask: Tensor, kind: str = "l1") -> Tensor:
    """Mean absolute ("l1") or squared ("l2") error per element over valid frames -> scalar.

    Args:
        recon, target: (B, C, T, H, W).
        frame_mask: (B, T) bool, True = valid frame.
        kind: "l1" or "l2".
    """
    if kind not in RECON_LOSSES:
        raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {kind!r}")
    diff = recon - target
    err = diff.abs() if kind == "l1" else diff.pow(2)
    return masked_frame_mean(err.mean(dim=(1, 3, 4)), frame_mask)  # (B, T) -> scalar


def gaussian_kl_elementwise(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element, same shape as ``mean``."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_loss(posterior: DiagonalGaussian, latent_mask: Tensor) -> Tensor:
    """KL of the posterior to N(0, I), averaged per latent element over valid latent frames -> scalar.

    Per element (not summed per sample as in LDM), so ``kl_weight`` is relative to the per-pixel
    reconstruction loss: LDM's weight w on summed terms corresponds to w * (latent elements /
    pixel elements) here (e.g. w / 48 for 4 channels at 8x spatial compression).

    Args:
        posterior: over latents (B, C, t, h, w).
        latent_mask: (B, t) bool, True = valid latent frame.
    """
    kl = gaussian_kl_elementwise(posterior.mean, posterior.logvar)  # (B, C, t, h, w)
    return masked_frame_mean(kl.mean(dim=(1, 3, 4)), latent_mask)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]) -> scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator side of the hinge GAN: -E[D(fake)] -> scalar."""
    return -logits_fake.mean()


def adaptive_weight(
    nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, eps: float = 1e-4, max_weight: float = 1e4
) -> Tensor:
    """Balance of the GAN term (taming-transformers / LDM): ||d nll / d W|| / (||d g / d W|| + eps).

    ``W`` is the decoder's last layer weight, so the adversarial gradient reaching the decoder is
    scaled to the size of the reconstruction gradient. Clamped to [0, max_weight] and detached.

    Args:
        nll_loss: scalar reconstruction (+ perceptual) loss, graph kept.
        g_loss: scalar generator loss, graph kept.
        last_layer: the parameter both losses are differentiated with respect to.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


def valid_frames(video: Tensor, frame_mask: Tensor) -> Tensor:
    """(B, C, T, H, W) and (B, T) bool -> the valid frames stacked as images (N, C, H, W)."""
    return video.transpose(1, 2)[frame_mask]  # (B, T, C, H, W)[mask] -> (N, C, H, W)


def frame_psnr_ssim(recon: Tensor, target: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
    """PSNR (dB) and SSIM of valid frames, both videos (B, C, T, H, W) in [-1, 1] -> two scalars.

    PSNR is taken over all valid pixels together (data range 2, the width of [-1, 1]); SSIM is
    torchmetrics' Gaussian-window SSIM averaged over frames. ``recon`` is clamped to [-1, 1] first.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x = valid_frames(recon.clamp(-1.0, 1.0), frame_mask).float()  # (N, C, H, W)
    y = valid_frames(target, frame_mask).float()
    psnr = peak_signal_noise_ratio(x, y, data_range=2.0)
    ssim = structural_similarity_index_measure(x, y, data_range=2.0)
    return psnr, ssim


def decoder_last_layer(vae: GaussianAutoencoder) -> Tensor:
    """Weight of the decoder's final convolution (where the adaptive GAN weight is measured)."""
    convs = [m for m in vae.decoder.modules() if isinstance(m, nn.Conv3d)]
    return convs[-1].weight


# ---- perceptual loss -----------------------------------------------------------------------------

# torchvision VGG16 ``features`` slices ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG16_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance with a VGG16 backbone loaded from a local file (never downloads).

    For each valid frame: VGG16 activations at relu1_2 ... relu5_3 (input mapped from [-1, 1] to
    ImageNet-normalised RGB), each unit-normalised over channels; the squared difference is
    weighted per channel (``lin{k}``), summed over channels, averaged over space and summed over
    the five layers. Frames are then averaged as in :func:`masked_frame_mean`.

    The weights file is a ``torch.save``-d state dict with torchvision's VGG16 keys
    ``features.{i}.weight`` / ``features.{i}.bias`` (``classifier.*`` keys are ignored) and,
    optionally, the LPIPS channel weights as ``lin{k}.weight`` or LPIPS's own
    ``lin{k}.model.1.weight``, shape (1, C_k, 1, 1), k = 0..4. Without them every channel weighs
    1. To make it: ``sd = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()``, add the
    ``lin*`` entries of LPIPS's ``vgg.pth`` (v0.1), ``torch.save(sd, path)``, on a machine with
    internet. The module is frozen and always in eval mode.

    Args:
        weights: path of that state dict.
    """

    def __init__(self, weights: str) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual loss weights {path} not found: save a state dict with torchvision VGG16 keys "
                f"(features.*) and optional LPIPS lin{{k}}.weight entries there (see PerceptualLoss), "
                f"or set perceptual_weights=null to train without the perceptual loss"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        # torchvision's VGG16 ``features`` (without building the 120M-parameter classifier), up to relu5_3
        features = make_layers(cfgs["D"])[:30]
        feature_state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            features.load_state_dict(feature_state)
        except RuntimeError as err:
            raise ValueError(f"{path}: the features.* entries do not fit torchvision's VGG16: {err}") from err
        self.slices = nn.ModuleList(features[a:b] for a, b in VGG16_SLICES)
        for k, channels in enumerate(VGG16_CHANNELS):
            lin = state.get(f"lin{k}.weight", state.get(f"lin{k}.model.1.weight"))
            lin = torch.ones(1, channels, 1, 1) if lin is None else lin.float()
            if tuple(lin.shape) != (1, channels, 1, 1):
                raise ValueError(f"{path}: lin{k} weight has shape {tuple(lin.shape)}, expected (1, {channels}, 1, 1)")
            self.register_buffer(f"lin{k}", lin.reshape(channels))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Frozen: stays in eval mode."""
        return super().train(False)

    def frame_distance(self, x: Tensor, y: Tensor) -> Tensor:
        """Images (N, 3, H, W) in [-1, 1], H, W >= 16 -> distance per image (N,)."""
        x = ((x + 1) / 2 - self.mean) / self.std
        y = ((y + 1) / 2 - self.mean) / self.std
        total = x.new_zeros(x.shape[0])
        for k, block in enumerate(self.slices):
            x, y = block(x), block(y)
            nx = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit norm over channels
            ny = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            lin = getattr(self, f"lin{k}").view(1, -1, 1, 1)
            total = total + ((nx - ny).pow(2) * lin).sum(dim=1).mean(dim=(1, 2))  # (N,)
        return total

    def forward(self, recon: Tensor, target: Tensor, frame_mask: Tensor) -> Tensor:
        """Videos (B, 3, T, H, W) in [-1, 1], frame mask (B, T) -> scalar mean distance of valid frames."""
        b, _, t = recon.shape[:3]
        per_frame = recon.new_zeros(b, t)
        per_frame[frame_mask] = self.frame_distance(valid_frames(recon, frame_mask), valid_frames(target, frame_mask))
        return masked_frame_mean(per_frame, frame_mask)


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
        from lightning.pytorch.loggers import TensorBoardLogger

        from latentvid.callbacks.samples import log_tensorboard_video, slug
        from latentvid.data.video import to_uint8, write_video

        trainer = self.trainer
        out_dir = run_dir / "reconstructions" / f"step{trainer.global_step:07d}"
        keys = list(batch.get("key", [str(i) for i in range(video.shape[0])]))
        paths = []
        for i in range(min(self.log_videos, video.shape[0])):
            valid = frame_mask[i]
            pair = torch.cat([video[i][:, valid], recon[i][:, valid]], dim=-1)  # (3, t, H, 2W)
            frames = to_uint8(pair.float().cpu())  # (t, H, 2W, 3)
            fps = float(batch["fps"][i]) if "fps" in batch and float(batch["fps"][i]) > 0 else 8.0
            path = out_dir / f"{i:02d}_{slug(str(keys[i]))}.mp4"
            write_video(path, frames, fps=fps)
            paths.append(path)
            for lg in trainer.loggers:
                if isinstance(lg, TensorBoardLogger):
                    log_tensorboard_video(lg, f"reconstructions/{i:02d}", frames, fps, trainer.global_step)
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
