"""The base text-to-video model: first stage + frozen text tower + 3D U-Net + diffusion objective.

Thin by design: the math lives in :mod:`latentvid.diffusion`, the networks in :mod:`latentvid.nn`
and :mod:`latentvid.conditioning`; this module wires them, owns the optimiser and logs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import is_dataclass

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from latentvid.conditioning.text import caption_dropout
from latentvid.diffusion import (
    SAMPLERS,
    TARGETS,
    CosineSchedule,
    LinearLogSNRSchedule,
    RectifiedFlowSchedule,
    TimeSampling,
    classifier_free_guidance,
    clip_denoised,
    diffuse,
    masked_mse,
    prediction_to_x0,
    run_sampler,
    snr_loss_weight,
    training_target,
)
from latentvid.diffusion.discrete import DiscreteSchedule
from latentvid.diffusion.frame_masks import FrameMasks, draw_frame_masks
from latentvid.diffusion.known_frames import known_frames_denoiser
from latentvid.diffusion.samplers import standard_normal
from latentvid.models.lr_schedules import warmup_lambda
from latentvid.nn.first_stage import FirstStage, IdentityFirstStage

FRAME_METHODS: tuple[str, ...] = ("trained", "replacement", "guidance")
"""How :meth:`LatentDiffusion.sample` conditions on known frames: the network's own frame input (a
``frame_conditioning`` network), or item 1's training-free replacement / reconstruction guidance
(:func:`~latentvid.diffusion.known_frames.known_frames_denoiser`), which any model can use."""


def lead_with_first_frame(z0: Tensor, mask: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Clean latents z0 (B, C, t, h, w) and their frame mask (B, t) with copies of frame 0 put in front up to
    a multiple of ``multiple`` latent frames (CogVideoX 1.5's fine-tuning convention for its temporal
    patches of 2 over the VAE's odd latent counts); unchanged when t already is one."""
    lead = -z0.shape[2] % multiple
    if not lead:
        return z0, mask
    z0 = torch.cat([z0[:, :, :1].expand(-1, -1, lead, -1, -1), z0], dim=2)
    return z0, torch.cat([mask[:, :1].expand(-1, lead), mask], dim=1)


class LatentDiffusion(LightningModule):
    """Text-to-video diffusion in the latent space of a frozen first stage.

    Args:
        unet: the denoiser network (:class:`~latentvid.nn.unet3d.UNet3D`, or
            :class:`~latentvid.nn.inflated_unet.InflatedUNet3D` for a pretrained image model); its
            output is interpreted as ``target``. Typed ``nn.Module`` (not a union) so that an error
            raised while building it reaches the user instead of a "no union member fits" message.
        text_encoder: frozen text tower mapping captions to (B, L, D) tokens and a (B, L) mask
            (:class:`~latentvid.conditioning.text.OpenCLIPTextEncoder` or
            :class:`~latentvid.conditioning.hf_clip.HFCLIPTextEncoder`; ``nn.Module`` for the same reason).
        first_stage: frozen autoencoder; ``None`` means pixel space (:class:`IdentityFirstStage`).
        schedule: continuous-time noise schedule (None: cosine; a pretrained image model's
            :class:`~latentvid.diffusion.discrete.DiscreteSchedule` when fine-tuning one;
            :class:`~latentvid.diffusion.schedule.RectifiedFlowSchedule` for flow matching). Its
            ``alpha_sigma`` fixes the process (VP or rectified flow) for training and sampling alike.
        target: what the network predicts: ``"v"`` (default, Imagen Video), ``"eps"``, ``"x0"`` or
            ``"flow"`` (eps - x0, flow matching's velocity);
            ``None`` takes the schedule's ``prediction_type`` (a pretrained model's, from its scheduler config).
        caption_dropout: probability of training on the empty caption (enables classifier-free guidance).
        min_snr_gamma: Min-SNR-gamma loss weighting; ``None`` is the plain (unweighted) loss in target space.
        snr_floor: lower clamp of the same x0-space weight, min(max(SNR, snr_floor), gamma)
            (:func:`~latentvid.diffusion.parameterization.snr_loss_weight`). Min-SNR alone weighs
            the noisiest levels by SNR -> 0, and those are where motion is decided: with
            ``snr_floor: 1`` they keep the weight of the plain v loss (README, "What the demo shows").
        lr, weight_decay, betas: AdamW settings for the trainable (U-Net) parameters.
        warmup_steps: linear learning-rate warm-up length in optimiser steps.
        sample_steps: default number of sampler steps for :meth:`sample`.
        sampler: default sampler, a name in :data:`~latentvid.diffusion.samplers.SAMPLERS` (``"ddim"``,
            ``"ancestral"``, ``"dpmpp_2m"``, ``"heun"``).
        guidance_scale: default classifier-free guidance weight for :meth:`sample`.
        clip_sample: clamp the x0 estimate to [-clip_sample, clip_sample] while sampling (pixel space:
            1.0); ``None`` disables it (latent space).
        spatial_lr_scale: learning rate of the U-Net's spatial (pretrained image-model) parameters as a
            multiple of ``lr``; ``None`` or 0 freezes them and trains the temporal layers only (Video LDM).
            Values other than 1 need a U-Net with ``spatial_parameters()`` / ``temporal_parameters()``
            (:class:`~latentvid.nn.inflated_unet.InflatedUNet3D`).
        time_sampling: the density of training times t
            (:class:`~latentvid.diffusion.time_sampling.TimeSampling`: uniform, logit-normal, mode);
            None is uniform. Always stratified over the batch.
        frame_masks: with a ``frame_conditioning`` network, how often each known-frame mask is drawn
            per training sample (:class:`~latentvid.diffusion.frame_masks.FrameMasks`: none, first,
            first k, last k, every k-th latent frame); None takes its defaults. The network gets the
            clean latents of the known frames (sampling gives it clean VAE latents of the given
            pixels, so no noise is added), and the loss covers the other valid frames only.
        init_from: a checkpoint (or a run root such as ``runs/base``) whose weights (its EMA weights
            when it has them) this model starts from, e.g. a text-to-video base for a
            frame-conditioned fine-tune (configs/i2v.yaml): the network's ``frame_input.*`` may be
            missing from it (they start at zero), anything else must match. Read at construction
            only; a checkpoint of this model records no ``init_from``, so reloading it never needs
            the base run.
    """

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        first_stage: FirstStage | None = None,
        schedule: CosineSchedule | LinearLogSNRSchedule | RectifiedFlowSchedule | DiscreteSchedule | None = None,
        target: str | None = "v",
        caption_dropout: float = 0.1,
        min_snr_gamma: float | None = None,
        snr_floor: float | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 500,
        sample_steps: int = 50,
        sampler: str = "ddim",
        guidance_scale: float = 5.0,
        clip_sample: float | None = None,
        spatial_lr_scale: float | None = 1.0,
        time_sampling: TimeSampling | None = None,
        frame_masks: FrameMasks | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        # None rather than a CosineSchedule() default: with a dataclass default, jsonargparse cannot
        # re-read another schedule class from a saved config (tools/sample.py, load_from_checkpoint)
        schedule = CosineSchedule() if schedule is None else schedule
        if target is None:
            target = getattr(schedule, "prediction_type", None)
            if target is None:
                raise ValueError(f"model.target: null takes the schedule's prediction_type, but {schedule!r} has "
                                 "none: set target (v, eps or x0) or use a DiscreteSchedule with prediction_type")
        if target not in TARGETS:
            raise ValueError(f"model.target must be one of {TARGETS}, got {target!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"model.sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
        # Under LightningCLI the saved hparams are the resolved config (class_path / init_args), so
        # `load_from_checkpoint` rebuilds every sub-module; modules passed directly are not hparams.
        with warnings.catch_warnings():  # objects passed directly are dropped just below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
            # objects (not config dicts) passed directly cannot be logged or loaded with weights_only
            objects = [k for k, v in self.hparams.items() if isinstance(v, nn.Module) or is_dataclass(v)]
            if objects:
                self.save_hyperparameters(ignore=objects)
        self.unet = unet
        self.text_encoder = text_encoder
        self.first_stage = first_stage if first_stage is not None else IdentityFirstStage()
        self.first_stage.requires_grad_(False)
        self.schedule = schedule
        self.time_sampling = TimeSampling() if time_sampling is None else time_sampling
        self.target = target
        self.caption_dropout = caption_dropout
        self.min_snr_gamma = min_snr_gamma
        if snr_floor is not None and (snr_floor < 0 or (min_snr_gamma is not None and snr_floor > min_snr_gamma)):
            raise ValueError(f"model.snr_floor must lie in [0, min_snr_gamma={min_snr_gamma}], got {snr_floor}")
        self.snr_floor = snr_floor
        self.spatial_lr_scale = spatial_lr_scale
        if spatial_lr_scale != 1.0:
            if not hasattr(unet, "spatial_parameters"):
                raise ValueError(f"model.spatial_lr_scale={spatial_lr_scale} needs a U-Net with spatial_parameters() "
                                 f"and temporal_parameters() (e.g. InflatedUNet3D), not {type(unet).__name__}")
            if spatial_lr_scale is not None and spatial_lr_scale < 0:
                raise ValueError(f"model.spatial_lr_scale must be >= 0 or null, got {spatial_lr_scale}")
            if not spatial_lr_scale:  # frozen image model: no gradients computed for it at all
                for p in unet.spatial_parameters():
                    p.requires_grad_(False)
        if frame_masks is not None and not self.frame_conditioned:
            raise ValueError("model.frame_masks needs a network built with frame_conditioning: true")
        self.frame_masks = (frame_masks or FrameMasks()) if self.frame_conditioned else None
        self._check_shapes()
        if init_from:
            self.load_init_weights(init_from)

    @property
    def frame_multiple(self) -> int:
        """Latent frame counts the network takes are multiples of this (CogVideoX 1.5's temporal patch: 2)."""
        return int(getattr(self.unet, "frame_multiple", 1))

    @property
    def pins_known_frames(self) -> bool:
        """Whether sampling with the network's own frame input keeps the given frames as given (True, the
        default) or lets the network generate them as well (CogVideoX image-to-video, as its pipeline does)."""
        return bool(getattr(self.unet, "pins_known_frames", True))

    @property
    def frame_conditioned(self) -> bool:
        """Whether the network takes known frames (``known``, ``known_mask``) as inputs."""
        return bool(getattr(self.unet, "frame_conditioning", False))

    def load_init_weights(self, path: str) -> None:
        """Load the weights of the checkpoint ``path`` (or run root), EMA ones when present; the
        network's ``frame_input.*`` and the weights this module reads from files may be missing."""
        from latentvid.pipelines.loading import resolve_checkpoint  # (as distillation's teacher: a file path)

        file = resolve_checkpoint(path)
        state = torch.load(file, map_location="cpu", weights_only=True)["state_dict"]
        own = self.state_dict()
        shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
        allowed = self._weights_from_files()
        missing = [k for k in own if k not in state and k not in allowed and not k.startswith("unet.frame_input.")]
        unexpected = [k for k in state if k not in own]
        if shapes or missing or unexpected:
            raise ValueError(f"init_from {file}: its weights do not fit this model: shapes {shapes[:3]}, "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)

    def _check_shapes(self) -> None:
        """Fail at construction, with a message, when the pieces do not chain."""
        problems = []
        c = self.first_stage.latent_channels
        if self.unet.in_channels != c:
            problems.append(f"unet.in_channels={self.unet.in_channels} but the first stage has {c} latent channels")
        if self.unet.out_channels != c:
            problems.append(f"unet.out_channels={self.unet.out_channels} but the first stage has {c} latent channels")
        if self.unet.context_dim is not None and self.unet.context_dim != self.text_encoder.output_dim:
            problems.append(
                f"unet.context_dim={self.unet.context_dim} but the text encoder gives {self.text_encoder.output_dim}-d tokens"
            )
        if problems:
            raise ValueError("model config does not chain:\n  " + "\n  ".join(problems))

    # ---- checkpoints ------------------------------------------------------------------------
    def _weights_from_files(self) -> set[str]:
        """State-dict keys of frozen weights that load from a file named in the config (a real
        open_clip / CLIP tower, a pretrained VAE, a frozen inflated image U-Net's spatial layers): no
        need to copy them into every checkpoint; ``on_load_checkpoint`` refills them."""
        prefixes = []
        if not getattr(self.text_encoder, "is_random", True):
            prefixes.append("text_encoder.")
        if getattr(self.first_stage, "weights_path", None):
            prefixes.append("first_stage.")
        keys = {k for k in self.state_dict() if k.startswith(tuple(prefixes))}
        if getattr(self.unet, "pretrained", None) and hasattr(self.unet, "is_temporal"):
            keys |= {f"unet.{name}" for name, p in self.unet.named_parameters()
                     if not p.requires_grad and not self.unet.is_temporal(name)}
        if hasattr(self.unet, "frozen_state_keys"):  # a pretrained video transformer's frozen base under LoRA
            keys |= {f"unet.{k}" for k in self.unet.frozen_state_keys()}
        return keys

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("hyper_parameters", {}).get("init_from"):  # the weights are in this checkpoint now
            checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "init_from": None}
        # runs after callbacks (EMA moves the raw weights to "current_model_state"), so strip both copies
        skip = self._weights_from_files()
        for key in ("state_dict", "current_model_state"):
            if skip and key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k not in skip}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # refill what on_save_checkpoint left out from the weights this module loaded itself
        skip = self._weights_from_files()
        own = {k: v for k, v in self.state_dict().items() if k in skip}
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                for k, v in own.items():
                    checkpoint[key].setdefault(k, v)

    # ---- the pieces -------------------------------------------------------------------------
    def forward(self, z: Tensor, logsnr: Tensor, context: Tensor, context_mask: Tensor, fps: Tensor | None = None,
                frame_mask: Tensor | None = None, known: Tensor | None = None, known_mask: Tensor | None = None
                ) -> Tensor:
        """Network output (of kind ``target``), (B, C, t, h, w), for noisy latents z (B, C, t, h, w);
        ``known`` (B, C, t, h, w) / ``known_mask`` (B, t) bool: known frames (a frame-conditioned network)."""
        frames = {} if known is None and known_mask is None else {"known": known, "known_mask": known_mask}
        return self.unet(z, logsnr, context=context, context_mask=context_mask, fps=fps, frame_mask=frame_mask,
                         **frames)

    def denoise(self, z: Tensor, logsnr: Tensor, context: Tensor, context_mask: Tensor, fps: Tensor | None = None,
                frame_mask: Tensor | None = None, **cond: Tensor) -> Tensor:
        """x0 estimate (B, C, t, h, w): the sampler's view of the network, whatever its target.
        ``cond``: the extra inputs of a subclass's ``forward`` (see :meth:`conditioning`)."""
        alpha, sigma = self.schedule.alpha_sigma(logsnr)
        pred = self(z, logsnr, context, context_mask, fps, frame_mask, **cond)
        return prediction_to_x0(pred, z, alpha, sigma, self.target)

    def encode_text(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Captions -> tokens (B, L, D) and mask (B, L) on this module's device."""
        context, mask = self.text_encoder(list(captions))
        return context.to(self.device), mask.to(self.device)

    def conditioning(self, batch: dict, z0: Tensor, mask: Tensor, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        """The diffusion target and the extra keyword inputs of ``forward`` for a training batch with
        clean z0 (B, C, t, h, w) and frame mask (B, t). The base model returns ``(z0, {})``; the
        super-resolution stages (:mod:`latentvid.models.super_resolution`) add their low-resolution
        conditioning here (and may diffuse a residual instead of z0)."""
        return z0, {}

    # ---- training ---------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict, generator: torch.Generator | None = None, t: Tensor | None = None) -> Tensor:
        """Loss for one batch: ``video`` (B, 3, T, H, W), ``caption`` (B strings), ``fps`` (B,),
        ``frame_mask`` (B, T). ``t`` (B,) overrides the random times (validation uses a fixed grid).

        A pre-encoded batch (:class:`latentvid.data.latents.LatentDataModule`) gives ``latents``
        (B, C, t, h, w), already scaled by the first stage, instead of ``video``; its ``frame_mask``
        (B, t) is then the latent-frame mask and the first stage is not called."""
        if "latents" in batch:
            z0, mask = batch["latents"], batch["frame_mask"].bool()  # (B, C, t, h, w), (B, t)
            if z0.ndim != 5 or z0.shape[1] != self.first_stage.latent_channels or mask.shape != (z0.shape[0], z0.shape[2]):
                raise ValueError(
                    f"batch latents {tuple(z0.shape)} / frame_mask {tuple(mask.shape)} do not fit: expected "
                    f"(B, {self.first_stage.latent_channels}, t, h, w) latents and a (B, t) latent-frame mask"
                )
        else:
            video, frame_mask = batch["video"], batch["frame_mask"].bool()
            with torch.no_grad():
                # the posterior mean, in training and validation alike (as tools/encode_latents.py
                # stores it): a VAE trained on decoded means has an untrained posterior variance
                z0 = self.first_stage.encode(video)  # (B, C, t, h, w)
                mask = self.first_stage.latent_mask(frame_mask)  # (B, t)
        z0, mask = lead_with_first_frame(z0, mask, self.frame_multiple)
        b = z0.shape[0]
        captions = list(batch["caption"])
        if self.training and self.caption_dropout > 0:
            captions = caption_dropout(captions, self.caption_dropout, generator)
        context, context_mask = self.encode_text(captions)
        if t is None:
            # stratified ("low-discrepancy") times: one per sample, jointly covering the density (VDM)
            t = self.time_sampling.sample(b, generator).to(self.device)
        tokens = mask.sum(dim=1) * (z0.shape[-2] * z0.shape[-1])  # (B,) valid latent tokens per clip
        logsnr = self.schedule_logsnr(t.float(), tokens)
        alpha, sigma = self.schedule.alpha_sigma(logsnr)
        eps = torch.randn(z0.shape, generator=generator, device=z0.device if generator is None else generator.device)
        eps = eps.to(z0)
        z0, extra = self.conditioning(batch, z0, mask, generator)
        loss_mask = mask
        if self.frame_masks is not None:
            cpu = generator if generator is None or generator.device.type == "cpu" else None
            known_mask = draw_frame_masks(mask, self.frame_masks, cpu).to(z0.device)  # (B, t)
            extra = {**extra, "known": z0, "known_mask": known_mask}
            # known frames are inputs, pinned to their given values at sampling (frames_denoiser):
            # predicting them teaches nothing, so the loss covers the frames to generate (a network that
            # generates its given frames too, CogVideoX image-to-video, keeps them in it)
            loss_mask = mask & ~known_mask if self.pins_known_frames else mask
        z_t = diffuse(z0, eps, alpha, sigma)
        pred = self(z_t, logsnr, context, context_mask, batch.get("fps"), mask, **extra)
        target = training_target(z0, eps, alpha, sigma, self.target)
        weight = snr_loss_weight(logsnr, self.target, self.min_snr_gamma, sigma=sigma, floor=self.snr_floor)
        return masked_mse(pred, target, loss_mask, weight=weight)

    def schedule_logsnr(self, t: Tensor, tokens: Tensor | float | None = None) -> Tensor:
        """logSNR (B,) at times t (B,); ``tokens`` (latent tokens per clip, (B,) or a number) reach a
        schedule whose shift depends on them (``RectifiedFlowSchedule(base_tokens=...)``)."""
        if getattr(self.schedule, "base_tokens", None) is not None and tokens is not None:
            return self.schedule.logsnr(t, tokens)
        return self.schedule.logsnr(t)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(batch)
        bs = batch["frame_mask"].shape[0]  # pre-encoded batches have no "video"
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/image_fraction", (batch["frame_mask"].sum(1) == 1).float().mean(), batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        # fixed noise and evenly spread times, so val/loss is comparable across epochs
        b = batch["frame_mask"].shape[0]  # pre-encoded batches have no "video"
        g = torch.Generator(device="cpu").manual_seed(1234 + batch_idx)
        t = ((torch.arange(b) + 0.5) / b).to(self.device)
        with torch.random.fork_rng(devices=[]):
            loss = self.diffusion_loss(batch, generator=g, t=t)
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        return loss

    def configure_optimizers(self):
        lr, scale = self.hparams.lr, self.spatial_lr_scale
        if scale == 1.0:
            groups = [{"name": "unet", "params": [p for p in self.unet.parameters() if p.requires_grad]}]
        else:  # temporal layers at lr, the pretrained spatial ones at lr * scale (or frozen)
            groups = [{"name": "temporal", "params": [p for p in self.unet.temporal_parameters() if p.requires_grad]}]
            if scale:
                spatial = [p for p in self.unet.spatial_parameters() if p.requires_grad]
                groups.append({"name": "spatial", "params": spatial, "lr": lr * scale})
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.hparams.betas), weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_lambda(self.hparams.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        captions: list[str],
        num_frames: int,
        height: int,
        width: int,
        fps: float = 8.0,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        progress: bool = False,
        spacing: str = "time",
        known: Tensor | None = None,
        known_mask: Tensor | None = None,
        frames_method: str | None = None,
        frames_weight: float = 1.0,
    ) -> Tensor:
        """Generate videos for ``captions``: returns (B, 3, num_frames, height, width) in [-1, 1].

        ``generator`` (on this module's device) makes the result reproducible; None uses the global RNG. One
        generator per caption gives each video its own noise, so video i does not depend on the batch it
        shares (:func:`latentvid.evaluation.sampling.sample_seeded`).
        ``spacing``: the sampling grid, ``"time"``, ``"logsnr"`` or ``"karras"``
        (:func:`~latentvid.diffusion.schedule.sampling_grid`).
        ``known`` (B, C, t, h, w) latents and ``known_mask`` (B, t) bool: frames to keep (image-to-video,
        extension, interpolation; :meth:`frames_denoiser` with ``frames_method`` and ``frames_weight``;
        pixel frames: :mod:`latentvid.pipelines.frames`).
        """
        steps = steps or self.hparams.sample_steps
        sampler = sampler or self.hparams.sampler
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        b, fs = len(captions), self.first_stage
        if height % fs.spatial_factor or width % fs.spatial_factor:
            raise ValueError(f"height/width {height}x{width} must be multiples of the first stage's "
                             f"spatial factor {fs.spatial_factor}")
        shape = (b, fs.latent_channels, fs.latent_frames(num_frames), height // fs.spatial_factor,
                 width // fs.spatial_factor)
        if known is not None and (tuple(known.shape) != shape or known_mask is None
                                  or tuple(known_mask.shape) != (b, shape[2])):
            raise ValueError(f"known latents must be {shape} with a ({b}, {shape[2]}) mask, got "
                             f"{tuple(known.shape)} / {None if known_mask is None else tuple(known_mask.shape)}")
        # a network that takes multiples of m latent frames samples that many more in front, then drops
        # them (as CogVideoXPipeline does for CogVideoX 1.5)
        lead = -shape[2] % self.frame_multiple
        if lead and known is not None:
            known = torch.cat([known[:, :, :1].expand(-1, -1, lead, -1, -1), known], dim=2)
            known_mask = torch.cat([torch.zeros_like(known_mask[:, :1]).expand(-1, lead), known_mask], dim=1)
        denoise = self.frames_denoiser(captions, fps, scale, known, known_mask, frames_method, frames_weight)
        z = standard_normal((*shape[:2], shape[2] + lead, *shape[3:]), generator, self.device)
        z = self.run_sampler(denoise, z, steps, sampler, eta=eta, generator=generator, progress=progress,
                             spacing=spacing)
        video = fs.decode(z[:, :, lead:])
        if not math.isfinite(float(video.abs().max())):
            raise FloatingPointError("sampling produced non-finite values")
        return video.clamp(-1.0, 1.0)

    def guided_denoiser(self, captions: list[str], fps: float, guidance_scale: float, *, clip: bool = True,
                        **cond: Tensor):
        """``denoise(z, logsnr) -> x0_hat`` for the samplers: classifier-free guidance between ``captions``
        and the empty caption (one batched forward), x0 clipping when ``clip`` and ``clip_sample`` are set.
        ``cond`` (tensors (B, ...)) go to both branches unchanged (e.g. an SR stage's low-resolution video)."""
        b = len(captions)
        context, cmask = self.encode_text(captions)
        empty, emask = self.encode_text([""] * b)
        fps_t = torch.full((b,), float(fps), device=self.device)
        denoise = classifier_free_guidance(
            self.denoise,
            {"context": context, "context_mask": cmask, "fps": fps_t, **cond},
            {"context": empty, "context_mask": emask, "fps": fps_t, **cond},
            guidance_scale,
        )
        if clip and self.hparams.clip_sample is not None:
            denoise = clip_denoised(denoise, self.hparams.clip_sample)
        return denoise

    def frames_denoiser(self, captions: list[str], fps: float, guidance_scale: float, known: Tensor | None = None,
                        known_mask: Tensor | None = None, method: str | None = None, weight: float = 1.0):
        """:meth:`guided_denoiser` conditioned on known latent frames ``known`` (B, C, t, h, w) where
        ``known_mask`` (B, t) bool; no known frames: the plain guided denoiser.

        ``method`` (:data:`FRAME_METHODS`; None: ``"trained"`` for a frame-conditioned network, else
        ``"guidance"``): ``"trained"`` gives the known frames to the network in both CFG branches (the
        caption is what CFG guides) and pins its estimate there to them (unless the network generates its
        given frames too: :attr:`pins_known_frames`); ``"replacement"`` and
        ``"guidance"`` (reconstruction guidance, w_r = ``weight``) are the training-free wrappers of
        :func:`~latentvid.diffusion.known_frames.known_frames_denoiser`, and a frame-conditioned
        network then runs with no frame known. Every way, the sample's known frames are ``known``.
        """
        if known is None:
            return self.guided_denoiser(captions, fps, guidance_scale)
        method = method or ("trained" if self.frame_conditioned else "guidance")
        if method not in FRAME_METHODS:
            raise ValueError(f"frames method must be one of {FRAME_METHODS}, got {method!r}")
        known_mask = known_mask.to(device=self.device, dtype=torch.bool)
        known = known.to(self.device)
        if method == "trained":
            if not self.frame_conditioned:
                raise ValueError("frames method 'trained' needs a frame-conditioned network (frame_conditioning: "
                                 "true, configs/i2v.yaml); use 'replacement' or 'guidance' with this model")
            denoise = self.guided_denoiser(captions, fps, guidance_scale, known=known, known_mask=known_mask)
            if not self.pins_known_frames:
                return denoise
            return known_frames_denoiser(denoise, known, known_mask, mode="replacement")
        mode = "replacement" if method == "replacement" else "reconstruction"
        return known_frames_denoiser(self.guided_denoiser(captions, fps, guidance_scale), known, known_mask,
                                     mode=mode, weight=weight, alpha_sigma=self.schedule.alpha_sigma)

    def run_sampler(self, denoise, z: Tensor, steps: int, sampler: str, eta: float = 0.0,
                    generator=None, progress: bool = False, spacing: str = "time") -> Tensor:
        """Integrate from the starting noise z (B, C, t, h, w) on the schedule's ``steps``-step grid of
        ``spacing`` with ``SAMPLERS[sampler]`` -> (B, C, t, h, w). ``generator``: one, or one per sample."""
        if getattr(self.schedule, "base_tokens", None) is not None:
            logsnrs = self.schedule.sampling_logsnrs(steps, z.shape[2] * z.shape[3] * z.shape[4], spacing=spacing)
        else:
            logsnrs = self.schedule.sampling_logsnrs(steps, spacing=spacing)
        return run_sampler(sampler, denoise, z, logsnrs.to(self.device), eta=eta, generator=generator,
                           progress=progress, alpha_sigma=self.schedule.alpha_sigma)
