"""Generate around given pixel frames: image-to-video, extension past the training length, interpolation.

    from latentvid.pipelines.frames import FrameOptions, image_to_video, extend_video, interpolate_video
    video = image_to_video(model, image, ["a red circle moving left"], num_frames=9)   # image (B, 3, H, W)
    longer = extend_video(model, clip, captions, num_frames=33)                      # clip (B, 3, T, H, W)
    finer = interpolate_video(model, clip, captions, factor=2)

or ``tools/sample.py --image / --extend / --interpolate``. All three are :func:`sample_with_frames`: pixel
frames (B, 3, T, H, W) and a mask (T,) of the given ones. With a causal VAE (``temporal_factor`` f),
latent frame 0 encodes pixel frame 0 alone and latent j depends on pixel frames 0 .. f j only, so a
given pixel prefix of 1 + f m frames is exactly m + 1 given latent frames (its encoding). Those go to
:meth:`LatentDiffusion.frames_denoiser`: the network's own frame input (``method="trained"``, a
frame-conditioned checkpoint: configs/i2v.yaml) or the training-free replacement / reconstruction
guidance (:mod:`latentvid.diffusion.known_frames`). Given frames that are not a whole latent prefix
(interpolation: every other pixel frame shares a latent frame with new ones) are imposed in pixel
space through the decoder: reconstruction guidance with ``decode`` (methods ``trained`` and
``guidance``), or decode -> replace -> encode of the x0 estimate (``replacement``).

Extension runs windows of the training length with overlap: each new window's given prefix is the
last ``overlap`` (1 + f m) frames generated so far, re-encoded, so that the prefix is exact under the
causal VAE (a window's last latent frames summarise f frames each, which a window's first latent
frame, one frame alone, cannot stand for). With ``stride`` s it extends every s-th frame instead (at
fps / s) and fills in by interpolation: keyframes move s times as far per frame, for motion slower than
the pace a model continues at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from latentvid.diffusion.known_frames import known_frames_denoiser
from latentvid.diffusion.samplers import Denoiser
from latentvid.models.latent_diffusion import FRAME_METHODS, LatentDiffusion


@dataclass
class FrameOptions:
    """Sampler settings for generating around given frames.

    Attributes:
        method: ``"trained"`` (the network's frame input), ``"replacement"`` or ``"guidance"``
            (reconstruction guidance); None: trained for a frame-conditioned model, else guidance.
            Given frames past the whole-latent-frame prefix (interpolation) go through the decoder:
            guided for ``"guidance"``, replaced (decode, replace, encode) for the other two.
        weight: w_r of reconstruction guidance (VDM: > 1 works best; the Gaussian tests found ~5). With
            ``"guidance"``, given pixel frames that are no whole latent prefix are guided through the
            decoder with w_r scaled by (latent elements) / (pixel elements), so w_r keeps its latent-space size.
        steps, sampler, guidance, eta: as :meth:`LatentDiffusion.sample` (None: the model's).
        fps: the frame rate the model is conditioned on.
    """

    method: str | None = None
    weight: float = 1.0
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    eta: float = 0.0
    fps: float = 8.0


def check_frames(model: LatentDiffusion, num_frames: int, what: str = "frames") -> int:
    """The latent frame count of ``num_frames`` pixel frames; ValueError naming the value if it does not
    fit the first stage (1 + f k frames for a causal VAE with temporal factor f)."""
    fs = model.first_stage
    if num_frames < 1 or (num_frames - 1) % fs.temporal_factor:
        raise ValueError(f"{what} = {num_frames} does not fit the VAE: use 1 + {fs.temporal_factor} k frames "
                         f"(e.g. {1 + fs.temporal_factor * max(1, (num_frames - 1) // fs.temporal_factor)})")
    return fs.latent_frames(num_frames)


def check_size(model: LatentDiffusion, height: int, width: int, what: str = "input") -> None:
    """ValueError naming the size when the model cannot sample (height, width)."""
    factor = model.first_stage.spatial_factor * getattr(model.unet, "downsample_factor", 1)
    if height % factor or width % factor:
        raise ValueError(f"{what} is {height}x{width}: height and width must be multiples of {factor} for this model")


def given_prefix(mask: Tensor, temporal_factor: int) -> int:
    """Length of the longest given prefix of whole latent frames: 0 or 1 + f m pixel frames (mask (T,) bool)."""
    n = int(mask.long().cumprod(0).sum())  # given frames before the first missing one
    return 0 if n == 0 else 1 + temporal_factor * ((n - 1) // temporal_factor)


def pixel_replacement(denoise: Denoiser, model: LatentDiffusion, pixels: Tensor, mask: Tensor) -> Denoiser:
    """Replacement in pixel space for a latent model: x0 -> encode(given pixels where ``mask``, else
    decode(x0)); pixels (B, 3, T, H, W), mask (T,) bool. The encoding of the mixed clip is what the
    sampler then keeps, so given pixel frames come out close to, not exactly, the given ones."""
    fs = model.first_stage
    m = mask.to(pixels.device)[None, None, :, None, None]

    def replaced(z: Tensor, logsnr: Tensor) -> Tensor:
        x0 = denoise(z, logsnr)
        return fs.encode(torch.where(m, pixels.to(x0), fs.decode(x0))).to(x0)

    return replaced


@torch.no_grad()
def sample_with_frames(model: LatentDiffusion, captions: list[str], pixels: Tensor, mask: Tensor,
                       options: FrameOptions | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Videos (B, 3, T, H, W) in [-1, 1] that keep the given frames ``pixels`` (B, 3, T, H, W) in [-1, 1]
    where ``mask`` (T,) bool is True (other frames of ``pixels`` are ignored). Given frames come out as
    decoded by the VAE (callers paste the originals where they want them)."""
    opts = options or FrameOptions()
    b, _, t, h, w = pixels.shape
    if len(captions) != b or mask.shape != (t,) or mask.dtype != torch.bool:
        raise ValueError(f"need {b} captions and a ({t},) bool frame mask, got {len(captions)} and "
                         f"{mask.dtype} {tuple(mask.shape)}")
    latent_t = check_frames(model, t)
    check_size(model, h, w)
    if latent_t % model.frame_multiple:
        raise ValueError(f"{t} frames are {latent_t} latent frames, and this model takes multiples of "
                         f"{model.frame_multiple} (CogVideoX 1.5): the frame tools do not pad them yet")
    method = opts.method or ("trained" if model.frame_conditioned else "guidance")
    if method not in FRAME_METHODS:
        raise ValueError(f"frames method must be one of {FRAME_METHODS}, got {method!r}")
    fs, device = model.first_stage, model.device
    pixels, mask = pixels.to(device), mask.to(device)
    scale = model.hparams.guidance_scale if opts.guidance is None else opts.guidance
    prefix = given_prefix(mask.cpu(), fs.temporal_factor)
    shape = (b, fs.latent_channels, latent_t, h // fs.spatial_factor, w // fs.spatial_factor)
    known = known_mask = None
    if prefix:  # exact latents of the given prefix (causal VAE)
        head = fs.encode(pixels[:, :, :prefix])  # (B, C, m + 1, h, w)
        known = torch.zeros(shape, device=device, dtype=head.dtype)
        known[:, :, : head.shape[2]] = head
        known_mask = torch.zeros(b, latent_t, dtype=torch.bool, device=device)
        known_mask[:, : head.shape[2]] = True
    rest = mask.clone()
    rest[:prefix] = False  # given frames the latent prefix does not cover
    pixel_guided = bool(rest.any()) and method == "guidance"
    if known is not None and not pixel_guided:
        denoise = model.frames_denoiser(captions, opts.fps, scale, known, known_mask, method, opts.weight)
    else:  # (a guidance wrapper returns detached estimates: it cannot sit inside another one)
        denoise = model.guided_denoiser(captions, opts.fps, scale)
    if bool(rest.any()):
        if method in ("replacement", "trained"):  # trained: its input takes whole latent frames only
            denoise = pixel_replacement(denoise, model, pixels, rest)
        else:  # reconstruction guidance through the decoder, on every given pixel frame
            # the error sums over pixels, (3 T H W) / (C t h w) times more terms than over latents
            # (~36 for the shapes VAE): scaling w_r by the inverse keeps its latent-space meaning (on a
            # random tiny model, pixel-space w_r of 0.03-0.2 pulled the frames in, 2-5 overshot)
            per_latent = math.prod(shape[1:]) / math.prod(pixels.shape[1:])
            denoise = known_frames_denoiser(denoise, pixels, mask[None].expand(b, -1), mode="reconstruction",
                                            weight=opts.weight * per_latent, alpha_sigma=model.schedule.alpha_sigma,
                                            decode=fs.decode)
        if known is not None and (method != "trained" or model.pins_known_frames):
            # keep the exact prefix latents through the pixel-space step
            denoise = known_frames_denoiser(denoise, known, known_mask, mode="replacement")
    z = torch.randn(shape, generator=generator, device=device)
    z = model.run_sampler(denoise, z, opts.steps or model.hparams.sample_steps, opts.sampler or model.hparams.sampler,
                          eta=opts.eta, generator=generator)
    video = fs.decode(z)
    if not bool(torch.isfinite(video).all()):
        raise FloatingPointError("sampling with given frames produced non-finite values (lower the guidance weight)")
    return video.clamp(-1.0, 1.0)


def image_to_video(model: LatentDiffusion, images: Tensor, captions: list[str], num_frames: int,
                   options: FrameOptions | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Animate ``images`` (B, 3, H, W) in [-1, 1]: (B, 3, num_frames, H, W), frame 0 the image as the VAE
    reproduces it (with a causal VAE the image is exactly latent frame 0)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    check_frames(model, num_frames, "--frames")
    b, _, h, w = images.shape
    pixels = torch.zeros(b, 3, num_frames, h, w, dtype=images.dtype, device=images.device)
    pixels[:, :, 0] = images
    mask = torch.zeros(num_frames, dtype=torch.bool)
    mask[0] = True
    return sample_with_frames(model, captions, pixels, mask, options, generator)


def default_overlap(model: LatentDiffusion, window: int) -> int:
    """About half a window, in whole latent frames: 1 + f ((t - 1) // 2) pixel frames of a t-latent window."""
    f = model.first_stage.temporal_factor
    return 1 + f * ((model.first_stage.latent_frames(window) - 1) // 2)


def extend_video(model: LatentDiffusion, clips: Tensor, captions: list[str], num_frames: int, window: int,
                 overlap: int | None = None, options: FrameOptions | None = None,
                 generator: torch.Generator | None = None, stride: int = 1) -> Tensor:
    """Continue ``clips`` (B, 3, T0, H, W) to (B, 3, num_frames, H, W): windows of ``window`` frames whose
    first ``overlap`` frames (1 + f m; default :func:`default_overlap`) are the last ones so far. The input
    frames are kept as given; each window adds ``window - overlap`` frames (the last one is cut to fit).

    ``stride`` s > 1 extends keyframes instead: every s-th frame of the clip (ending at its last frame),
    conditioned on ``options.fps / s``, is extended window by window past ``num_frames``, and
    :func:`interpolate_video` (factor s) fills in the frames from the clip's last one on, about a window's
    length at a time. For motion slower than the model's own pace, which it continues at that pace
    (README: on slow clips a shapes model moved ~3.5x too fast frame by frame, 1.3x at stride 4): the
    keyframes move s times as far per frame. The clip needs ``overlap`` keyframes, i.e. 1 + s (overlap - 1)
    frames or more."""
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (B, 3, T, H, W), got {tuple(clips.shape)}")
    if stride < 1:
        raise ValueError(f"stride = {stride} must be at least 1")
    t0 = clips.shape[2]
    check_frames(model, window, "window")
    overlap = default_overlap(model, window) if overlap is None else overlap
    check_frames(model, overlap, "overlap")
    if not 1 <= overlap < window:
        raise ValueError(f"overlap = {overlap} must be at least 1 and below the window of {window} frames")
    if num_frames <= t0:
        raise ValueError(f"--frames = {num_frames} must exceed the clip's {t0} frames to extend it")
    if stride > 1:
        return _extend_keyframes(model, clips, captions, num_frames, window, overlap, options, generator, stride)
    if t0 < overlap:
        raise ValueError(f"the clip has {t0} frames, fewer than the overlap of {overlap}")
    mask = torch.zeros(window, dtype=torch.bool)
    mask[:overlap] = True
    video = clips.to(model.device)
    while video.shape[2] < num_frames:
        pixels = torch.zeros(*video.shape[:2], window, *video.shape[3:], dtype=video.dtype, device=video.device)
        pixels[:, :, :overlap] = video[:, :, -overlap:]
        new = sample_with_frames(model, captions, pixels, mask, options, generator)
        video = torch.cat([video, new[:, :, overlap:]], dim=2)
    return video[:, :, :num_frames]


def _extend_keyframes(model: LatentDiffusion, clips: Tensor, captions: list[str], num_frames: int, window: int,
                      overlap: int, options: FrameOptions | None, generator: torch.Generator | None,
                      stride: int) -> Tensor:
    """:func:`extend_video` with ``stride`` > 1 (its docstring), after its checks of the arguments."""
    opts = options or FrameOptions()
    t0 = clips.shape[2]
    keys = clips[:, :, (t0 - 1) % stride:: stride]  # (B, 3, k0, H, W), the last one the clip's last frame
    k0 = keys.shape[2]
    if k0 < overlap:
        raise ValueError(f"the clip's {t0} frames give {k0} keyframes at stride {stride}, fewer than the overlap "
                         f"of {overlap}: give at least {1 + stride * (overlap - 1)} frames, or a smaller stride")
    new_keys = -(-(num_frames - t0) // stride)  # keyframes past the clip's last frame
    f = model.first_stage.temporal_factor
    while (new_keys * stride) % f:  # the filled stretch, new_keys * stride + 1 frames, must fit the VAE
        new_keys += 1
    keys = extend_video(model, keys, captions, k0 + new_keys, window, overlap,
                        replace(opts, fps=opts.fps / stride), generator)
    tail = keys[:, :, k0 - 1:]  # (B, 3, new_keys + 1, H, W): from the clip's last frame on
    # fill in a window's worth at a time: per keyframes make (per - 1) stride + 1 frames, which must fit the VAE
    per = max(2, (window - 1) // stride + 1)
    while per > 2 and ((per - 1) * stride) % f:
        per -= 1
    while ((per - 1) * stride) % f:
        per += 1
    n, done, pieces = tail.shape[2], 0, []
    while done < n - 1:
        lo = min(done, max(0, n - per))  # the last piece overlaps the one before rather than run short
        piece = interpolate_video(model, tail[:, :, lo: lo + per], captions, stride, opts, generator)
        pieces.append(piece[:, :, (done - lo) * stride + 1:])  # the frames after keyframe `done`
        done = min(lo + per, n) - 1
    return torch.cat([clips.to(pieces[0]), *pieces], dim=2)[:, :, :num_frames]


def interpolate_video(model: LatentDiffusion, clips: Tensor, captions: list[str], factor: int,
                      options: FrameOptions | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Insert ``factor - 1`` frames between neighbours of ``clips`` (B, 3, T0, H, W): (B, 3, (T0 - 1) factor
    + 1, H, W), the given frames at every ``factor``-th position (as given), new ones between."""
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (B, 3, T, H, W), got {tuple(clips.shape)}")
    if factor < 2:
        raise ValueError(f"--factor = {factor} must be at least 2")
    t0 = clips.shape[2]
    if t0 < 2:
        raise ValueError(f"the clip has {t0} frame; interpolation needs at least 2")
    t = (t0 - 1) * factor + 1
    check_frames(model, t, f"the interpolated length ({t0} - 1) x {factor} + 1")
    pixels = torch.zeros(*clips.shape[:2], t, *clips.shape[3:], dtype=clips.dtype, device=model.device)
    pixels[:, :, ::factor] = clips.to(model.device)
    mask = torch.zeros(t, dtype=torch.bool)
    mask[::factor] = True
    video = sample_with_frames(model, captions, pixels, mask, options, generator)
    return torch.where(mask.to(video.device)[None, None, :, None, None], pixels.to(video), video)


def read_frames_input(path: str, kind: str, height: int, width: int) -> Tensor:
    """The given frames of a tool run, in [-1, 1]: ``kind="image"`` -> (1, 3, H, W), ``"video"`` -> (1, 3, T, H, W).

    The file must exist and be (height, width), the size the model samples; FileNotFoundError /
    ValueError otherwise, with one line naming the file and the value.
    """
    import os

    from latentvid.data.video import from_uint8, read_frames, read_image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    try:
        frames = read_image(path)[None] if kind == "image" else read_frames(path)  # (T, H, W, 3) uint8
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"cannot read {kind} {path}: {str(err).splitlines()[0][:200]}") from err
    h, w = frames.shape[1:3]
    if (h, w) != (height, width):
        raise ValueError(f"{kind} {path} is {h}x{w} (height x width) but the model samples {height}x{width}: "
                         f"resize it, or pass --height / --width")
    video = from_uint8(frames)  # (3, T, H, W)
    return video[:, 0][None] if kind == "image" else video[None]
