"""The settings of one evaluation: every option of ``tools/evaluate.py``, with its defaults.

``tools/evaluate.py`` builds an :class:`EvalOptions` from its command line; from Python, set the
fields you need (``EvalOptions(generated="samples/", metrics="probe,clip")``) and call
:func:`latentvid.evaluation.scoring.evaluate`. The field names are the flags' (``--num-per-prompt``
-> ``num_per_prompt``), and the flags' help says what each one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METRICS = ("probe", "fvd", "clip", "psnr", "ssim")
SAMPLER_NAMES = ("ddim", "ancestral", "dpmpp_2m", "heun")
"""The keys of :data:`latentvid.diffusion.samplers.SAMPLERS`, without importing torch (the tools'
--help stays quick); tests/evaluation/test_options.py keeps the two equal."""
SPACING_NAMES = ("time", "logsnr", "karras")
""":data:`latentvid.diffusion.schedule.SPACINGS` likewise: the sampling grids (uniform t, uniform
logSNR, Karras et al.'s rho = 7)."""


def parse_metric_names(text: str) -> list[str]:
    """``"probe, FVD,probe"`` -> ``["probe", "fvd"]`` (lower-cased, de-duplicated, order kept);
    ValueError naming the unknown ones."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {text!r}: unknown {unknown}; choose from {','.join(METRICS)}")
    return list(dict.fromkeys(names))


@dataclass
class EvalOptions:
    """One evaluation; exactly one of ``ckpt``, ``generated``, ``sr_ckpt``, ``vae_ckpt`` is the source."""

    ckpt: str | None = None  # diffusion checkpoint: sample, then score
    generated: str | None = None  # folder of generated videos (optional captions.jsonl)
    sr_ckpt: str | None = None  # SR stage: super-resolve degraded `real` clips
    vae_ckpt: str | None = None  # VAE: reconstruct `real` clips
    prompts: str | None = None  # text file, one caption per line
    prompt: list[str] = field(default_factory=list)  # captions after those of `prompts`
    num_per_prompt: int = 1
    steps: int | None = None  # None: the model's sample_steps
    guidance: float | None = None  # None: the model's guidance scale
    sampler: str | None = None  # one of SAMPLER_NAMES; None: the model's
    spacing: str = "time"  # the sampling grid: one of SPACINGS
    eta: float = 0.0
    fps: float = 8.0
    frames: int | None = None  # None: the training clip length
    height: int | None = None  # None: the training size
    width: int | None = None
    batch_size: int = 1  # videos sampled together; the videos do not depend on it
    no_ema: bool = False
    save_videos: str | None = None  # also write the samples (and a captions.jsonl) here
    aug_level: float | None = None  # SR conditioning-augmentation level; None: the model's
    limit: int | None = None  # score only the first N `real` clips (SR / VAE)
    seed: int = 0  # video k uses seed + k (SR clip batch j: seed + j); also seeds a random-init I3D
    real: str | None = None  # folder of mp4s or a JSONL index
    metrics: str = "probe"  # comma-separated subset of METRICS
    i3d: str | None = None
    i3d_torchscript: str | None = None
    fvd_random_init: bool = False
    fvd_frames: int | None = None
    fvd_size: int = 224
    clip_arch: str = "ViT-B-32"
    clip_checkpoint: str | None = None
    out: str = "results.json"
    device: str | None = None  # None: cuda if available, else cpu
    metric_names: list[str] | None = None  # parsed `metrics`; None: parse them

    def __post_init__(self) -> None:
        if self.metric_names is None:
            self.metric_names = parse_metric_names(self.metrics)

    def as_report(self) -> dict:
        """The options as stored in the report's ``args`` (without the parsed ``metric_names``)."""
        return {k: v for k, v in vars(self).items() if k != "metric_names"}
