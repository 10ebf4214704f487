"""Tests of latentvid/diffusion/discrete.py against diffusers' own schedulers."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from latentvid.diffusion import alpha_sigma, sample_ddim
from latentvid.diffusion.discrete import DiscreteSchedule, read_scheduler_config

SD_LIKE = [
    dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),  # SD 1.x / 2.x
    dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),  # DDPM
    dict(num_train_timesteps=500, beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2"),
]


@pytest.mark.parametrize("cfg", SD_LIKE, ids=lambda c: c["beta_schedule"])
@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_alphas_cumprod_match_diffusers_at_the_training_timesteps(cfg, scheduler_cls):
    ours = DiscreteSchedule(**cfg)
    ref = scheduler_cls(**cfg).alphas_cumprod.double()  # diffusers accumulates in float32
    torch.testing.assert_close(ours.alphas_cumprod(), ref, rtol=2e-5, atol=1e-7)
    n = cfg["num_train_timesteps"]
    t_n = torch.arange(n, dtype=torch.float64) / (n - 1)
    alpha, sigma = alpha_sigma(ours.logsnr(t_n))
    torch.testing.assert_close(alpha**2, ref, rtol=2e-5, atol=1e-7)  # logsnr(t_n) is the table itself...
    torch.testing.assert_close(ours.logsnr(t_n), ours.train_logsnrs(), rtol=0, atol=1e-12)  # ...exactly


def test_logsnr_interpolates_linearly_between_timesteps_and_clips_outside():
    s = DiscreteSchedule()
    table = s.train_logsnrs()
    t = torch.tensor([10.25, 998.5], dtype=torch.float64) / 999
    expected = torch.stack([0.75 * table[10] + 0.25 * table[11], 0.5 * table[998] + 0.5 * table[999]])
    torch.testing.assert_close(s.logsnr(t), expected, rtol=0, atol=1e-9)
    ends = s.logsnr(torch.tensor([-0.5, 0.0, 1.0, 1.5], dtype=torch.float64))
    assert ends.tolist() == [table[0].item(), table[0].item(), table[-1].item(), table[-1].item()]
    assert bool((table[1:] < table[:-1]).all())


def test_timestep_inverts_logsnr_and_hits_integers_exactly():
    s = DiscreteSchedule()
    table = s.train_logsnrs()
    assert torch.equal(s.timestep(table), torch.arange(1000, dtype=torch.float64))
    t = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(s.t_from_logsnr(s.logsnr(t)), t, rtol=0, atol=1e-9)
    inf = s.timestep(torch.tensor([math.inf, -math.inf, 50.0, -50.0]))
    assert inf.tolist() == [0.0, 999.0, 0.0, 999.0]


def test_sampling_grid_runs_from_the_last_timestep_to_clean():
    s = DiscreteSchedule()
    lam = s.sampling_logsnrs(10)
    assert lam.shape == (11,) and lam[-1] == math.inf
    ac = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod.double()
    # the first step is diffusers' timestep 999 (trailing spacing), the others lie on t = k / 10
    torch.testing.assert_close(torch.sigmoid(lam[0].double()), ac[999], rtol=1e-4, atol=0)
    t = s.t_from_logsnr(lam[:-1].double()).float()
    torch.testing.assert_close(t, torch.linspace(1, 0.1, 10), atol=1e-5, rtol=0)


def test_karras_spacing_is_diffusers_karras_sigmas():
    # sigma / alpha of the table's last and first timesteps, rho = 7, then 0 (diffusers' use_karras_sigmas)
    ref = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                      use_karras_sigmas=True)
    ref.set_timesteps(12)
    lam = DiscreteSchedule().sampling_logsnrs(12, spacing="karras").double()
    # diffusers forms 1 - alphas_cumprod in float32: about 1e-5 relative at timestep 0 (1 - 0.99915)
    torch.testing.assert_close(torch.exp(-0.5 * lam), ref.sigmas.double(), rtol=5e-5, atol=0)


def test_ddim_on_the_grid_equals_diffusers_ddim_at_the_same_timesteps():
    """Our DDIM sampler over the discrete schedule's logSNRs follows diffusers' DDIMScheduler steps."""
    s = DiscreteSchedule()
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                        set_alpha_to_one=True, timestep_spacing="trailing")
    ref.set_timesteps(5)
    timesteps = ref.timesteps.tolist()  # [999, 799, 599, 399, 199]
    grid = torch.cat([s.train_logsnrs()[timesteps], torch.tensor([math.inf], dtype=torch.float64)]).float()

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4, generator=g)
    z = torch.randn(2, 3, 4, 4, generator=g)
    # a toy eps-model: an exact denoiser for a point mass at x0
    ac = ref.alphas_cumprod
    ours = sample_ddim(lambda z_, lam: x0, z, grid)
    zr = z.clone()
    for t in timesteps:
        eps = (zr - ac[t].sqrt() * x0) / (1 - ac[t]).sqrt()
        zr = ref.step(eps, t, zr).prev_sample
    torch.testing.assert_close(ours, zr, atol=1e-4, rtol=1e-4)


def test_pretrained_reads_a_diffusers_scheduler_folder(tmp_path):
    PNDMScheduler(beta_start=0.001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=800,
                  prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    s = DiscreteSchedule(pretrained=str(tmp_path))
    assert (s.num_train_timesteps, s.beta_start, s.beta_end, s.beta_schedule) == (800, 0.001, 0.02, "linear")
    assert s.prediction_type == "v"
    for path in (tmp_path / "scheduler", tmp_path / "scheduler" / "scheduler_config.json"):
        assert replace(DiscreteSchedule(pretrained=str(path)), pretrained=None) == replace(s, pretrained=None)
    assert DiscreteSchedule(prediction_type="epsilon").prediction_type == "eps"


def test_keys_missing_from_a_file_take_diffusers_defaults(tmp_path):
    cfg = tmp_path / "scheduler_config.json"
    # Stable Diffusion 1.5's file: no prediction_type (diffusers then assumes epsilon)
    cfg.write_text(json.dumps({"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                               "beta_schedule": "scaled_linear", "skip_prk_steps": True, "trained_betas": None}))
    s = DiscreteSchedule(pretrained=str(cfg))
    assert s.prediction_type == "eps" and s.num_train_timesteps == 1000
    cfg.write_text("{}")
    bare = DiscreteSchedule(pretrained=str(cfg))
    ref = DDPMScheduler.from_pretrained(str(tmp_path)).alphas_cumprod.double()  # diffusers reads the same file
    torch.testing.assert_close(bare.alphas_cumprod(), ref, rtol=2e-5, atol=1e-7)


def test_bad_configs_name_the_file_and_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        DiscreteSchedule(pretrained=str(tmp_path / "nowhere"))
    cfg = tmp_path / "scheduler_config.json"
    cfg.write_text(json.dumps({"beta_schedule": "sigmoid"}))
    with pytest.raises(ValueError, match="beta_schedule.*sigmoid"):
        DiscreteSchedule(pretrained=str(cfg))
    cfg.write_text(json.dumps({"trained_betas": [0.1, 0.2]}))
    with pytest.raises(ValueError, match="trained_betas"):
        read_scheduler_config(str(cfg))
    cfg.write_text(json.dumps({"num_train_timesteps": "many"}))
    with pytest.raises(ValueError, match="num_train_timesteps.*many"):
        read_scheduler_config(str(cfg))
    with pytest.raises(ValueError, match="prediction_type"):
        DiscreteSchedule(prediction_type="flow")
