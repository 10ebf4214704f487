"""The cascade: text -> base model (latent, decoded by its first stage) -> SR stages in order -> mp4.

    from latentvid.pipelines.cascade import CascadePipeline
    pipe = CascadePipeline.from_yaml("configs/cascade.yaml")
    pipe.generate(["a red circle moving left"], "out.mp4", seed=0)

or ``python tools/sample.py --cascade configs/cascade.yaml --prompt "..." --out out.mp4``.

The YAML names a base checkpoint and any list of SR stage checkpoints, with per-stage sampler
settings (keys mirror :class:`BaseStage` and :class:`SRStage`)::

    base:
      ckpt: runs/base                 # a run root: its newest last*.ckpt (or a .ckpt file)
      steps: 50
      guidance: 3.0
    stages:
      - name: tsr
        ckpt: runs/tsr
        aug_level: 0.1
      - name: ssr
        ckpt: runs/ssr

Before anything is sampled, :meth:`CascadePipeline.plan` walks the shapes through the stages and
raises one :class:`ChainError` listing every stage whose expected input (recorded from its
training clips, or given as ``input_frames`` / ``input_size``) differs from what the previous
stage gives.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentvid.data.video import to_uint8, write_video
from latentvid.data.video_log import slug
from latentvid.diffusion.samplers import SAMPLERS
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.models.super_resolution import SuperResolutionDiffusion
from latentvid.pipelines.loading import load_model

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # (frames, height, width) of a pixel video


class ChainError(ValueError):
    """The stages' sizes do not chain (raised before any sampling)."""


@dataclass
class BaseStage:
    """The text-to-video base model of a cascade.

    Args:
        ckpt: its checkpoint (tools/fit.py / latentvid fit), or a run root such as ``runs/base``
            (its most recently written ``last*.ckpt``).
        steps, sampler, guidance, eta: sampler settings (None: the model's defaults).
        frames, height, width: the pixel video it generates (None: the training clip's, from the checkpoint).
        fps: frame rate it is conditioned on; SR stages multiply it (TSR) and the file is written at the result.
        ema: use the EMA weights when the checkpoint has them.
    """

    ckpt: str
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    eta: float = 0.0
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: float = 8.0
    ema: bool = True


@dataclass
class SRStage:
    """One super-resolution stage (SSR or TSR) of a cascade.

    Args:
        ckpt: its checkpoint.
        name: shown in progress and errors (default: ``stage<i>``).
        steps, sampler, guidance, eta: sampler settings (None: the model's defaults).
        aug_level: conditioning-augmentation level s in [0, 1] (None: the model's ``sample_level``).
        same_noise: identical starting noise in every frame (None: the model's setting).
        chunk_frames: sample in time chunks of this many frames (None: the model's setting).
        input_frames, input_size: what the stage expects, when its checkpoint does not record it
            (``input_size``: [height, width]).
        ema: use the EMA weights when the checkpoint has them.
    """

    ckpt: str
    name: str | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    eta: float = 0.0
    aug_level: float | None = None
    same_noise: bool | None = None
    chunk_frames: int | None = None
    input_frames: int | None = None
    input_size: list[int] | None = None
    ema: bool = True


@dataclass
class CascadeConfig:
    """A whole cascade: the base and the SR stages in the order they run."""

    base: BaseStage
    stages: list[SRStage] = field(default_factory=list)


def _build(cls: type, raw: Any, where: str) -> Any:
    """A dataclass from a YAML mapping; unknown or missing keys are errors naming ``where``."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping of {cls.__name__} keys, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if raw.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    return cls(**raw)


def parse_config(raw: dict, source: str = "cascade config") -> CascadeConfig:
    """Validate a cascade mapping (as loaded from YAML); errors name ``source`` and the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping with 'base' and 'stages', got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"base", "stages"})
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}; expected 'base' and 'stages'")
    if "base" not in raw:
        raise ValueError(f"{source}: missing 'base' (the text-to-video checkpoint)")
    base = _build(BaseStage, raw["base"], f"{source}: base")
    stages_raw = raw.get("stages") or []
    if not isinstance(stages_raw, list):
        raise ValueError(f"{source}: 'stages' must be a list, got {type(stages_raw).__name__}")
    stages = [_build(SRStage, s, f"{source}: stages[{i}]") for i, s in enumerate(stages_raw)]
    for where, stage in [("base", base), *((f"stages[{i}]", s) for i, s in enumerate(stages))]:
        if stage.sampler is not None and stage.sampler not in SAMPLERS:
            raise ValueError(f"{source}: {where}.sampler {stage.sampler!r} is not one of {sorted(SAMPLERS)}")
    for i, stage in enumerate(stages):
        stage.name = stage.name or f"stage{i}"
        if stage.input_size is not None and len(stage.input_size) != 2:
            raise ValueError(f"{source}: stages[{i}].input_size must be [height, width], got {stage.input_size}")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: stage names must be unique, got {names}")
    return CascadeConfig(base, stages)


def load_config(path: str | Path) -> CascadeConfig:
    """Read and validate a cascade YAML file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cascade config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    return parse_config(raw, str(path))


@dataclass(frozen=True)
class PlannedStage:
    """What one stage takes and gives: (frames, height, width) and frame rates."""

    name: str
    kind: str
    input_shape: Shape | None
    output_shape: Shape
    fps: float  # of the output


def _fmt(shape: Shape) -> str:
    return f"{shape[0]} frames of {shape[1]}x{shape[2]}"


class CascadePipeline:
    """Runs a base model and SR stages in order; usable from Python and from tools/sample.py.

    Args:
        base: the text-to-video model (any :class:`LatentDiffusion`; its first stage decodes to pixels).
        base_config: its sampler settings and output size.
        stages: ``(settings, model)`` per SR stage, in the order they run.
        base_shape: (frames, height, width) the base generates when ``base_config`` leaves it open.
    """

    def __init__(self, base: LatentDiffusion, base_config: BaseStage,
                 stages: Sequence[tuple[SRStage, SuperResolutionDiffusion]] = (), base_shape: Shape | None = None):
        if isinstance(base, SuperResolutionDiffusion) or not isinstance(base, LatentDiffusion):
            raise ValueError(f"the cascade's base must be a text-to-video LatentDiffusion, got {type(base).__name__}")
        for cfg, model in stages:
            if not isinstance(model, SuperResolutionDiffusion):
                raise ValueError(f"stage '{cfg.name}' ({cfg.ckpt}) is a {type(model).__name__}, not an SR stage "
                                 f"(SpatialSuperResolution / TemporalSuperResolution)")
        self.base, self.base_config = base, base_config
        self.stages = list(stages)
        frames = base_config.frames or (base_shape[0] if base_shape else None)
        height = base_config.height or (base_shape[1] if base_shape else None)
        width = base_config.width or (base_shape[2] if base_shape else None)
        if not (frames and height and width):
            raise ValueError(f"base {base_config.ckpt}: the checkpoint does not record the clip shape; "
                             f"set base.frames, base.height and base.width in the cascade config")
        self.base_shape: Shape = (int(frames), int(height), int(width))

    @classmethod
    def from_config(cls, config: CascadeConfig | dict | str | Path, device: str | torch.device = "cpu"
                    ) -> CascadePipeline:
        """Load every checkpoint named by ``config`` (a YAML path, a mapping or a :class:`CascadeConfig`)."""
        if isinstance(config, (str, Path)):
            config = load_config(config)
        elif isinstance(config, dict):
            config = parse_config(config)
        base, ckpt = load_model(config.base.ckpt, device, ema=config.base.ema)
        data_hp = ckpt.get("datamodule_hyper_parameters", {}) or {}
        size = data_hp.get("size")
        base_shape = (data_hp.get("num_frames"), size, size) if size and data_hp.get("num_frames") else None
        stages = [(s, load_model(s.ckpt, device, ema=s.ema)[0]) for s in config.stages]
        pipe = cls(base, config.base, stages, base_shape)
        pipe.plan()  # fail on a broken chain now, before anyone waits for sampling
        return pipe

    from_yaml = from_config

    def plan(self, base_shape: Shape | None = None) -> list[PlannedStage]:
        """The shapes through the cascade (base first); raises :class:`ChainError` naming every stage
        whose expected input differs from what the previous stage gives. ``base_shape``: what the base
        step gives when it is not the base model's own shape (a video from :meth:`upsample`)."""
        shape, fps = base_shape or self.base_shape, float(self.base_config.fps)
        plan = [PlannedStage("base", "base", None, shape, fps)]
        problems = []
        for cfg, model in self.stages:
            expected = model.expected_input()
            if cfg.input_frames is not None or cfg.input_size is not None:  # the config overrides the record
                exp_t, exp_h, exp_w = expected if expected is not None else (None, None, None)
                if cfg.input_size is not None:
                    exp_h, exp_w = (int(n) for n in cfg.input_size)
                if cfg.input_frames is not None:
                    exp_t = int(cfg.input_frames)
                expected = (exp_t, exp_h, exp_w)
            prev = plan[-1].name
            if expected is None:
                log.warning("stage '%s' (%s) does not record the size it was trained on; assuming it takes %s "
                            "(set input_frames / input_size to check)", cfg.name, cfg.ckpt, _fmt(shape))
            else:
                exp_t, exp_h, exp_w = expected
                if exp_h is not None and (exp_h, exp_w) != shape[1:]:
                    problems.append(f"{model.kind} stage '{cfg.name}' expects {exp_h}x{exp_w} input but the previous "
                                    f"stage ('{prev}') gives {shape[1]}x{shape[2]}")
                if exp_t is not None and exp_t != shape[0]:
                    problems.append(f"{model.kind} stage '{cfg.name}' expects {exp_t} input frames but the previous "
                                    f"stage ('{prev}') gives {shape[0]}")
            out = model.output_shape(shape)
            fps = fps * model.fps_factor
            plan.append(PlannedStage(cfg.name, model.kind, shape, out, fps))
            shape = out
        if problems:
            chain = " -> ".join(f"{p.name} ({_fmt(p.output_shape)})" for p in plan)
            raise ChainError("cascade stages do not chain:\n  " + "\n  ".join(problems) + f"\n  (as configured: {chain})")
        return plan

    @property
    def output_fps(self) -> float:
        """Frame rate of the final video."""
        return self.plan()[-1].fps

    @torch.no_grad()
    def __call__(self, captions: list[str], seed: int = 0, progress: bool = True) -> Tensor:
        """Generate one video per caption: (B, 3, T, H, W) in [-1, 1] at the last stage's shape.

        Caption i uses a generator seeded with ``seed + i`` through all stages (as tools/sample.py)."""
        plan = self.plan()
        videos = []
        for i, caption in enumerate(captions):
            g = torch.Generator(device=self.base.device).manual_seed(seed + i)
            videos.append(self._one(caption, plan, g, progress))
        return torch.cat(videos)

    def _one(self, caption: str, plan: list[PlannedStage], g: torch.Generator, progress: bool) -> Tensor:
        b = self.base_config
        bar = tqdm(total=len(plan), desc=caption[:40], unit="stage", disable=not progress)
        bar.set_postfix_str(f"base -> {_fmt(plan[0].output_shape)}")
        video = self.base.sample([caption], *self.base_shape, fps=b.fps, steps=b.steps, sampler=b.sampler,
                                 guidance_scale=b.guidance, eta=b.eta, generator=g, progress=progress)
        bar.update()
        return self._stages(video, caption, plan, g, progress, bar)

    @torch.no_grad()
    def upsample(self, videos: Tensor, captions: list[str], seed: int = 0, progress: bool = True) -> Tensor:
        """Run the SR stages on base-resolution videos (B, 3, T, H, W) in [-1, 1] made some other way, e.g.
        by :mod:`latentvid.pipelines.frames` with ``self.base`` (image-to-video, extension, interpolation);
        video i uses a generator seeded with ``seed + i``. The chain is checked for their shape first."""
        plan = self.plan(tuple(int(n) for n in videos.shape[2:]))
        out = []
        for i, caption in enumerate(captions):
            g = torch.Generator(device=self.base.device).manual_seed(seed + i)
            bar = tqdm(total=len(plan) - 1, desc=caption[:40], unit="stage", disable=not progress)
            out.append(self._stages(videos[i: i + 1].to(self.base.device), caption, plan, g, progress, bar))
        return torch.cat(out)

    def _stages(self, video: Tensor, caption: str, plan: list[PlannedStage], g: torch.Generator, progress: bool,
                bar) -> Tensor:
        """The SR stages of ``plan`` on one base video (1, 3, T, H, W)."""
        for (cfg, model), step in zip(self.stages, plan[1:]):
            bar.set_postfix_str(f"{cfg.name} ({step.kind}) -> {_fmt(step.output_shape)}")
            video = model.sample(video, [caption], fps=step.fps, steps=cfg.steps, sampler=cfg.sampler,
                                 guidance_scale=cfg.guidance, eta=cfg.eta, aug_level=cfg.aug_level,
                                 same_noise=cfg.same_noise, chunk_frames=cfg.chunk_frames, generator=g,
                                 progress=progress)
            bar.update()
        bar.close()
        return video

    def generate(self, captions: list[str], out: str | Path, seed: int = 0, progress: bool = True) -> list[Path]:
        """Generate and write mp4s at the final frame rate: ``out`` is the file for one caption
        (``.mp4``), else a folder receiving ``NN_<caption>.mp4``. Returns the paths written."""
        out = Path(out)
        fps = self.output_fps
        single = len(captions) == 1 and out.suffix == ".mp4"
        paths = []
        for i, caption in enumerate(captions):
            video = self([caption], seed=seed + i, progress=progress)
            path = out if single else out / f"{i:02d}_{slug(caption)}.mp4"
            write_video(path, to_uint8(video[0].float().cpu()), fps=fps)
            paths.append(path)
        return paths
