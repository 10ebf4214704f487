"""Progressive distillation of a trained model into a few-step, guidance-conditioned student.

Salimans & Ho (2022) distil an N-step DDIM sampler into a model that samples in N / 2 steps and
repeat: round r trains against a teacher sampling in N_r = N / 2^r steps, and the student, which
starts as a copy of that teacher, ends sampling in N_r / 2. Guidance is distilled in the same go,
as in Meng et al. (2023) and Imagen Video (which distils every stage of its cascade this way): the
first round's teacher is the trained model under classifier-free guidance at a weight w drawn per
sample, and the student takes w as one more scalar input (the network's ``extra`` slot, embedded like
logSNR), so it makes ONE network pass per step whatever w. Each later round's teacher is the previous
round's student (its EMA weights), w still an input.

Thin by design: the math (the teacher's two DDIM steps, the student's x0 target, its truncated-SNR
weight) is :mod:`latentvid.diffusion.distillation`; this module wires teacher, student and EMA, runs
the rounds and owns the optimiser. The student is an ordinary model of the teacher's kind
(:class:`DistilledLatentDiffusion`, :class:`DistilledSpatialSuperResolution`,
:class:`DistilledTemporalSuperResolution`), whose ``guided_denoiser`` passes w instead of doubling the
batch, so every sampling path runs it unchanged: :func:`latentvid.pipelines.loading.load_model` turns a
distillation checkpoint into its student (:meth:`ProgressiveDistillation.load_sampling_model`), with its
own step count as ``sample_steps``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from latentvid.callbacks.checkpoint_io import ResumeError
from latentvid.diffusion import classifier_free_guidance, clip_denoised, diffuse, masked_mse
from latentvid.diffusion.distillation import distillation_target, grid_steps, student_regression
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.models.lr_schedules import rounds_lambda
from latentvid.models.super_resolution import SpatialSuperResolution, TemporalSuperResolution

CHECKPOINT_KEY = "distillation"
"""Where a distillation checkpoint keeps its round, step counts and the student's config."""


# ---- the student: a model of the teacher's kind with the guidance weight as an input -----------


class GuidanceDistilled:
    """Mixin of a guidance-distilled model: the guidance weight w is a network input (the last
    ``extra`` scalar), so :meth:`guided_denoiser` makes one pass per step instead of classifier-free
    guidance's conditional + unconditional pair. ``guidance_scale`` keeps its meaning (1 = the
    conditional model; the student was trained on the range its distillation drew w from)."""

    guidance_input = True

    def guided_denoiser(self, captions: list[str], fps: float, guidance_scale: float, *, clip: bool = True,
                        **cond: Tensor):
        """``denoise(z, logsnr) -> x0_hat`` at guidance weight ``guidance_scale``: one forward of B
        samples; ``cond`` (tensors (B, ...)) as in :meth:`LatentDiffusion.guided_denoiser`."""
        b = len(captions)
        context, cmask = self.encode_text(captions)
        fps_t = torch.full((b,), float(fps), device=self.device)
        w = torch.full((b,), float(guidance_scale), device=self.device)

        def denoise(z: Tensor, logsnr: Tensor) -> Tensor:
            return self.denoise(z, logsnr, context, cmask, fps_t, guidance=w, **cond)

        if clip and self.hparams.clip_sample is not None:
            denoise = clip_denoised(denoise, self.hparams.clip_sample)
        return denoise


class DistilledLatentDiffusion(GuidanceDistilled, LatentDiffusion):
    """A guidance-distilled text-to-video model; ``unet.num_extra_conditions: 1`` (the guidance weight).
    Arguments are :class:`LatentDiffusion`'s; built by :class:`ProgressiveDistillation`, not trained alone."""

    def _check_shapes(self) -> None:
        super()._check_shapes()
        if self.unet.num_extra_conditions != 1:
            raise ValueError(f"model config does not chain:\n  unet.num_extra_conditions={self.unet.num_extra_conditions}"
                             " but a guidance-distilled model passes 1 (the guidance weight)")

    def forward(self, z: Tensor, logsnr: Tensor, context: Tensor, context_mask: Tensor, fps: Tensor | None = None,
                frame_mask: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        """Network output (B, C, t, h, w) for noisy latents z (B, C, t, h, w) at guidance weight ``guidance`` (B,)."""
        if guidance is None:
            raise ValueError(f"{type(self).__name__} needs a guidance weight (guidance=)")
        return self.unet(z, logsnr, context=context, context_mask=context_mask, fps=fps, frame_mask=frame_mask,
                         extra=guidance.to(z)[:, None])


class DistilledSpatialSuperResolution(GuidanceDistilled, SpatialSuperResolution):
    """A guidance-distilled SSR stage; ``unet.num_extra_conditions: 2`` (augmentation logSNR, guidance weight)."""


class DistilledTemporalSuperResolution(GuidanceDistilled, TemporalSuperResolution):
    """A guidance-distilled TSR stage; ``unet.num_extra_conditions: 2`` (augmentation logSNR, guidance weight)."""


STUDENT_CLASSES: dict[type, type] = {
    LatentDiffusion: DistilledLatentDiffusion,
    SpatialSuperResolution: DistilledSpatialSuperResolution,
    TemporalSuperResolution: DistilledTemporalSuperResolution,
}
"""The student class of each teacher class (exact classes: a subclass may change what the student must copy)."""


def _import(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def model_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The config (``_class_path`` + init arguments) of the model :func:`~latentvid.pipelines.loading.load_model`
    builds from ``ckpt``: its hyper-parameters, or a distillation checkpoint's student's."""
    info = ckpt.get(CHECKPOINT_KEY)
    return dict(info["student_config"]) if info is not None else dict(ckpt.get("hyper_parameters", {}))


def student_config(teacher_config: dict[str, Any], steps: int) -> dict[str, Any]:
    """The config of the student of a teacher built from ``teacher_config``: the student class, the
    network with one more extra scalar (the guidance weight), ``steps`` DDIM steps as its default."""
    if "_class_path" not in teacher_config:
        raise ValueError("the teacher checkpoint has no saved model config (was it written by tools/fit.py?)")
    cls = _import(teacher_config["_class_path"])
    config = copy.deepcopy({k: v for k, v in teacher_config.items() if k != "_instantiator"})
    config.update(sample_steps=int(steps), sampler="ddim")  # deterministic DDIM is what the student learns
    if issubclass(cls, GuidanceDistilled):  # distilling a distilled model further: same network
        return config
    if cls not in STUDENT_CLASSES:
        raise ValueError(f"cannot distil a {teacher_config['_class_path']}: the teacher must be one of "
                         f"{sorted(_path(c) for c in STUDENT_CLASSES)}")
    unet = config.get("unet")
    if not isinstance(unet, dict) or not isinstance(unet.get("init_args"), dict):
        raise ValueError(f"the teacher's unet config is not a class_path / init_args mapping: {unet!r}")
    unet["init_args"]["num_extra_conditions"] = int(unet["init_args"].get("num_extra_conditions", 0)) + 1
    config["_class_path"] = _path(STUDENT_CLASSES[cls])
    return config


def copy_with_guidance_input(teacher_net: nn.Module, student_net: nn.Module) -> None:
    """Load ``teacher_net``'s weights into ``student_net``, the same network built with one more extra
    scalar (the guidance weight), so that the student computes the teacher's function whatever that
    scalar is. A new extra embedding keeps its random input layer and starts with a zero output layer
    (the U-Net starts its other added paths at zero too); a widened one gets zero weights on the new
    scalar's sinusoids. Works for any network whose ``extra_embed`` is a
    :class:`~latentvid.nn.layers.ScalarEmbedding` (UNet3D, DiT, InflatedUNet3D)."""
    k = teacher_net.num_extra_conditions
    if student_net.num_extra_conditions != k + 1:
        raise ValueError(f"the student network takes {student_net.num_extra_conditions} extra scalars, "
                         f"the teacher's {k}: expected {k + 1}")
    source, state = teacher_net.state_dict(), student_net.state_dict()
    emb = "extra_embed."
    mismatched = [n for n, v in source.items()
                  if not n.startswith(emb) and (n not in state or state[n].shape != v.shape)]
    missing = [n for n in state if not n.startswith(emb) and n not in source]
    if mismatched or missing:
        raise ValueError(f"the student network does not match the teacher's: {(mismatched + missing)[:5]}")
    state.update({n: v for n, v in source.items() if not n.startswith(emb)})
    first, last = f"{emb}mlp.0.weight", f"{emb}mlp.2"
    if k == 0:
        state[f"{last}.weight"] = torch.zeros_like(state[f"{last}.weight"])
        state[f"{last}.bias"] = torch.zeros_like(state[f"{last}.bias"])
    else:
        state.update({n: v for n, v in source.items() if n.startswith(emb) and n != first})
        width = source[first].shape[1]  # k scalars' sinusoids, concatenated scalar by scalar
        widened = torch.zeros_like(state[first])  # (out, (k + 1) * freq_dim)
        widened[:, :width] = source[first]
        state[first] = widened
    student_net.load_state_dict(state)


@contextmanager
def _own_hyperparameters() -> Iterator[None]:
    """Let models built inside a module's constructor record their own arguments.

    LightningCLI hands the module it builds its config through a context variable that every
    ``save_hyperparameters()`` called during that constructor reads; without this, the teacher and
    the student built inside :class:`ProgressiveDistillation` would record the distillation's."""
    from lightning.pytorch.core.mixins import hparams_mixin

    token = hparams_mixin._given_hyperparameters.set(None)
    try:
        yield
    finally:
        hparams_mixin._given_hyperparameters.reset(token)


def build_student(config: dict[str, Any], teacher: LatentDiffusion | None = None) -> LatentDiffusion:
    """The model of ``config`` (:func:`student_config`); with a ``teacher``, a copy of it that shares its
    frozen text tower and first stage and computes its function (guidance weight ignored at first)."""
    from lightning.pytorch.cli import instantiate_module

    cls = _import(config["_class_path"])
    with _own_hyperparameters():
        student = instantiate_module(cls, config)
    if teacher is None:
        return student
    student.text_encoder, student.first_stage = teacher.text_encoder, teacher.first_stage
    if isinstance(teacher, GuidanceDistilled):
        student.unet.load_state_dict(teacher.unet.state_dict())
    else:
        copy_with_guidance_input(teacher.unet, student.unet)
    if getattr(teacher, "trained_shape", None) is not None:  # an SR stage's record of what it takes
        student.trained_shape = teacher.trained_shape
    return student


def encode_batch(model: LatentDiffusion, batch: dict) -> tuple[Tensor, Tensor]:
    """Clean latents (B, C, t, h, w) and their frame mask (B, t) of a training batch, as
    :meth:`LatentDiffusion.diffusion_loss` makes them (``video`` through the frozen first stage, or
    pre-encoded ``latents``)."""
    if "latents" in batch:
        return batch["latents"], batch["frame_mask"].bool()
    with torch.no_grad():
        z0 = model.first_stage.encode(batch["video"])  # (B, C, t, h, w), the posterior mean
        return z0, model.first_stage.latent_mask(batch["frame_mask"].bool())


def _frozen_copy(model: LatentDiffusion) -> LatentDiffusion:
    """A frozen copy of ``model`` in eval mode that shares its (frozen) text tower and first stage."""
    shared = {id(model.text_encoder): model.text_encoder, id(model.first_stage): model.first_stage}
    return copy.deepcopy(model, shared).requires_grad_(False).eval()


# ---- the training module -------------------------------------------------------------------------


class ProgressiveDistillation(LightningModule):
    """Progressive, guidance-conditioned distillation of a trained base, SSR or TSR model.

    Round r (0-based) distils the teacher's ``teacher_steps / 2^r``-step DDIM sampler into a student
    that samples in half as many steps, for ``steps_per_round`` optimiser steps; the round is a
    function of the global step, and the round and its step counts are saved in every checkpoint,
    so a resumed run continues in its round. At a round's end the student's EMA becomes the next
    teacher and the next student's start, and AdamW's moments start afresh.

    Args:
        teacher: checkpoint of the trained model (or a run root such as ``runs/base``: its newest
            ``last*.ckpt``) written by tools/fit.py: a LatentDiffusion, SpatialSuperResolution or
            TemporalSuperResolution (or an earlier distillation, whose student then goes on).
        teacher_steps: N of the first round: the teacher's DDIM steps on its schedule's default
            sampling grid (uniform in t), which halves into the students' grids.
        final_steps: the student's steps after the last round; ``teacher_steps / final_steps`` must be
            a power of two (the number of rounds).
        steps_per_round: optimiser steps of each round; set ``trainer.max_steps`` to rounds x this.
        guidance_min, guidance_max: the guidance weights drawn uniformly per sample, in the units of
            ``--guidance`` (1 = the conditional model, 0 = the unconditional one; Meng et al.'s w is
            this minus 1). Sampling outside the range extrapolates. Embedded like logSNR, so values
            are clipped to [-20, 20].
        lr, weight_decay, betas: AdamW settings for the student's network.
        warmup_steps: linear warm-up at the start of every round; the rate then falls linearly to 0
            at the round's end (each round is a new regression problem).
        ema_decay: decay of the EMA of the student's weights, which samples, validates and becomes
            the next round's teacher. Kept here rather than by an EMA callback, which cannot know
            that it must restart at each round (and would also average the teacher).
        teacher_ema: use the teacher checkpoint's EMA weights (True) or its raw ones.
    """

    def __init__(
        self,
        teacher: str,
        teacher_steps: int = 64,
        final_steps: int = 8,
        steps_per_round: int = 1000,
        guidance_min: float = 1.0,
        guidance_max: float = 5.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 50,
        ema_decay: float = 0.999,
        teacher_ema: bool = True,
    ) -> None:
        super().__init__()
        rounds = math.log2(teacher_steps / final_steps) if teacher_steps > 0 and final_steps > 0 else 0.0
        if final_steps < 1 or rounds < 1 or rounds != int(rounds):
            raise ValueError(f"teacher_steps / final_steps must be a power of two >= 2, "
                             f"got {teacher_steps} / {final_steps}")
        if steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {steps_per_round}")
        if not guidance_max >= guidance_min:
            raise ValueError(f"need guidance_min <= guidance_max, got {guidance_min}, {guidance_max}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.save_hyperparameters()
        self.rounds = int(rounds)
        self.round = 0  # advanced by the global step (on_train_batch_start), restored from checkpoints

        from latentvid.pipelines.loading import load_model

        with _own_hyperparameters():
            teacher_model, ckpt = load_model(teacher, ema=teacher_ema)
        if isinstance(teacher_model, GuidanceDistilled) and teacher_model.hparams.sample_steps != teacher_steps:
            raise ValueError(f"the teacher {teacher} is a distilled model that samples in "
                             f"{teacher_model.hparams.sample_steps} steps: set teacher_steps to that")
        if teacher_model.target == "eps":
            raise ValueError("an eps-prediction student cannot be distilled: its x0 = (z - sigma eps) / alpha "
                             "blows up at the high noise levels a few-step sampler starts from (Salimans & Ho, "
                             "sec. 4); distil a v, x0 or flow model")
        self.teacher = teacher_model.requires_grad_(False).eval()
        self.student_config = student_config(model_config(ckpt), teacher_steps // 2)
        self.student = build_student(self.student_config, self.teacher)
        self.ema = copy.deepcopy(self.student.unet).requires_grad_(False).eval()

    # ---- rounds -----------------------------------------------------------------------------
    def round_at(self, step: int) -> int:
        """The round (0-based) that optimiser step ``step`` (0-based) belongs to."""
        return min(step // self.hparams.steps_per_round, self.rounds - 1)

    @property
    def teacher_steps(self) -> int:
        """N of the current round: the teacher's DDIM steps."""
        return self.hparams.teacher_steps >> self.round

    @property
    def student_steps(self) -> int:
        """The current student's DDIM steps (N / 2)."""
        return self.teacher_steps // 2

    def _to_round(self, r: int) -> None:
        """Set the module up for round ``r`` (from a finished round, or for a checkpoint of round ``r``):
        from round 1 on the teacher takes w as an input, like the student it is a copy of."""
        if r >= 1 and not isinstance(self.teacher, GuidanceDistilled):
            self.teacher = _frozen_copy(self.student)
        self.round = r
        self.student.hparams.sample_steps = self.student_steps

    def _next_round(self) -> None:
        """The student's EMA becomes the next teacher and the next student (Salimans & Ho, Algorithm 2)."""
        with torch.no_grad():
            ema = self.ema.state_dict()
            self._to_round(self.round + 1)
            self.teacher.unet.load_state_dict(ema)
            self.student.unet.load_state_dict(ema)
        for opt in self.trainer.optimizers:
            opt.state.clear()  # Adam's moments belong to the last round's targets
        rank_zero_info(f"distillation round {self.round + 1}/{self.rounds}: {self.teacher_steps} -> "
                       f"{self.student_steps} steps")

    def on_fit_start(self) -> None:
        if any(isinstance(cb, WeightAveraging) for cb in self.trainer.callbacks):
            raise ValueError("ProgressiveDistillation keeps its own EMA of the student (it restarts every round and "
                             "becomes the next teacher): remove the EMAWeightAveraging callback from the config")
        planned = self.rounds * self.hparams.steps_per_round
        if self.trainer.max_steps not in (-1, planned):
            rank_zero_warn(f"trainer.max_steps={self.trainer.max_steps} but {self.rounds} rounds of "
                           f"{self.hparams.steps_per_round} steps take {planned}")

    def on_train_start(self) -> None:  # after a resumed run has restored its round
        rank_zero_info(f"distillation round {self.round + 1}/{self.rounds}: {self.teacher_steps} -> "
                       f"{self.student_steps} steps (from optimiser step {self.trainer.global_step})")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        while self.round < self.round_at(self.trainer.global_step):
            self._next_round()

    # ---- the loss -----------------------------------------------------------------------------
    def teacher_grid(self, z: Tensor) -> Tensor:
        """The teacher's logSNR grid (N + 1,) for latents shaped like z (B, C, t, h, w), as the samplers
        build it (:meth:`LatentDiffusion.run_sampler`), on z's device."""
        schedule = self.student.schedule
        if getattr(schedule, "base_tokens", None) is not None:
            return schedule.sampling_logsnrs(self.teacher_steps, z.shape[2] * z.shape[3] * z.shape[4]).to(z.device)
        return schedule.sampling_logsnrs(self.teacher_steps).to(z.device)

    def teacher_denoiser(self, context: Tensor | None, context_mask: Tensor | None, fps: Tensor | None,
                         frame_mask: Tensor, guidance: Tensor, extra: dict[str, Tensor]):
        """``denoise(z, logsnr) -> x0_hat`` of the current teacher at per-sample guidance weights (B,):
        classifier-free guidance in the first round (one batched pass of 2B), w as an input after it.
        Unclipped: ``clip_sample`` (and an SR stage's residual bounds) stay sampling-time choices,
        which the student's own ``sample`` applies as the teacher's would."""
        t = self.teacher
        if isinstance(t, GuidanceDistilled):
            return lambda z, lam: t.denoise(z, lam, context, context_mask, fps, frame_mask, guidance=guidance, **extra)
        if t.text_encoder is None:  # a stage without text has nothing to guide
            return lambda z, lam: t.denoise(z, lam, context, context_mask, fps, frame_mask, **extra)
        empty, empty_mask = t.encode_text([""] * len(guidance))
        return classifier_free_guidance(
            t.denoise,
            {"context": context, "context_mask": context_mask, "fps": fps, "frame_mask": frame_mask, **extra},
            {"context": empty, "context_mask": empty_mask, "fps": fps, "frame_mask": frame_mask, **extra},
            guidance,
        )

    def distillation_loss(self, batch: dict, generator: torch.Generator | None = None, index: Tensor | None = None,
                          guidance: Tensor | None = None) -> Tensor:
        """Loss for one batch (as :meth:`LatentDiffusion.diffusion_loss` takes it). ``index`` (B,) picks
        each sample's student step in [0, N / 2) and ``guidance`` (B,) its weight; random when None."""
        s = self.student
        z0, mask = encode_batch(s, batch)  # (B, C, t, h, w), (B, t)
        b, device = z0.shape[0], z0.device
        gen_device = generator.device if generator is not None else device
        context, context_mask = s.encode_text(list(batch["caption"]))
        logsnrs = self.teacher_grid(z0)  # (N + 1,)
        if index is None:
            index = torch.randint(0, self.student_steps, (b,), generator=generator, device=gen_device)
        if guidance is None:
            lo, hi = self.hparams.guidance_min, self.hparams.guidance_max
            guidance = lo + (hi - lo) * torch.rand(b, generator=generator, device=gen_device)
        index, guidance = index.to(device), guidance.to(device)
        lam_t, lam_m, lam_s = grid_steps(logsnrs, index)  # (B,) each
        alpha, sigma = s.schedule.alpha_sigma(lam_t)
        eps = torch.randn(z0.shape, generator=generator, device=gen_device).to(z0)
        z0, extra = s.conditioning(batch, z0, mask, generator)  # SR: residual target + low-resolution input
        z_t = diffuse(z0, eps, alpha, sigma)
        fps = batch.get("fps")
        with torch.no_grad():
            teacher = self.teacher_denoiser(context, context_mask, fps, mask, guidance, extra)
            x0_target = distillation_target(teacher, z_t, lam_t, lam_m, lam_s, s.schedule.alpha_sigma)
        pred = s(z_t, lam_t, context, context_mask, fps, mask, guidance=guidance, **extra)
        target, weight = student_regression(x0_target, z_t, alpha, sigma, lam_t, s.target)
        return masked_mse(pred, target, mask, weight=weight)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.distillation_loss(batch)
        bs = batch["frame_mask"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("distill/student_steps", float(self.student_steps), batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        # fixed noise, evenly spread steps and weights: comparable within a round (the EMA student's loss)
        b = batch["frame_mask"].shape[0]
        g = torch.Generator(device="cpu").manual_seed(1234 + batch_idx)
        index = torch.arange(b) * self.student_steps // b
        guidance = torch.linspace(self.hparams.guidance_min, self.hparams.guidance_max, b)
        with torch.random.fork_rng(devices=[]):
            loss = self.distillation_loss(batch, generator=g, index=index, guidance=guidance)
        self.log("val/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        return loss

    # ---- optimiser and EMA --------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.student.unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                weight_decay=self.hparams.weight_decay)
        factor = rounds_lambda(self.hparams.warmup_steps, self.hparams.steps_per_round, self.rounds)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():  # after every real optimiser step (not every batch under accumulation)
            decay = self.hparams.ema_decay
            for e, p in zip(self.ema.parameters(), self.student.unet.parameters()):
                e.lerp_(p, 1.0 - decay)
            for e, p in zip(self.ema.buffers(), self.student.unet.buffers()):
                e.copy_(p)

    def _swap_ema(self) -> None:
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.student.unet.parameters()):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)

    def on_validation_epoch_start(self) -> None:
        self._swap_ema()  # validate and sample (LogSampleVideos) with the EMA student

    def on_validation_epoch_end(self) -> None:
        self._swap_ema()

    def train(self, mode: bool = True) -> ProgressiveDistillation:
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, no training-only behaviour, whatever Lightning asks
        self.ema.eval()
        return self

    # ---- what tools and callbacks see --------------------------------------------------------
    @property
    def first_stage(self) -> nn.Module:
        """The (shared, frozen) first stage, for the start-up checks."""
        return self.student.first_stage

    @property
    def unet(self) -> nn.Module:
        """The student's network, for the start-up checks."""
        return self.student.unet

    def sample(self, *args: Any, **kwargs: Any) -> Tensor:
        """The student's :meth:`~LatentDiffusion.sample` (its own step count unless ``steps`` is given)."""
        return self.student.sample(*args, **kwargs)

    # ---- checkpoints -------------------------------------------------------------------------
    def _weights_from_files(self) -> set[str]:
        """Keys of frozen weights that reload from files named in the configs (as LatentDiffusion skips them).
        In round 1 that includes the whole teacher: it is the ``teacher`` checkpoint, loaded at construction."""
        keys = {f"{name}.{k}" for name in ("teacher", "student") for k in getattr(self, name)._weights_from_files()}
        if self.round == 0:
            keys |= {f"teacher.{k}" for k in self.teacher.state_dict()}
        return keys

    def _teacher_digest(self) -> str:
        """A digest of the round-1 teacher's weights (frozen, so computed once), which a checkpoint that leaves
        them out records, so that resuming from a changed ``teacher`` file is an error, not a silent switch."""
        if getattr(self, "_digest", None) is None:
            h = hashlib.blake2b(digest_size=16)
            for name, value in sorted(self.teacher.state_dict().items()):
                h.update(name.encode())
                h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        extras: dict = {}
        self.student.on_save_checkpoint(extras)  # what the student records beside its weights (an SR stage's shape)
        config = dict(self.student_config, sample_steps=self.student_steps)
        checkpoint[CHECKPOINT_KEY] = {"round": self.round, "teacher_steps": self.teacher_steps,
                                      "student_steps": self.student_steps, "student_config": config,
                                      "student_extras": extras}
        if self.round == 0:  # the teacher is its checkpoint file: a copy here would double the file
            checkpoint[CHECKPOINT_KEY]["teacher_digest"] = self._teacher_digest()
        skip = self._weights_from_files()
        if skip:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in skip}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get(CHECKPOINT_KEY)
        if info is None:
            raise ValueError("not a ProgressiveDistillation checkpoint (it has no 'distillation' record)")
        r = int(info["round"])
        if info["teacher_steps"] != self.hparams.teacher_steps >> r:
            raise ResumeError(f"the checkpoint is in round {r + 1} with a {info['teacher_steps']}-step teacher, but "
                              f"teacher_steps={self.hparams.teacher_steps} gives {self.hparams.teacher_steps >> r}")
        self._to_round(r)  # the module must have round r's shape before Lightning loads the weights
        saved = info.get("teacher_digest")
        if saved is not None and saved != self._teacher_digest():
            raise ResumeError(f"the teacher {self.hparams.teacher} is not the one this round-1 checkpoint was "
                              "trained against (its weights changed since): resume with that teacher checkpoint")
        own = self.state_dict()
        for k in self._weights_from_files():
            checkpoint["state_dict"].setdefault(k, own[k])

    @classmethod
    def load_sampling_model(cls, ckpt: dict[str, Any], ema: bool = True) -> LatentDiffusion:
        """The student of a distillation checkpoint, ready to sample in its own steps (``sample_steps``);
        ``ema``: its EMA weights (default) or the raw ones. Needs no teacher checkpoint."""
        info = ckpt.get(CHECKPOINT_KEY)
        if info is None:
            raise ValueError("not a ProgressiveDistillation checkpoint (it has no 'distillation' record)")
        student = build_student(info["student_config"])
        state = ckpt["state_dict"]
        weights = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
        if ema:
            weights.update({"unet." + k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")})
        student.on_load_checkpoint({**info["student_extras"], "state_dict": weights})  # refills file-loaded weights
        student.load_state_dict(weights)
        return student
