"""Progressive distillation's math and its student, on tiny models (the end-to-end run with resume and
sampling is tests/tools/test_distill.py).

1. The target is exact: one student DDIM step with its x0 lands where two teacher DDIM steps land
   (the repository's own sampler does both), on variance-preserving and rectified-flow grids.
2. A student copied from a teacher with the new guidance input at zero computes the teacher's
   *conditional* output (guidance 1) whatever w it is given, not its guided output at w.
3. On Gaussian data with the exact denoiser as teacher, where the best student is exactly the
   teacher's two-step map, a briefly trained student's N-step sample reaches the teacher's 2N-step
   sample; N-step DDIM of the teacher does not.
"""

from __future__ import annotations

import copy

import pytest
import torch

from latentvid.diffusion.distillation import (
    ddim_step,
    ddim_x0,
    distillation_target,
    grid_steps,
    student_regression,
    teacher_two_steps,
)
from latentvid.diffusion.guidance import classifier_free_guidance
from latentvid.diffusion.samplers import sample_ddim
from latentvid.diffusion.schedule import CosineSchedule, RectifiedFlowSchedule, alpha_sigma
from latentvid.models.distillation import (
    DistilledLatentDiffusion,
    DistilledSpatialSuperResolution,
    build_student,
    student_config,
)
from latentvid.models.lr_schedules import rounds_lambda
from latentvid.nn.unet3d import UNet3D

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULES = {"vp": CosineSchedule(), "rf": RectifiedFlowSchedule(shift=3.0)}
UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "head_dim": 8,
        "norm_groups": 4}
TEXT = {"class_path": "latentvid.conditioning.text.OpenCLIPTextEncoder",
        "init_args": {"random_width": 32, "random_layers": 1, "random_heads": 2, "max_length": 16, "cache_size": 0}}
BASE = {"_class_path": "latentvid.models.latent_diffusion.LatentDiffusion", "sample_steps": 8, "text_encoder": TEXT,
        "unet": {"class_path": "latentvid.nn.unet3d.UNet3D", "init_args": {**UNET, "context_dim": 32}}}
SSR = {"_class_path": "latentvid.models.super_resolution.SpatialSuperResolution", "sample_steps": 8,
       "text_encoder": None, "scale_factor": 2,
       "unet": {"class_path": "latentvid.nn.unet3d.UNet3D",
                "init_args": {**UNET, "in_channels": 6, "out_channels": 3, "context_dim": None,
                              "attention_levels": [], "temporal_attention": False, "fps_conditioning": False,
                              "num_extra_conditions": 1}}}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Shake every weight, so that zero-initialised layers (output conv, temporal attention) do something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _tiny_denoiser(schedule) -> callable:
    """x0 = the v-prediction of a tiny random UNet3D at (z, logsnr): a nonlinear teacher."""
    torch.manual_seed(0)
    net = UNet3D(in_channels=2, out_channels=2, context_dim=None, fps_conditioning=False, **UNET).eval()
    _randomise(net, 1)

    def denoise(z, logsnr):
        a, s = (x.reshape(-1, 1, 1, 1, 1) for x in schedule.alpha_sigma(logsnr))
        return (a * z - s * net(z, logsnr)) / (a**2 + s**2)

    return denoise


# ---- 1. the target -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["vp", "rf"])
def test_one_student_step_lands_where_two_teacher_steps_do(family):
    schedule = SCHEDULES[family]
    teacher = _tiny_denoiser(schedule)
    grid = schedule.sampling_logsnrs(8)  # the teacher's N = 8 grid; the student steps 0..3 over it
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for j in range(4):  # the last one steps to logSNR = +inf (sigma_s = 0)
            z_t = torch.randn(3, 2, 2, 8, 8, generator=g)
            lam_t, lam_m, lam_s = grid_steps(grid, torch.full((3,), j))
            x0 = distillation_target(teacher, z_t, lam_t, lam_m, lam_s, schedule.alpha_sigma)
            student = sample_ddim(lambda z, lam: x0, z_t, grid[2 * j: 2 * j + 3: 2], alpha_sigma=schedule.alpha_sigma)
            two = sample_ddim(teacher, z_t, grid[2 * j: 2 * j + 3], alpha_sigma=schedule.alpha_sigma)
            torch.testing.assert_close(student, two, atol=1e-5, rtol=0)
            assert not torch.allclose(x0, teacher(z_t, lam_t), atol=1e-3)  # two steps are not one teacher step


@pytest.mark.parametrize("family", ["vp", "rf"])
def test_per_sample_steps_match_the_sampler_sample_by_sample(family):
    # training mixes student steps in one batch: each row must be its own step's target
    schedule = SCHEDULES[family]
    teacher = _tiny_denoiser(schedule)
    grid = schedule.sampling_logsnrs(8)
    index = torch.tensor([3, 0, 2, 1])
    g = torch.Generator().manual_seed(3)
    z_t = torch.randn(4, 2, 2, 8, 8, generator=g)
    with torch.no_grad():
        lam_t, lam_m, lam_s = grid_steps(grid, index)
        batched = teacher_two_steps(teacher, z_t, lam_t, lam_m, lam_s, schedule.alpha_sigma)
        for i, j in enumerate(index.tolist()):
            alone = sample_ddim(teacher, z_t[i: i + 1], grid[2 * j: 2 * j + 3], alpha_sigma=schedule.alpha_sigma)
            torch.testing.assert_close(batched[i: i + 1], alone, atol=1e-5, rtol=0)


def test_ddim_step_and_its_inverse():
    g = torch.Generator().manual_seed(4)
    x0, z_t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    lam_t, lam_s = torch.full((5,), -1.5, dtype=torch.float64), torch.full((5,), 0.5, dtype=torch.float64)
    (a_t, s_t), (a_s, s_s) = alpha_sigma(lam_t), alpha_sigma(lam_s)
    z_s = ddim_step(x0, z_t, a_t, s_t, a_s, s_s)
    ref = sample_ddim(lambda z, lam: x0, z_t, torch.tensor([-1.5, 0.5]))
    torch.testing.assert_close(z_s, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ddim_x0(z_t, z_s, a_t, s_t, a_s, s_s), x0, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="even number"):
        grid_steps(torch.zeros(4), torch.zeros(1, dtype=torch.long))


def test_truncated_snr_weight_is_max_snr_1_on_the_x0_error():
    # the weighted loss in the student's parameterisation equals max(SNR, 1) |x0_student - x0_target|^2
    g = torch.Generator().manual_seed(5)
    for schedule in SCHEDULES.values():
        for target in ("v", "x0", "flow"):
            lam = torch.tensor([-6.0, -1.0, 0.0, 3.0])
            a, s = schedule.alpha_sigma(lam)
            z_t, x_target, x_student = (torch.randn(4, 6, generator=g) for _ in range(3))
            want, weight = student_regression(x_target, z_t, a, s, lam, target)
            got, _ = student_regression(x_student, z_t, a, s, lam, target)  # the student's output, same kind
            loss = weight * (got - want).pow(2).mean(1)
            ref = lam.exp().clamp(min=1.0) * (x_student - x_target).pow(2).mean(1)
            torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-6)


# ---- 2. the student at the start ----------------------------------------------------------------


def _built(config: dict, seed: int):
    from lightning.pytorch.cli import instantiate_module

    from latentvid.models.distillation import _import

    torch.manual_seed(seed)
    teacher = instantiate_module(_import(config["_class_path"]), copy.deepcopy(config)).eval()
    _randomise(teacher.unet, seed + 1)
    student = build_student(student_config(config, 4), teacher).eval()
    return teacher, student


def test_student_starts_as_the_conditional_teacher_whatever_w():
    teacher, student = _built(BASE, 0)
    assert isinstance(student, DistilledLatentDiffusion) and student.unet.num_extra_conditions == 1
    assert student.text_encoder is teacher.text_encoder and student.hparams.sample_steps == 4
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, 3, 2, 8, 8, generator=g)
    lam = torch.tensor([-3.0, 1.0])
    fps = torch.full((2,), 8.0)
    with torch.no_grad():
        context, mask = teacher.encode_text(["a red circle moving left", "a blue square moving up"])
        empty, emask = teacher.encode_text(["", ""])
        cond = {"context": context, "context_mask": mask, "fps": fps}
        guided = {w: classifier_free_guidance(teacher.denoise, cond, {**cond, "context": empty, "context_mask": emask},
                                              w)(z, lam) for w in (1.0, 3.0)}
        for w in (0.0, 1.0, 3.0, 7.5):
            out = student.denoise(z, lam, context, mask, fps, guidance=torch.full((2,), w))
            # the new embedding's output layer is exactly zero, so nothing about w reaches the network:
            # exactly the teacher's conditional prediction (guidance scale 1, Meng et al.'s w = 0)
            assert torch.equal(out, guided[1.0])
        assert not torch.allclose(out, guided[3.0], atol=1e-3)  # not the guided output at the w it was given


def test_widened_sr_student_starts_as_the_teacher():
    # an SR stage already takes one extra scalar: the student's embedding is widened with zero weights
    teacher, student = _built(SSR, 10)
    assert isinstance(student, DistilledSpatialSuperResolution) and student.unet.num_extra_conditions == 2
    g = torch.Generator().manual_seed(7)
    z, cond = torch.randn(2, 3, 2, 16, 16, generator=g), torch.randn(2, 3, 2, 16, 16, generator=g)
    lam, aug = torch.tensor([-2.0, 2.0]), torch.tensor([4.0, 8.0])
    with torch.no_grad():
        ref = teacher.denoise(z, lam, None, None, cond=cond, aug_logsnr=aug)
        for w in (0.0, 5.0):
            out = student.denoise(z, lam, None, None, cond=cond, aug_logsnr=aug, guidance=torch.full((2,), w))
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)  # the same sums, in another order
    with pytest.raises(ValueError, match="needs a guidance weight"):
        student.denoise(z, lam, None, None, cond=cond, aug_logsnr=aug)


@pytest.mark.parametrize("extras", [0, 1])
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_guidance_input_leaves_any_network_unchanged(kind, extras):
    from latentvid.models.distillation import copy_with_guidance_input
    from latentvid.nn.dit import DiT3D

    def net(n):
        torch.manual_seed(n)
        if kind == "dit":
            return DiT3D(in_channels=3, out_channels=3, dim=32, depth=1, head_dim=16, context_dim=None,
                       num_extra_conditions=n).eval()
        return UNet3D(in_channels=3, out_channels=3, context_dim=None, num_extra_conditions=n, **UNET).eval()

    teacher, student = net(extras), net(extras + 1)
    _randomise(teacher, 30)
    _randomise(student, 31)  # whatever the student held before is overwritten or made inert
    copy_with_guidance_input(teacher, student)
    g = torch.Generator().manual_seed(9)
    x, lam = torch.randn(2, 3, 2, 8, 8, generator=g), torch.tensor([-1.0, 2.0])
    extra = torch.randn(2, extras, generator=g) if extras else None
    with torch.no_grad():
        ref = teacher(x, lam, fps=torch.full((2,), 8.0), extra=extra)
        for w in (0.0, 4.0):
            column = torch.full((2, 1), w)
            out = student(x, lam, fps=torch.full((2,), 8.0),
                          extra=column if extra is None else torch.cat([extra, column], 1))
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="expected"):
        copy_with_guidance_input(teacher, net(extras + 2))


def test_student_samples_in_one_pass_per_step():
    _, student = _built(BASE, 20)
    calls = []
    student.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    video = student.sample(["a red circle moving left"], 2, 8, 8, steps=4, guidance_scale=3.0,
                           generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 2, 8, 8)
    assert calls == [1, 1, 1, 1]  # four steps, batch 1: no unconditional half


def test_rounds_lambda():
    f = rounds_lambda(warmup_steps=2, round_steps=4, rounds=2)
    assert [f(s) for s in range(9)] == [0.5, 0.75, 0.5, 0.25, 0.5, 0.75, 0.5, 0.25, 0.0]


# ---- 3. Gaussian data: the student reaches the teacher's 2N-step sample ------------------------


MU, STD = 0.5, 0.4


def _exact_denoiser(z, logsnr):
    """E[x0 | z] for x0 ~ N(MU, STD^2) elementwise, VP process."""
    a, s = alpha_sigma(logsnr.double())
    gain = (a * STD**2 / (a**2 * STD**2 + s**2))[:, None]
    return (MU + gain * (z.double() - a[:, None] * MU)).to(z.dtype)


def test_student_trained_on_gaussian_data_reaches_the_two_step_teacher():
    schedule = CosineSchedule()
    grid = schedule.sampling_logsnrs(8)  # teacher: 8 DDIM steps; student: 4
    student_grid = grid[::2]
    # student: v = a_j z + c_j at each of its 4 grid points, started from the teacher's exact v there
    a0, s0 = alpha_sigma(student_grid[:-1].double())
    gain = a0 * STD**2 / (a0**2 * STD**2 + s0**2)
    slope = ((a0 - gain) / s0).float().clone().requires_grad_(True)  # v = (alpha z - x0_hat) / sigma
    offset = (-(MU - gain * a0 * MU) / s0).float().clone().requires_grad_(True)

    def student_v(z, index):
        return slope[index][:, None] * z + offset[index][:, None]

    def student_denoise(z, logsnr):  # for sampling: the grid point is found by its logSNR
        index = (student_grid[:-1] == logsnr[0]).nonzero()[0].expand(z.shape[0])
        a, s = alpha_sigma(logsnr)
        return a[:, None] * z - s[:, None] * student_v(z, index)

    g = torch.Generator().manual_seed(8)
    noise = torch.randn(4096, 16, generator=g)
    with torch.no_grad():
        reference = sample_ddim(_exact_denoiser, noise, grid)  # the teacher's 2N-step sample
        ddim_n = sample_ddim(_exact_denoiser, noise, student_grid)  # the teacher's own N-step sample
        before = sample_ddim(student_denoise, noise, student_grid)
    torch.testing.assert_close(before, ddim_n, atol=1e-5, rtol=0)  # the student starts as the teacher

    opt = torch.optim.Adam([slope, offset], lr=0.03)
    for _ in range(250):  # the module's loss, with this student: x0 target, v regression, truncated SNR
        x0 = MU + STD * torch.randn(512, 16, generator=g)
        index = torch.randint(0, 4, (512,), generator=g)
        lam_t, lam_m, lam_s = grid_steps(grid, index)
        a, s = alpha_sigma(lam_t)
        z_t = a[:, None] * x0 + s[:, None] * torch.randn(512, 16, generator=g)
        with torch.no_grad():
            x_target = distillation_target(_exact_denoiser, z_t, lam_t, lam_m, lam_s, alpha_sigma)
        target, weight = student_regression(x_target, z_t, a, s, lam_t, "v")
        loss = (weight * (student_v(z_t, index) - target).pow(2).mean(1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = sample_ddim(student_denoise, noise, student_grid)
    gap_ddim = (ddim_n - reference).abs().max().item()
    gap_student = (after - reference).abs().max().item()
    assert gap_ddim > 0.05  # halving the steps costs the teacher something here
    assert gap_student < 1e-3, (gap_student, gap_ddim)  # the best student is exact here
