"""Known-frame conditioning against the exact Gaussian conditional.

The frames of a clip are jointly Gaussian, x ~ N(mu, Sigma) with an AR(1) correlation across time
(channels and pixels independent), so the exact denoiser E[x0 | z_t] is linear and closed form, and
so are the targets E[x^b | x^a] and Cov[x^b | x^a] (numpy below). Sampling with the exact joint
denoiser wrapped by known_frames_denoiser must then sample the conditional; it does so only
approximately (VDM's Gaussian approximation of q(x^a | z_t)), and these tests pin down how well.
"""

import math

import numpy as np
import pytest
import torch

from latentvid.diffusion.guidance import classifier_free_guidance
from latentvid.diffusion.known_frames import frames_mask, known_frames_denoiser
from latentvid.diffusion.samplers import SAMPLERS
from latentvid.diffusion.schedule import CosineSchedule, RectifiedFlowSchedule

T, RHO = 4, 0.9
COV = RHO ** np.abs(np.subtract.outer(np.arange(T), np.arange(T)))  # (T, T) unit variance, AR(1)
KNOWN = [0, 1]  # extend a clip from its first two frames
X_A = np.array([1.5, 2.0])  # their values: far enough from the mean that a bias shows
SCHEDULES = {"vp": CosineSchedule(), "rf": RectifiedFlowSchedule()}
# the best w_r on this data (measured, 50 steps): about 5 for the deterministic samplers, whose
# conditional-mean error changes sign between 5 and 6, and about 3.5 for the ancestral one
BEST_WEIGHT = {"ddim": 5.0, "dpmpp_2m": 5.0, "heun": 5.0, "ancestral": 3.5}


def frames_denoiser(mu: np.ndarray, cov: np.ndarray, process):
    """Exact E[x0 | z] for x0 (B, C, T, H, W) with frames ~ N(mu (T,), cov (T, T)) at every (c, h, w):
    mu + G (z - alpha mu) along T, G = alpha cov (alpha^2 cov + sigma^2 I)^-1; differentiable in z."""
    mu_t, cov_t = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)

    def denoise(z, logsnr):
        levels, which = torch.unique(logsnr.double(), return_inverse=True)  # a grid step: one level
        a, s = process(levels)
        gains = a[:, None, None] * cov_t @ torch.linalg.inv(
            a[:, None, None] ** 2 * cov_t + s[:, None, None] ** 2 * torch.eye(len(mu_t), dtype=torch.float64))
        m = mu_t[:, None, None]  # (T, 1, 1)
        return m + torch.einsum("bts,bcshw->bcthw", gains[which], z - a[which].reshape(-1, 1, 1, 1, 1) * m)

    return denoise


def conditional(mu: np.ndarray, cov: np.ndarray, known: list[int], x_a: np.ndarray):
    """(unknown frame indices, E[x^b | x^a], Cov[x^b | x^a]) of N(mu, cov)."""
    b = [i for i in range(len(mu)) if i not in known]
    k = cov[np.ix_(b, known)] @ np.linalg.inv(cov[np.ix_(known, known)])
    return b, mu[b] + k @ (x_a - mu[known]), cov[np.ix_(b, b)] - k @ cov[np.ix_(known, b)]


def known_clip(x_a: np.ndarray = X_A, known: list[int] = KNOWN, t: int = T):
    """known (1, 1, T, 1, 1) (NaN off the known frames: they must never be read) and mask (1, T)."""
    clip = torch.full((1, 1, t, 1, 1), math.nan, dtype=torch.float64)
    clip[0, 0, known, 0, 0] = torch.as_tensor(x_a, dtype=torch.float64)
    mask = torch.zeros(1, t, dtype=torch.bool)
    mask[0, known] = True
    return clip, mask


def sample(denoise, schedule, name: str, n: int, steps: int = 50, seed: int = 0, zero_noise: bool = False):
    """n samples (n, 1, T, 1, 1) from ``SAMPLERS[name]``; ``zero_noise``: one run from z = 0, which for an
    ODE sampler with a linear denoiser is exactly the mean of its samples (every step is affine)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(1, 1, T, 1, 1, dtype=torch.float64) if zero_noise else torch.randn(
        n, 1, T, 1, 1, dtype=torch.float64, generator=g)
    lam = schedule.sampling_logsnrs(steps).double()
    return SAMPLERS[name](denoise, z, lam, generator=g, alpha_sigma=schedule.alpha_sigma)


def moments(x: torch.Tensor, frames: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean (F,) and covariance (F, F) of the given frames of x (N, 1, T, 1, 1)."""
    xb = x[:, 0, frames, 0, 0].numpy()
    return xb.mean(0), np.cov(xb.T)


def test_one_call_is_vdms_adjusted_estimate():
    # x~^b = x^^b - (w alpha / 2) d||x^a - x^^a||^2 / dz^b, with the linear denoiser's Jacobian G written
    # out: x~^b = x^^b + w alpha G[a, b]^T (x^a - x^^a); known frames are x^a. Per-sample masks, so the
    # batch's summed error must still give each sample its own gradient.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 2, T, 2, 2, dtype=torch.float64, generator=g)
    clip = torch.randn(3, 2, T, 2, 2, dtype=torch.float64, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]], dtype=torch.bool)
    logsnr = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    schedule = SCHEDULES["rf"]
    denoise = frames_denoiser(np.zeros(T), COV, schedule.alpha_sigma)
    w = 3.0
    ours = known_frames_denoiser(denoise, clip, mask, weight=w, alpha_sigma=schedule.alpha_sigma)(z, logsnr)
    replaced = known_frames_denoiser(denoise, clip, mask, mode="replacement")(z, logsnr)
    for i in range(3):
        a, s = (float(v) for v in schedule.alpha_sigma(logsnr[i]))
        gain = a * COV @ np.linalg.inv(a**2 * COV + s**2 * np.eye(T))  # (T, T) = d x0_hat / d z
        zi, xi = z[i].numpy(), clip[i].numpy()  # (C, T, H, W)
        x0 = np.einsum("ts,cshw->cthw", gain, zi)
        m = mask[i].numpy()
        err = np.where(m[None, :, None, None], xi - x0, 0.0)
        ref = x0 + w * a * np.einsum("ts,cthw->cshw", gain, err)
        ref[:, m] = xi[:, m]
        np.testing.assert_allclose(ours[i].numpy(), ref, atol=1e-12, rtol=1e-10)
        x0[:, m] = xi[:, m]
        np.testing.assert_allclose(replaced[i].numpy(), x0, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("family", ["vp", "rf"])
@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "heun"])
def test_known_frames_stay_forward_samples_of_the_given_data(name, family):
    # returning x^a on the known frames makes the sampler itself carry out VDM's replacement: there its
    # z_t stays alpha_t x^a + sigma_t eps, eps fixed by the starting noise, and the sample ends at x^a
    schedule = SCHEDULES[family]
    clip, mask = known_clip()
    denoise = known_frames_denoiser(frames_denoiser(np.zeros(T), COV, schedule.alpha_sigma), clip, mask,
                                    weight=5.0, alpha_sigma=schedule.alpha_sigma)
    lam = schedule.sampling_logsnrs(20).double()
    z = torch.randn(8, 1, T, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_a = clip[:, :, KNOWN]
    a0, s0 = schedule.alpha_sigma(lam[0])
    eps = (z[:, :, KNOWN] - a0 * x_a) / s0
    seen = []
    out = SAMPLERS[name](denoise, z, lam, alpha_sigma=schedule.alpha_sigma,
                         callback=lambda i, zz, x0: seen.append(zz[:, :, KNOWN].clone()))
    for i, z_a in enumerate(seen):
        a, s = schedule.alpha_sigma(lam[i + 1])
        torch.testing.assert_close(z_a, a * x_a + s * eps, atol=1e-9, rtol=1e-9, msg=f"step {i}")
    assert torch.equal(out[:, :, KNOWN], x_a.expand(8, -1, -1, -1, -1))


@pytest.mark.parametrize("family", ["vp", "rf"])
@pytest.mark.parametrize("name", ["ddim", "ancestral", "dpmpp_2m", "heun"])
def test_reconstruction_guidance_samples_the_conditional_and_replacement_does_not(name, family):
    # 4000 samples, 50 steps. Measured (VP; RF within 0.01), errors in conditional standard deviations:
    #   replacement:                mean off by -2.1 / -1.7 (ancestral -1.4 / -1.2), std 1.4-1.65x too wide
    #   reconstruction, best w_r:   mean within 0.15 (ancestral 0.1), std 0.87-0.94x (slightly too narrow)
    schedule = SCHEDULES[family]
    clip, mask = known_clip()
    b, mean, cov = conditional(np.zeros(T), COV, KNOWN, X_A)
    std = np.sqrt(np.diag(cov))
    exact = frames_denoiser(np.zeros(T), COV, schedule.alpha_sigma)
    errors = {}
    for mode, w in [("replacement", 0.0), ("reconstruction", BEST_WEIGHT[name])]:
        x = sample(known_frames_denoiser(exact, clip, mask, mode, w, schedule.alpha_sigma), schedule, name, 4000)
        assert torch.equal(x[:, :, KNOWN], clip[:, :, KNOWN].expand(4000, -1, -1, -1, -1))
        m, c = moments(x, b)
        errors[mode] = (np.abs(m - mean) / std, np.sqrt(np.diag(c)) / std)
    (mean_err, std_ratio), (rep_mean_err, rep_std_ratio) = errors["reconstruction"], errors["replacement"]
    assert mean_err.max() < 0.25, f"{name}/{family}: mean off by {mean_err} conditional stds"
    assert np.all((0.8 < std_ratio) & (std_ratio < 1.02)), f"{name}/{family}: std ratio {std_ratio}"
    assert rep_mean_err.min() > 1.0 and mean_err.max() < rep_mean_err.min() / 4, (mean_err, rep_mean_err)
    assert rep_std_ratio.min() > 1.15, f"{name}/{family}: replacement std ratio {rep_std_ratio}"


def test_the_weight_must_exceed_one():
    # VDM's w_r > 1: the Gaussian approximation q(x^a | z_t) ~ N(x^^a, sigma^2 / alpha^2) is far too wide
    # at high noise, so w_r = 1 under-corrects; the error falls to a minimum near 5 and grows again.
    # Measured (DDIM, VP, exact means, conditional stds): w_r 0: 2.15, 1: 1.56, 5: 0.16, 20: 1.33
    schedule = SCHEDULES["vp"]
    clip, mask = known_clip()
    b, mean, cov = conditional(np.zeros(T), COV, KNOWN, X_A)
    exact = frames_denoiser(np.zeros(T), COV, schedule.alpha_sigma)
    err = {}
    for w in (0.0, 1.0, 5.0, 20.0):
        x = sample(known_frames_denoiser(exact, clip, mask, weight=w), schedule, "ddim", 1, zero_noise=True)
        err[w] = np.abs(x[0, 0, b, 0, 0].numpy() - mean).max() / np.sqrt(np.diag(cov)).min()
    assert err[0.0] > err[1.0] > 1.0 > 0.25 > err[5.0] and err[20.0] > 1.0, err


@pytest.mark.parametrize("name", ["ddim", "heun"])
def test_composes_with_classifier_free_guidance(name):
    # conditional and unconditional Gaussians sharing Sigma: CFG with scale s is then exactly the
    # denoiser of N(mu_u + s (mu_c - mu_u), Sigma), so guiding the known frames through the CFG
    # denoiser (both branches, one batched forward, differentiated) must give the same sampler run as
    # guiding that Gaussian's own denoiser, and its conditional mean
    schedule = SCHEDULES["vp"]
    mu_c, mu_u, scale = np.array([0.0, 0.0, 0.2, 0.4]), np.zeros(T), 3.0
    mu_w = mu_u + scale * (mu_c - mu_u)

    def model(z, logsnr, mean):  # a conditional model function: the exact denoiser of N(mean, Sigma)
        return torch.cat([frames_denoiser(m.numpy(), COV, schedule.alpha_sigma)(zi[None], li[None])
                          for zi, li, m in zip(z, logsnr, mean)])

    cond, uncond = {"mean": torch.tensor(mu_c)[None]}, {"mean": torch.tensor(mu_u)[None]}
    clip, mask = known_clip()
    w = BEST_WEIGHT[name]
    guided = known_frames_denoiser(classifier_free_guidance(model, cond, uncond, scale), clip, mask, weight=w)
    direct = known_frames_denoiser(frames_denoiser(mu_w, COV, schedule.alpha_sigma), clip, mask, weight=w)
    z = torch.randn(1, 1, T, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lam = schedule.sampling_logsnrs(30).double()
    torch.testing.assert_close(SAMPLERS[name](guided, z, lam), SAMPLERS[name](direct, z, lam), atol=1e-10, rtol=0)
    # how close: measured (exact means, conditional stds) 0.01 / 0.16, replacement 2.1 / 1.7 (the known
    # frames sit as far from their mean as in the tests above; the best w_r moves with that: with
    # mu_w = (1.2, 0.9, 0.6, 0.3) instead it is nearer 7, and w_r = 5 leaves 0.23 / 0.30)
    b, mean, cov = conditional(mu_w, COV, KNOWN, X_A)
    err = {}
    for mode in ("reconstruction", "replacement"):
        d = known_frames_denoiser(classifier_free_guidance(model, cond, uncond, scale), clip, mask, mode, w)
        x = sample(d, schedule, name, 1, zero_noise=True)[0, 0, b, 0, 0].numpy()
        err[mode] = np.abs(x - mean) / np.sqrt(np.diag(cov))
    assert err["reconstruction"].max() < 0.25 and err["replacement"].min() > 4 * err["reconstruction"].max(), err
    unguided = conditional(mu_c, COV, KNOWN, X_A)[1]  # the conditional without CFG is elsewhere
    assert np.all(np.abs(unguided - mean) > 0.75 * np.sqrt(np.diag(cov)))


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_guidance_through_a_decoder(name):
    # a latent model guided by pixel frames that are not whole latent frames: decode upsamples 4
    # latent frames to 7 by linear interpolation, and pixel frames 1 and 2 ((x0 + x1) / 2 and x1) are
    # given. Linear-Gaussian conditioning gives E[x | y] exactly. Measured at w_r = 6 (VP, exact means):
    # given pixels within 0.01, free latent frames within 0.15 conditional stds (w_r = 1: 1.5)
    schedule = SCHEDULES["vp"]
    up = np.zeros((7, T))
    up[0::2] = np.eye(T)
    up[1::2] = 0.5 * (np.eye(T)[:-1] + np.eye(T)[1:])
    up_t = torch.tensor(up)
    given = [1, 2]
    y = np.array([1.75, 2.0])
    a = up[given]
    k = COV @ a.T @ np.linalg.inv(a @ COV @ a.T)
    mean, cov = k @ y, COV - k @ a @ COV
    free = [2, 3]  # latent frames the two pixels leave uncertain
    clip, mask = known_clip(y, given, 7)
    exact = frames_denoiser(np.zeros(T), COV, schedule.alpha_sigma)
    decode = lambda x: torch.einsum("ps,bcshw->bcphw", up_t, x)  # noqa: E731
    errs = {}
    for w in (1.0, 6.0):
        d = known_frames_denoiser(exact, clip, mask, weight=w, decode=decode)
        x = sample(d, schedule, name, 1, zero_noise=True)
        errs[w] = np.abs(x[0, 0, free, 0, 0].numpy() - mean[free]) / np.sqrt(np.diag(cov)[free])
        pixel_err = np.abs(decode(x)[0, 0, given, 0, 0].numpy() - y)
    assert errs[6.0].max() < 0.25 < 1.0 < errs[1.0].min(), errs
    assert pixel_err.max() < 0.02, pixel_err


def test_arguments_are_checked():
    clip, mask = known_clip()
    d = frames_denoiser(np.zeros(T), COV, SCHEDULES["vp"].alpha_sigma)
    with pytest.raises(ValueError, match="mode"):
        known_frames_denoiser(d, clip, mask, mode="inpaint")
    with pytest.raises(ValueError, match="reconstruction"):
        known_frames_denoiser(d, clip, mask, mode="replacement", decode=lambda x: x)
    with pytest.raises(ValueError, match="bool"):
        known_frames_denoiser(d, clip, mask.float())
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        known_frames_denoiser(d, clip[0], mask)
    assert frames_mask(mask).shape == (1, 1, T, 1, 1)


def test_guidance_runs_under_no_grad_and_says_why_not_under_inference_mode():
    clip, mask = known_clip()
    d = frames_denoiser(np.zeros(T), COV, SCHEDULES["vp"].alpha_sigma)
    z, lam = torch.randn(2, 1, T, 1, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        out = known_frames_denoiser(d, clip, mask, weight=5.0)(z, lam)
    assert not out.requires_grad
    with torch.inference_mode():
        known_frames_denoiser(d, clip, mask, mode="replacement")(z, lam)  # no gradient needed
        with pytest.raises(RuntimeError, match="inference_mode"):
            known_frames_denoiser(d, clip, mask, weight=5.0)(z, lam)
