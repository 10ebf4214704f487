"""Diffusion math: pure functions on tensors (no nn.Module state, no Lightning)."""

from latentvid.diffusion.augmentation import ConditioningAugmentation, augment, draw_levels
from latentvid.diffusion.discrete import DiscreteSchedule, discrete_betas, read_scheduler_config
from latentvid.diffusion.guidance import classifier_free_guidance, clip_denoised
from latentvid.diffusion.known_frames import (
    KNOWN_FRAME_MODES,
    frames_mask,
    known_frames_denoiser,
    reconstruction_error,
    reconstruction_guided,
)
from latentvid.diffusion.parameterization import (
    TARGETS,
    diffuse,
    eps_from_v,
    eps_from_flow,
    eps_from_x0,
    flow_from_x0_eps,
    masked_mse,
    prediction_to_x0,
    snr_loss_weight,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_flow,
    x0_from_v,
)
from latentvid.diffusion.samplers import (
    HEUN_VARIABLES,
    SAMPLERS,
    run_sampler,
    sample_ancestral,
    sample_ddim,
    sample_dpmpp_2m,
    sample_heun,
)
from latentvid.diffusion.schedule import (
    GRID_LOGSNR_RANGE,
    SPACINGS,
    CosineSchedule,
    AlphaSigma,
    LinearLogSNRSchedule,
    RectifiedFlowSchedule,
    Schedule,
    alpha_sigma,
    cosine_logsnr,
    cosine_t_from_logsnr,
    linear_logsnr,
    log_linear_shift,
    logsnr_from_alpha_sigma,
    rf_alpha_sigma,
    rf_logsnr,
    rf_t_from_logsnr,
    sampling_grid,
    time_grid,
    token_shift,
)
from latentvid.diffusion.time_sampling import TIME_SAMPLINGS, TimeSampling, logit_normal_times, mode_times

__all__ = [name for name in dir() if not name.startswith("_")]
