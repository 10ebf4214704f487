"""Pixel-space super-resolution stages of the cascade: spatial (SSR) and temporal (TSR).

Each stage is a conditional diffusion model on the high-resolution video (SR3 / Imagen Video): the
low-resolution video, brought to the target shape, is concatenated to the noisy input's channels
and its conditioning-augmentation level reaches the U-Net as an extra scalar (``extra``, embedded
like logSNR). Training pairs are made on the fly from the ordinary video batch, so any datamodule
that trains the base model trains these stages too:

- SSR: the clip downsampled in space with anti-aliasing, then upsampled back (bilinear / bicubic);
- TSR: every ``frame_factor``-th frame kept, then brought back to the full frame count by repeating
  frames, or by blank frames plus a mask channel.

The loss, the optimiser and the samplers are :class:`LatentDiffusion`'s; these classes only add
the conditioning (:meth:`SuperResolutionDiffusion.conditioning`) and sampling from a video.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvid.diffusion import ConditioningAugmentation, augment
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.nn.first_stage import IdentityFirstStage
from latentvid.nn.unet3d import UNet3D

Denoiser = Callable[[Tensor, Tensor], Tensor]
UPSAMPLE_MODES = ("bilinear", "bicubic")
FILL_MODES = ("repeat", "blank")


# ---- conditioning transforms (pure functions) ----------------------------------------------------


def _per_frame(video: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply an image op to every frame: (B, C, T, H, W) -> (B, C, T, H', W')."""
    b, c, t, h, w = video.shape
    frames = fn(video.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, C, H', W')
    return frames.reshape(b, t, c, *frames.shape[-2:]).transpose(1, 2)  # (B, C, T, H', W')


def downsample_space(video: Tensor, factor: int) -> Tensor:
    """Anti-aliased spatial downsampling by ``factor``: (B, C, T, H, W) -> (B, C, T, H/f, W/f).

    Bilinear with ``antialias=True`` (a triangle filter as wide as the factor), as the data layer
    resizes frames, so no high frequencies fold back into the low-resolution clip.
    """
    h, w = video.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"frame size {h}x{w} is not divisible by the SSR scale_factor {factor}")
    size = (h // factor, w // factor)
    return _per_frame(video, lambda x: F.interpolate(x, size=size, mode="bilinear", antialias=True,
                                                     align_corners=False))


def upsample_space(video: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Upsample every frame to ``size`` = (H, W): (B, C, T, h, w) -> (B, C, T, H, W).

    ``mode``: ``"bilinear"`` or ``"bicubic"`` (half-pixel centres; bicubic may overshoot [-1, 1] a little).
    """
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    return _per_frame(video, lambda x: F.interpolate(x, size=tuple(size), mode=mode, align_corners=False))


def drop_frames(video: Tensor, frame_mask: Tensor | None, factor: int) -> tuple[Tensor, Tensor | None]:
    """Keep frames 0, f, 2f, ...: (B, C, T, H, W), mask (B, T) -> (B, C, T/f, H, W), (B, T/f)."""
    t = video.shape[2]
    if factor < 1 or t % factor:
        raise ValueError(f"clip length {t} is not divisible by the TSR frame_factor {factor}; "
                         f"train on clips of a multiple of {factor} frames")
    return video[:, :, ::factor], None if frame_mask is None else frame_mask[:, ::factor]


def expand_frames(low: Tensor, factor: int, fill: str = "repeat") -> Tensor:
    """Bring a low-frame-rate clip to ``factor`` times its frames, input frame i at position f*i.

    ``fill="repeat"``: each frame repeated f times -> (B, C, T*f, H, W).
    ``fill="blank"``: the frames in between are zero and a mask channel (1 = a real input frame)
    is appended -> (B, C + 1, T*f, H, W).
    """
    if fill not in FILL_MODES:
        raise ValueError(f"TSR fill must be one of {FILL_MODES}, got {fill!r}")
    if fill == "repeat":
        return low.repeat_interleave(factor, dim=2)  # (B, C, T*f, H, W)
    b, c, t, h, w = low.shape
    out = low.new_zeros(b, c + 1, t * factor, h, w)
    out[:, :c, ::factor] = low
    out[:, c, ::factor] = 1.0
    return out


def temporal_radius(unet: nn.Module) -> int | None:
    """Frames on each side that one output frame of ``unet`` can depend on, or None if unbounded.

    With temporal attention the receptive field is the whole clip (None). Otherwise only the
    temporal convolutions mix frames, and every one of them lies on the U-Net's main path, so the
    sum of their half-widths bounds the radius.
    """
    from latentvid.nn.attention import TemporalAttention

    radius = 0
    for module in unet.modules():
        if isinstance(module, TemporalAttention):
            return None
        if isinstance(module, nn.Conv3d) and module.kernel_size[0] > 1:
            radius += (module.kernel_size[0] // 2) * module.dilation[0]
    return radius


def time_windows(num_frames: int, chunk: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Chunks of ``chunk`` frames, each read with ``halo`` context frames on both sides.

    Returns ``(lo, hi, a, b)`` per chunk: frames [lo, hi) go in, frames [a, b) of the output are kept.
    """
    if chunk < 1 or halo < 0:
        raise ValueError(f"need chunk_frames >= 1 and a halo >= 0, got {chunk} and {halo}")
    return [(max(0, a - halo), min(num_frames, a + chunk + halo), a, min(num_frames, a + chunk))
            for a in range(0, num_frames, chunk)]


def chunked_denoiser(make_denoiser: Callable[[int, int], Denoiser], num_frames: int, chunk: int,
                     halo: int) -> Denoiser:
    """A denoiser over (B, C, T, H, W) that runs ``make_denoiser(lo, hi)`` on frame windows and
    stitches the kept frames. Exact when ``halo`` >= the network's :func:`temporal_radius`, since
    frames past the halo cannot reach a kept frame and the clip's own ends are zero-padded alike."""
    windows = time_windows(num_frames, chunk, halo)
    denoisers = [make_denoiser(lo, hi) for lo, hi, _, _ in windows]

    def denoise(z: Tensor, logsnr: Tensor) -> Tensor:
        parts = [d(z[:, :, lo:hi], logsnr)[:, :, a - lo:b - lo] for d, (lo, hi, a, b) in zip(denoisers, windows)]
        return torch.cat(parts, dim=2)  # (B, C, T, H, W)

    return denoise


def _clamp_between(denoise: Denoiser, low: Tensor, high: Tensor) -> Denoiser:
    """Clamp x0_hat elementwise to [low, high] (tensors shaped like it)."""
    return lambda z, logsnr: torch.minimum(torch.maximum(denoise(z, logsnr), low), high)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like)


# ---- the stages ----------------------------------------------------------------------------------


class SuperResolutionDiffusion(LatentDiffusion):
    """What SSR and TSR share: concatenated conditioning, conditioning augmentation, sampling from a video.

    Subclasses define :meth:`degrade` (training input from a clip), :meth:`make_condition` (the
    network's conditioning at the output shape) and the shape maps. Pixel space only.

    Args:
        unet: the denoiser; ``in_channels`` = 3 + the conditioning channels, ``out_channels`` = 3,
            ``num_extra_conditions`` = 1 (the augmentation logSNR). ``temporal_attention: false``
            (temporal convs kept) is the Imagen Video choice for SR stages and allows chunked sampling.
        text_encoder: optional frozen text tower (``None``: no text; then ``unet.context_dim: null``).
        augmentation: training range / distribution and sampling level of conditioning augmentation.
        same_noise: start sampling from the same noise in every frame (Make-A-Video), by default.
        chunk_frames: by default, sample in time chunks of this many frames (None: the whole clip at
            once). Each chunk is read with exactly enough neighbouring frames that the result equals
            whole-clip sampling; needs a U-Net without temporal attention.
        residual_scale: None diffuses the video itself; a number k diffuses k * (video - reference),
            the reference being the plain upsampling (:meth:`reference`) of the augmented input, so
            the model only has to add the missing detail and remove the augmentation noise (which
            stands for the previous stage's errors); it starts from the plain upsampling.
            ``clip_sample`` then still bounds the video, not the residual.
        **kwargs: :class:`LatentDiffusion` arguments (schedule, target, lr, sample_steps, sampler,
            guidance_scale, clip_sample, ...).
    """

    kind = "SR"
    fps_factor = 1  # output frame rate / input frame rate
    guidance_input = False  # True for a guidance-distilled stage: w is one more extra scalar (models.distillation)

    def __init__(
        self,
        unet: UNet3D,
        text_encoder: nn.Module | None = None,
        augmentation: ConditioningAugmentation = ConditioningAugmentation(),
        same_noise: bool = True,
        chunk_frames: int | None = None,
        residual_scale: float | None = None,
        **kwargs,
    ) -> None:
        if residual_scale is not None and not residual_scale > 0:
            raise ValueError(f"residual_scale must be > 0 or None, got {residual_scale}")
        if kwargs.get("first_stage") is not None and not isinstance(kwargs["first_stage"], IdentityFirstStage):
            raise ValueError(f"{self.kind} stages work in pixel space: leave first_stage unset")
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1 or None, got {chunk_frames}")
        self.augmentation = augmentation  # a plain attribute, set before LatentDiffusion checks shapes
        super().__init__(unet, text_encoder, **kwargs)
        self.same_noise = same_noise
        self.chunk_frames = chunk_frames
        self.residual_scale = residual_scale
        self.trained_shape: tuple[int, int, int] | None = None  # (T, H, W) of the training clips

    # ---- what subclasses define -------------------------------------------------------------
    @property
    def cond_channels(self) -> int:
        """Channels of the conditioning concatenated to the noisy video."""
        return 3

    def degrade(self, video: Tensor, frame_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Training input from a clip: (B, 3, T, H, W), (B, T) -> low (B, 3, t, h, w), (B, t)."""
        raise NotImplementedError

    def make_condition(self, low: Tensor, aug_logsnr: Tensor, generator: torch.Generator | None
                       ) -> tuple[Tensor, Tensor]:
        """Low-resolution video (B, 3, t, h, w) augmented to aug_logsnr (B,) -> the network's conditioning
        (B, Cc, T, H, W) and the plain upsampling of the *augmented* video (B, 3, T, H, W), which
        residual mode adds to (so the model learns to remove what the augmentation stands for)."""
        raise NotImplementedError

    def reference(self, low: Tensor) -> Tensor:
        """The plain upsampling of a low-resolution video (B, 3, t, h, w) -> (B, 3, T, H, W)."""
        raise NotImplementedError

    def output_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(t, h, w) of an input video -> (T, H, W) of the output."""
        raise NotImplementedError

    def expected_input(self) -> tuple[int | None, int, int] | None:
        """(frames or None for any, h, w) the stage was trained to take, from the training clips; None if unknown."""
        raise NotImplementedError

    # ---- wiring -----------------------------------------------------------------------------
    def _check_shapes(self) -> None:
        problems = []
        want = 3 + self.cond_channels
        if self.unet.in_channels != want:
            problems.append(f"unet.in_channels={self.unet.in_channels} but a {self.kind} stage feeds 3 video + "
                            f"{self.cond_channels} conditioning channels = {want}")
        if self.unet.out_channels != 3:
            problems.append(f"unet.out_channels={self.unet.out_channels} but the stage predicts RGB (3)")
        extras = 2 if self.guidance_input else 1
        if self.unet.num_extra_conditions != extras:
            problems.append(f"unet.num_extra_conditions={self.unet.num_extra_conditions} but the stage passes {extras} "
                            f"(the conditioning-augmentation logSNR{', the guidance weight' if extras == 2 else ''})")
        if (self.text_encoder is None) != (self.unet.context_dim is None):
            problems.append("give both text_encoder and unet.context_dim, or neither (a stage without text)")
        elif self.text_encoder is not None and self.unet.context_dim != self.text_encoder.output_dim:
            problems.append(f"unet.context_dim={self.unet.context_dim} but the text encoder gives "
                            f"{self.text_encoder.output_dim}-d tokens")
        if problems:
            raise ValueError(f"{self.kind} model config does not chain:\n  " + "\n  ".join(problems))

    def encode_text(self, captions: list[str]) -> tuple[Tensor | None, Tensor | None]:
        """Captions -> tokens (B, L, D) and mask (B, L); (None, None) for a stage without text."""
        if self.text_encoder is None:
            return None, None
        return super().encode_text(captions)

    def forward(self, z: Tensor, logsnr: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
                fps: Tensor | None = None, frame_mask: Tensor | None = None, cond: Tensor | None = None,
                aug_logsnr: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        """Network output (B, 3, T, H, W) for the noisy video z (B, 3, T, H, W), its logsnr (B,), the
        conditioning ``cond`` (B, Cc, T, H, W) and its augmentation level ``aug_logsnr`` (B,); a
        guidance-distilled stage (``guidance_input``) also takes its guidance weight ``guidance`` (B,)."""
        if cond is None or aug_logsnr is None:
            raise ValueError(f"{self.kind} stages need the low-resolution conditioning (cond) and its level (aug_logsnr)")
        if (guidance is not None) != self.guidance_input:
            what = "needs a" if self.guidance_input else "takes no"
            raise ValueError(f"{type(self).__name__} {what} guidance weight (guidance=)")
        if cond.shape[0] != z.shape[0] or cond.shape[2:] != z.shape[2:]:
            raise ValueError(f"conditioning {tuple(cond.shape)} does not match the video {tuple(z.shape)} "
                             f"(B, C, T, H, W)")
        if self.unet.fps_embed is None:
            fps = None  # a stage built without fps conditioning ignores the clip's frame rate
        x = torch.cat([z, cond.to(z)], dim=1)  # (B, 3 + Cc, T, H, W)
        extra = aug_logsnr.to(z)[:, None]  # (B, 1)
        if guidance is not None:
            extra = torch.cat([extra, guidance.to(z)[:, None]], dim=1)  # (B, 2)
        return self.unet(x, logsnr, context=context, context_mask=context_mask, fps=fps, frame_mask=frame_mask,
                         extra=extra)

    def conditioning(self, batch: dict, z0: Tensor, mask: Tensor, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training pair: the clip z0 (B, 3, T, H, W) degraded, its conditioning augmented to a
        random level; the target is z0, or its scaled residual over :meth:`reference`."""
        if self.training:
            self.trained_shape = tuple(int(n) for n in z0.shape[2:])
        low, _ = self.degrade(z0, mask)
        s = self.augmentation.training_levels(z0.shape[0], self.schedule.logsnr, generator, z0.device)
        aug_logsnr = self.schedule.logsnr(s.to(z0.device))
        cond, ref = self.make_condition(low, aug_logsnr, generator)
        if self.residual_scale is not None:
            z0 = (z0 - ref) * self.residual_scale
        return z0, {"cond": cond, "aug_logsnr": aug_logsnr}

    # ---- checkpoints: remember the training shape for the cascade's chain check -------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.trained_shape is not None:
            checkpoint["sr_trained_shape"] = list(self.trained_shape)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        shape = checkpoint.get("sr_trained_shape")
        self.trained_shape = tuple(int(n) for n in shape) if shape else None

    # ---- sampling ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        lowres: Tensor,
        captions: list[str] | None = None,
        fps: float = 8.0,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        aug_level: float | None = None,
        same_noise: bool | None = None,
        chunk_frames: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Super-resolve ``lowres`` (B, 3, t, h, w) in [-1, 1] -> (B, 3, T, H, W) in [-1, 1].

        Args:
            lowres: the previous stage's video.
            captions: B captions (needed when the stage has a text tower; ignored otherwise).
            fps: frame rate of the *output* video (what the network is conditioned on).
            steps, sampler, guidance_scale, eta: sampler settings (None: the model's defaults;
                guidance is 1 for a stage without text).
            aug_level: conditioning-augmentation level s in [0, 1] (None: ``augmentation.sample_level``).
            same_noise: identical starting noise in every frame (None: the model's ``same_noise``).
            chunk_frames: sample in time chunks of this many frames (None: the model's ``chunk_frames``).
            generator: random source (on this module's device) for the noise and the augmentation.
        """
        if not isinstance(lowres, Tensor) or lowres.ndim != 5 or lowres.shape[1] != 3:
            got = tuple(lowres.shape) if isinstance(lowres, Tensor) else type(lowres).__name__
            raise ValueError(f"{self.kind} stages sample from a video: sample(lowres (B, 3, t, h, w), captions), "
                             f"got {got}")
        b = lowres.shape[0]
        captions = [""] * b if captions is None else list(captions)
        if len(captions) != b:
            raise ValueError(f"{len(captions)} captions for {b} videos")
        level = self.augmentation.sample_level if aug_level is None else float(aug_level)
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"aug_level must be in [0, 1], got {level}")
        steps = steps or self.hparams.sample_steps
        sampler = sampler or self.hparams.sampler
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        if self.text_encoder is None:
            scale = 1.0  # nothing to guide with
        same_noise = self.same_noise if same_noise is None else same_noise
        chunk = self.chunk_frames if chunk_frames is None else chunk_frames

        lowres = lowres.to(self.device, torch.float32)
        aug_logsnr = self.schedule.logsnr(torch.full((b,), level, device=self.device))
        cond, ref = self.make_condition(lowres, aug_logsnr, generator)  # (B, Cc, T, H, W), (B, 3, T, H, W)
        t, h, w = cond.shape[2:]
        k = self.residual_scale
        clip = k is None  # a residual is clipped below, so that the video stays in range

        def guided(lo: int, hi: int) -> Denoiser:
            return self.guided_denoiser(captions, fps, scale, clip=clip, cond=cond[:, :, lo:hi], aug_logsnr=aug_logsnr)

        if chunk and chunk < t:
            halo = temporal_radius(self.unet)
            if halo is None:
                raise ValueError(f"chunked sampling needs a U-Net without temporal attention (this {self.kind} "
                                 f"stage has it); set chunk_frames to null")
            denoise = chunked_denoiser(guided, t, chunk, halo)
        else:
            denoise = guided(0, t)
        if k is not None and self.hparams.clip_sample is not None:
            c = self.hparams.clip_sample
            denoise = _clamp_between(denoise, (-c - ref) * k, (c - ref) * k)
        if same_noise:
            z = _randn((b, 3, 1, h, w), generator, cond).expand(-1, -1, t, -1, -1).contiguous()  # (B, 3, T, H, W)
        else:
            z = _randn((b, 3, t, h, w), generator, cond)
        z = self.run_sampler(denoise, z, steps, sampler, eta=eta, generator=generator, progress=progress)
        video = self.first_stage.decode(z) if k is None else ref + z / k
        if not torch.isfinite(video).all():
            raise FloatingPointError(f"{self.kind} sampling produced non-finite values")
        return video.clamp(-1.0, 1.0)


class SpatialSuperResolution(SuperResolutionDiffusion):
    """SSR: a diffusion model at the high resolution conditioned on the low-resolution video
    upsampled to the target size (bilinear or bicubic) and concatenated channel-wise.

    Args:
        unet: ``in_channels: 6`` (noisy video + upsampled conditioning), ``out_channels: 3``,
            ``num_extra_conditions: 1``.
        text_encoder: optional text tower (None: no text).
        scale_factor: output size / input size (training inputs are the clips downsampled by it).
        upsample_mode: ``"bicubic"`` or ``"bilinear"``, how the input is brought to the target size.
        augmentation, same_noise, chunk_frames, residual_scale, **kwargs: see :class:`SuperResolutionDiffusion`.
    """

    kind = "SSR"

    def __init__(
        self,
        unet: UNet3D,
        text_encoder: nn.Module | None = None,
        scale_factor: int = 2,
        upsample_mode: str = "bicubic",
        augmentation: ConditioningAugmentation = ConditioningAugmentation(),
        same_noise: bool = True,
        chunk_frames: int | None = None,
        residual_scale: float | None = None,
        **kwargs,
    ) -> None:
        if scale_factor < 1:
            raise ValueError(f"scale_factor must be >= 1, got {scale_factor}")
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        self.scale_factor, self.upsample_mode = scale_factor, upsample_mode
        super().__init__(unet, text_encoder, augmentation, same_noise, chunk_frames, residual_scale, **kwargs)

    def degrade(self, video: Tensor, frame_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(B, 3, T, H, W) -> anti-aliased (B, 3, T, H/f, W/f); the frame mask is unchanged."""
        return downsample_space(video, self.scale_factor), frame_mask

    def reference(self, low: Tensor) -> Tensor:
        """(B, 3, T, h, w) -> upsampled (``upsample_mode``) to (B, 3, T, h*f, w*f)."""
        return upsample_space(low, (low.shape[-2] * self.scale_factor, low.shape[-1] * self.scale_factor),
                              self.upsample_mode)

    def make_condition(self, low: Tensor, aug_logsnr: Tensor, generator: torch.Generator | None
                       ) -> tuple[Tensor, Tensor]:
        """(B, 3, T, h, w) -> upsampled to (B, 3, T, h*f, w*f), then noised to aug_logsnr (B,); that is
        both the conditioning and the reference."""
        up = self.reference(low)
        noisy = augment(up, aug_logsnr.to(up), _randn(tuple(up.shape), generator, up), self.schedule.alpha_sigma)
        return noisy, noisy

    def output_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        t, h, w = in_shape
        return t, h * self.scale_factor, w * self.scale_factor

    def expected_input(self) -> tuple[int | None, int, int] | None:
        if self.trained_shape is None:
            return None
        _, h, w = self.trained_shape
        return None, h // self.scale_factor, w // self.scale_factor  # any frame count


class TemporalSuperResolution(SuperResolutionDiffusion):
    """TSR: a diffusion model at ``frame_factor`` times the frame rate conditioned on the
    low-frame-rate video brought to the target frame count (input frame i at position f*i) and
    concatenated channel-wise.

    Args:
        unet: ``in_channels`` 6 (``fill: repeat``) or 7 (``fill: blank``, with the mask channel),
            ``out_channels: 3``, ``num_extra_conditions: 1``.
        text_encoder: optional text tower (None: no text).
        frame_factor: output frames / input frames (training inputs keep every f-th frame).
        fill: ``"repeat"`` (each input frame repeated f times) or ``"blank"`` (zero frames in
            between plus a mask channel marking the real ones).
        augmentation, same_noise, chunk_frames, residual_scale, **kwargs: see :class:`SuperResolutionDiffusion`.
    """

    kind = "TSR"

    def __init__(
        self,
        unet: UNet3D,
        text_encoder: nn.Module | None = None,
        frame_factor: int = 2,
        fill: str = "repeat",
        augmentation: ConditioningAugmentation = ConditioningAugmentation(),
        same_noise: bool = False,
        chunk_frames: int | None = None,
        residual_scale: float | None = None,
        **kwargs,
    ) -> None:
        if frame_factor < 1:
            raise ValueError(f"frame_factor must be >= 1, got {frame_factor}")
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.frame_factor, self.fill = frame_factor, fill
        super().__init__(unet, text_encoder, augmentation, same_noise, chunk_frames, residual_scale, **kwargs)

    @property
    def fps_factor(self) -> int:  # type: ignore[override]
        return self.frame_factor

    @property
    def cond_channels(self) -> int:
        return 4 if self.fill == "blank" else 3

    def degrade(self, video: Tensor, frame_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(B, 3, T, H, W) -> every f-th frame (B, 3, T/f, H, W) and its mask."""
        return drop_frames(video, frame_mask, self.frame_factor)

    def reference(self, low: Tensor) -> Tensor:
        """(B, 3, t, H, W) -> each frame repeated: (B, 3, t*f, H, W) (whatever ``fill`` the network sees)."""
        return expand_frames(low, self.frame_factor, "repeat")

    def make_condition(self, low: Tensor, aug_logsnr: Tensor, generator: torch.Generator | None
                       ) -> tuple[Tensor, Tensor]:
        """(B, 3, t, H, W) noised to aug_logsnr (B,) at the input rate, then -> conditioning
        (B, Cc, t*f, H, W) (repeated frames share their noise, blank frames and the mask stay exact)
        and the repeated noisy frames (B, 3, t*f, H, W) as the reference."""
        noisy = augment(low, aug_logsnr.to(low), _randn(tuple(low.shape), generator, low), self.schedule.alpha_sigma)
        return expand_frames(noisy, self.frame_factor, self.fill), self.reference(noisy)

    def output_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        t, h, w = in_shape
        return t * self.frame_factor, h, w

    def expected_input(self) -> tuple[int | None, int, int] | None:
        if self.trained_shape is None:
            return None
        t, h, w = self.trained_shape
        return t // self.frame_factor, h, w
