"""Conditioning on known frames without training: replacement and reconstruction guidance (VDM, sec. 3.1).

Given the clean values x^a of some frames (the start of a clip to extend, every other frame to fill in),
sample the others, x^b, from p(x^b | x^a) with any model of the joint p(x^a, x^b), one that was never
trained to condition on frames. Ho, Salimans et al. (2022, "Video Diffusion Models") give two ways,
and both are denoiser wrappers here, like classifier-free guidance: :func:`known_frames_denoiser` takes
``denoise(z, logsnr) -> x0_hat`` and returns another, so it wraps a CFG denoiser and every sampler of
``SAMPLERS`` runs it unchanged.

- replacement: the model sees z^a_t, a forward-process sample alpha_t x^a + sigma_t eps of the known
  frames, beside the sampler's z^b_t. Its x0_hat^b = E[x^b | z_t] only knows x^a through that noisy
  copy, so the unknown frames follow the known ones loosely (biased towards the unconditional mean
  at high noise, where z^a_t says little).
- reconstruction guidance: the exact conditional estimate is (Tweedie's formula on z^b, whose noise is
  independent of x^a)

      E[x^b | z_t, x^a] = E[x^b | z_t] + sigma_t^2 / alpha_t grad_{z^b} log q(x^a | z_t),

  and with q(x^a | z_t) ~ N(x0_hat^a, sigma_t^2 / alpha_t^2 I) this becomes VDM's adjusted estimate

      x~^b = x0_hat^b - (w_r alpha_t / 2) grad_{z^b} || x^a - x0_hat^a(z_t) ||^2,

  w_r = 1 being the approximation itself; VDM find w_r > 1 best. The Gaussian approximation is right
  at low noise but far too wide at high noise (the true spread of x^a given z_t is the data's, not
  sigma_t^2 / alpha_t^2), so w_r > 1 makes up for too weak a pull early on.

On jointly Gaussian frames, where E[x^b | x^a] is exact (tests/diffusion/test_known_frames.py: AR(1)
correlation 0.9, a clip extended from two frames 1.5 and 2 standard deviations out, 50 steps),
replacement misses the conditional mean by 1.7-2.1 conditional standard deviations (ancestral 1.2-1.4)
and spreads 1.2-1.65x too wide; reconstruction guidance at w_r = 1 still misses by 1.3-1.6 (ancestral
0.8), at its best w_r (about 5 for DDIM, DPM-Solver++ and Heun, 3.5 for ancestral) by at most 0.15,
with a spread 0.87-0.94x the conditional's; VP and rectified flow alike. The best w_r moves with the
data and with how far out the known frames lie (4-8 over the correlations and masks tried): for a
trained model it is a knob to tune.

Both formulas use alpha_t and sigma_t only, so they hold for any process (variance preserving or
rectified flow) given its ``alpha_sigma``; the noise currency stays logSNR.

Both wrappers return x^a itself on the known frames. Every sampler of ``SAMPLERS`` is exact when x0_hat
does not change (DDIM, DPM-Solver++ and Heun keep eps_hat; the ancestral step samples q(z_s | z_t, x0)),
so on those frames the sampler's own z_t stays alpha_t x^a + sigma_t eps along the whole run, eps being
the starting noise (or, for stochastic samplers, the noise they draw on the way). That is VDM's
"replace z^a_t by a noised copy of x^a" done by the sampler: the wrapper needs no noise source and stays
a deterministic function of (z, logsnr), which Heun's two evaluations per step and DPM-Solver's history
both rely on; and the sample's known frames come out exactly x^a. Start from pure noise at the grid's
first logSNR as usual (or from a z whose known frames are x^a diffused to that level).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from latentvid.diffusion.samplers import Denoiser
from latentvid.diffusion.schedule import AlphaSigma
from latentvid.diffusion.schedule import alpha_sigma as vp_alpha_sigma

KNOWN_FRAME_MODES: tuple[str, ...] = ("reconstruction", "replacement")
"""The methods of :func:`known_frames_denoiser`: VDM's reconstruction guidance (default) and replacement."""


def frames_mask(mask: Tensor, ndim: int = 5) -> Tensor:
    """A known-frames mask (B, T) bool (True = given) -> (B, 1, T, 1, 1), against (B, C, T, H, W).

    A mask that already has ``ndim`` dimensions (e.g. (B, 1, T, 1, 1), or per channel / pixel) passes as is.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"the known-frames mask must be bool (True = given frame), got {mask.dtype}")
    if mask.ndim == ndim:
        return mask
    if mask.ndim != 2 or ndim != 5:
        raise ValueError(f"the known-frames mask must be (B, T) or {ndim}-D, got shape {tuple(mask.shape)}")
    return mask[:, None, :, None, None]


def reconstruction_error(x0: Tensor, known: Tensor, mask: Tensor) -> Tensor:
    """|| x^a - x0_hat^a ||^2 per sample, (B,): x0, known (B, ...) and mask broadcastable to them.

    Frames outside the mask contribute neither value nor gradient, whatever ``known`` holds there
    (where() before squaring, so a NaN placeholder cannot leak through 0 * NaN).
    """
    diff = torch.where(mask, known - x0, torch.zeros_like(x0))
    return diff.pow(2).flatten(1).sum(1)


def reconstruction_guided(x0: Tensor, grad: Tensor, alpha: Tensor, weight: float) -> Tensor:
    """VDM's adjusted estimate x0_hat - (w_r alpha_t / 2) grad; x0, grad (B, ...), alpha (B,) -> (B, ...).

    ``grad`` is d || x^a - x0_hat^a ||^2 / d z_t of each sample.
    """
    return x0 - (0.5 * weight * alpha).reshape(-1, *([1] * (x0.ndim - 1))) * grad


def known_frames_denoiser(
    denoise: Denoiser,
    known: Tensor,
    mask: Tensor,
    mode: str = "reconstruction",
    weight: float = 1.0,
    alpha_sigma: AlphaSigma = vp_alpha_sigma,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> Denoiser:
    """A denoiser that conditions ``denoise`` on known frames (module docstring), for any sampler.

    Args:
        denoise: ``denoise(z, logsnr) -> x0_hat``, z (B, C, T, H, W), logsnr (B,); a CFG denoiser too.
            Reconstruction guidance differentiates it with respect to z (under ``torch.enable_grad``,
            so samplers keep their ``no_grad``; ``torch.inference_mode`` cannot be lifted that way and
            is refused), which costs a backward pass per call; samples must not interact within a
            batch (each sample's gradient is taken from the batch's summed error).
        known: (B or 1, C, T, H, W) the clean values of the given frames, in the model's space (pixels
            for a pixel model, scaled latents for a latent one) or, with ``decode``, in decode's output
            space. Other frames are ignored (zeros or NaN are fine).
        mask: (B or 1, T) bool, True where the frame is given; or any bool tensor broadcastable
            against ``known`` (e.g. (B, 1, T, 1, 1)).
        mode: ``"reconstruction"`` (VDM's reconstruction guidance) or ``"replacement"``.
        weight: w_r of reconstruction guidance (1: the plain Gaussian approximation; VDM find
            w_r > 1 best, module docstring; 0 without ``decode``: replacement, no gradient taken).
            Unused by replacement.
        alpha_sigma: the model's process, logSNR -> (alpha, sigma) (the schedule's ``alpha_sigma``;
            VP by default), for the guidance's alpha_t.
        decode: reconstruction only: a differentiable map from x0_hat to the space ``known`` lives in,
            e.g. a VAE decoder so that a latent model is guided by pixel frames that do not align
            with whole latent frames. The error is then || x^a - decode(x0_hat)^a ||^2 and the
            gradient adjusts every latent frame (no frame of z is known, so none is returned as
            given); w_r then also carries decode's scale (the error grows as decode's gain squared).
            Guiding the frames that are observed is stiff: at low noise their estimate moves by about
            w_r times its own error, so large w_r diverges (Gaussian frames, 50 steps, identity
            decode: the given frames are missed by 0.9 with Heun at w_r = 8 and by 30 at 12; by 0.4
            and 1.1 with DDIM and DPM-Solver++ at 20).

    Returns:
        ``denoise(z, logsnr) -> x0`` (B, C, T, H, W), equal to ``known`` on the known frames (without
        ``decode``) and a deterministic function of (z, logsnr).
    """
    if mode not in KNOWN_FRAME_MODES:
        raise ValueError(f"mode must be one of {KNOWN_FRAME_MODES}, got {mode!r}")
    if decode is not None and mode == "replacement":
        raise ValueError("replacement needs the known frames in the model's own space; "
                         "guide through decode with mode='reconstruction'")
    if known.ndim != 5:
        raise ValueError(f"known must be (B, C, T, H, W), got shape {tuple(known.shape)}")
    mask = frames_mask(mask)

    def given(z: Tensor) -> tuple[Tensor, Tensor]:
        """known (in z's dtype) and the mask, on z's device."""
        return known.to(device=z.device, dtype=z.dtype), mask.to(z.device)

    if mode == "replacement" or (weight == 0 and decode is None):

        def replaced(z: Tensor, logsnr: Tensor) -> Tensor:
            x_a, m = given(z)
            return torch.where(m, x_a, denoise(z, logsnr))

        return replaced

    def guided(z: Tensor, logsnr: Tensor) -> Tensor:
        if torch.is_inference_mode_enabled():
            # enable_grad cannot undo inference mode, and the model's own inputs (text context) would
            # be inference tensors that autograd refuses to save: fail here, saying what to do
            raise RuntimeError("reconstruction guidance differentiates the model, which torch.inference_mode "
                               "forbids: sample under torch.no_grad (Lightning: Trainer(inference_mode=False))")
        x_a, m = given(z)
        with torch.enable_grad():
            z_grad = z.detach().requires_grad_(True)
            x0 = denoise(z_grad, logsnr)
            observed = x0 if decode is None else decode(x0)
            (grad,) = torch.autograd.grad(reconstruction_error(observed, x_a, m).sum(), z_grad)
        alpha = alpha_sigma(logsnr.double())[0].to(z.dtype)
        x0 = reconstruction_guided(x0.detach(), grad, alpha, weight)
        return x0 if decode is not None else torch.where(m, x_a, x0)

    return guided
