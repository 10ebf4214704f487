"""Progressive distillation (Salimans & Ho, 2022, Algorithm 2) as pure functions.

A student that samples in N / 2 DDIM steps learns, step by step, where a teacher's N-step DDIM
sampler goes. For a student step t -> s on the N / 2-step grid, the teacher takes the two steps
t -> m -> s of its own grid; the student's target is the x0 with which ONE DDIM step from the same
z_t lands exactly where the teacher's two steps landed (:func:`ddim_x0`). Everything is written in
(alpha, sigma) of any process, so variance-preserving schedules and rectified flow share it; the
logSNR grid is the samplers' own (a schedule's ``sampling_logsnrs``), which nests under halving.

The deterministic DDIM step here is :func:`latentvid.diffusion.samplers.sample_ddim`'s update with
eta = 0, per sample; ``tests/models/test_distillation.py`` holds the two equal.
"""

from __future__ import annotations

from torch import Tensor

from latentvid.diffusion.parameterization import Target, _b, eps_from_x0, snr_loss_weight, training_target
from latentvid.diffusion.samplers import Denoiser
from latentvid.diffusion.schedule import AlphaSigma


def ddim_step(x0: Tensor, z_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """One deterministic DDIM step t -> s: z_s = alpha_s x0 + sigma_s (z_t - alpha_t x0) / sigma_t, (B, ...).

    x0, z_t (B, ...); the coefficients (B,), best in float64 (they are cast to z_t's dtype here)."""
    c = (sigma_s / sigma_t).to(z_t.dtype)  # (B,)
    return _b(c, z_t) * z_t + _b((alpha_s - (sigma_s / sigma_t) * alpha_t).to(z_t.dtype), z_t) * x0


def ddim_x0(z_t: Tensor, z_s: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor) -> Tensor:
    """The x0 (B, ...) with which one :func:`ddim_step` from z_t lands on z_s (Salimans & Ho, eq. 8 in any process).

    z_s = (sigma_s / sigma_t) z_t + (alpha_s - alpha_t sigma_s / sigma_t) x0 is solved for x0; the
    divisor is alpha_s (1 - exp((logSNR_t - logSNR_s) / 2)), positive for every step towards the data.
    At sigma_s = 0 (the step to logSNR = +inf) the target is z_s / alpha_s itself."""
    ratio = sigma_s / sigma_t  # (B,), float64 when the caller gives float64
    divisor = alpha_s - ratio * alpha_t
    return (z_s - _b(ratio.to(z_t.dtype), z_t) * z_t) / _b(divisor.to(z_t.dtype), z_t)


def teacher_two_steps(teacher: Denoiser, z_t: Tensor, logsnr_t: Tensor, logsnr_m: Tensor, logsnr_s: Tensor,
                      alpha_sigma: AlphaSigma) -> Tensor:
    """z_s (B, ...) after the teacher's two DDIM steps t -> m -> s from z_t (B, ...); logSNRs (B,) per sample.

    ``teacher(z, logsnr (B,)) -> x0_hat`` is a guided or w-conditioned denoiser (no gradients needed)."""
    a_t, s_t = alpha_sigma(logsnr_t.double())
    a_m, s_m = alpha_sigma(logsnr_m.double())
    a_s, s_s = alpha_sigma(logsnr_s.double())
    z_m = ddim_step(teacher(z_t, logsnr_t.to(z_t.dtype)), z_t, a_t, s_t, a_m, s_m)
    return ddim_step(teacher(z_m, logsnr_m.to(z_t.dtype)), z_m, a_m, s_m, a_s, s_s)


def distillation_target(teacher: Denoiser, z_t: Tensor, logsnr_t: Tensor, logsnr_m: Tensor, logsnr_s: Tensor,
                        alpha_sigma: AlphaSigma) -> Tensor:
    """The student's x0 target (B, ...) at z_t: one student DDIM step t -> s with it equals the
    teacher's two steps t -> m -> s (:func:`teacher_two_steps`, :func:`ddim_x0`)."""
    z_s = teacher_two_steps(teacher, z_t, logsnr_t, logsnr_m, logsnr_s, alpha_sigma)
    a_t, s_t = alpha_sigma(logsnr_t.double())
    a_s, s_s = alpha_sigma(logsnr_s.double())
    return ddim_x0(z_t, z_s, a_t, s_t, a_s, s_s)


def grid_steps(logsnrs: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logSNR_t, logSNR_m, logSNR_s), each (B,), of student step ``index`` (B,) in [0, N / 2) on the
    teacher's grid ``logsnrs`` (N + 1,): the student steps over teacher points 2i -> 2i + 1 -> 2i + 2."""
    if (len(logsnrs) - 1) % 2:
        raise ValueError(f"the teacher's grid must have an even number of steps, got {len(logsnrs) - 1}")
    return logsnrs[2 * index], logsnrs[2 * index + 1], logsnrs[2 * index + 2]


def student_regression(x0_target: Tensor, z_t: Tensor, alpha_t: Tensor, sigma_t: Tensor, logsnr_t: Tensor,
                       target: Target) -> tuple[Tensor, Tensor]:
    """The student's regression target in its own parameterisation (B, ...) and per-sample weight (B,).

    The x0 target becomes the network's kind of output through the noise it implies,
    eps = (z_t - alpha_t x0) / sigma_t, and the weight is the truncated-SNR weight max(SNR, 1) in x0
    space (Salimans & Ho, sec. 4) expressed for that output (for v: max(SNR, 1) / (SNR + 1) in VP), so
    the loss is the same function of the student's x0 error whatever the network predicts."""
    eps = eps_from_x0(z_t, x0_target, alpha_t, sigma_t)
    return (training_target(x0_target, eps, alpha_t, sigma_t, target),
            snr_loss_weight(logsnr_t, target, None, sigma=sigma_t, floor=1.0))
