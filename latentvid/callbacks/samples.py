"""Log sample videos during validation: mp4 files in the run directory and animated images in TensorBoard."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from latentvid.data.video import to_uint8
from latentvid.data.video_log import save_and_log_video, slug
from latentvid.diffusion.samplers import SAMPLERS
from latentvid.metrics.shapes import ShapesProbe, parse_caption

log = logging.getLogger(__name__)


class LogSampleVideos(Callback):
    """Sample fixed captions with fixed seeds at validation and save them.

    Runs inside the first validation batch, so an EMA callback's averaged weights are in place.

    Args:
        captions: what to sample; ``None`` reads ``eval_prompts.txt`` from the datamodule's root if it has one.
        num_frames, height, width, fps: the video to generate (pixels; latent sizes follow from the first stage).
        steps, sampler, guidance_scale: sampler settings (``None`` -> the model's defaults); ``sampler``
            is a name in :data:`~latentvid.diffusion.samplers.SAMPLERS` (ddim, ancestral, dpmpp_2m, heun).
        every_n_validations: sample at every n-th validation run.
        seed: base seed; caption i always uses seed + i, so samples are comparable across runs.
        max_captions: at most this many captions per run.
        shapes_probe: when every caption is a synthetic-shapes caption, score the samples with
            :class:`latentvid.metrics.shapes.ShapesProbe` and log ``samples/probe_{colour,shape,direction,all}``.
    """

    def __init__(
        self,
        captions: list[str] | None = None,
        num_frames: int = 8,
        height: int = 32,
        width: int = 32,
        fps: float = 8.0,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        every_n_validations: int = 1,
        seed: int = 0,
        max_captions: int = 8,
        shapes_probe: bool = True,
    ) -> None:
        if sampler is not None and sampler not in SAMPLERS:  # fail at config time, not at the first validation
            raise ValueError(f"LogSampleVideos: unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
        self.captions = captions
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, fps
        self.steps, self.sampler, self.guidance_scale = steps, sampler, guidance_scale
        self.every_n_validations = every_n_validations
        self.seed = seed
        self.max_captions = max_captions
        self.shapes_probe = shapes_probe
        self._validations = 0

    def _captions(self, trainer: Trainer) -> list[str]:
        if self.captions is not None:
            return list(self.captions)[: self.max_captions]
        root = getattr(trainer.datamodule, "root", None) if trainer.datamodule is not None else None
        path = Path(root) / "eval_prompts.txt" if root else None
        if path is not None and path.is_file():
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            return lines[: self.max_captions]
        return []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        captions = self._captions(trainer)
        if captions:
            # trainer.log_dir is a collective under DDP: every rank must read it, not just rank 0
            run_dir = Path(trainer.log_dir or trainer.default_root_dir)
            self.sample_and_save(trainer, pl_module, captions, run_dir)

    @rank_zero_only
    def sample_and_save(self, trainer: Trainer, pl_module: LightningModule, captions: list[str],
                        run_dir: Path | None = None) -> list[Path]:
        """Sample ``captions`` and write ``<run_dir>/samples/step<N>/<i>_<caption>.mp4`` (rank 0 only).

        ``run_dir`` defaults to the trainer's log dir; pass it when calling from code that runs on
        every rank, since reading ``trainer.log_dir`` is a collective under DDP."""
        run_dir = Path(trainer.log_dir or trainer.default_root_dir) if run_dir is None else run_dir
        out_dir = run_dir / "samples" / f"step{trainer.global_step:07d}"
        paths = []
        probe = ShapesProbe() if self.shapes_probe and all(_is_shapes(c) for c in captions) else None
        for i, caption in enumerate(captions):
            g = torch.Generator(device=pl_module.device).manual_seed(self.seed + i)
            video = pl_module.sample([caption], self.num_frames, self.height, self.width, fps=self.fps,
                                     steps=self.steps, sampler=self.sampler, guidance_scale=self.guidance_scale,
                                     generator=g)
            if probe is not None:
                probe.update(video.float().cpu(), [caption])
            frames = to_uint8(video[0].float().cpu())  # (T, H, W, 3)
            name = f"{i:02d}_{slug(caption)}"
            paths.append(save_and_log_video(out_dir / f"{name}.mp4", frames, self.fps, trainer.loggers,
                                            f"samples/{name}", trainer.global_step))
        log.info("wrote %d sample videos to %s", len(paths), out_dir)
        if probe is not None:
            scores = {f"samples/probe_{k}": float(v) for k, v in probe.compute().items() if v == v}  # drop NaN
            for lg in trainer.loggers:
                lg.log_metrics(scores, step=trainer.global_step)
            log.info("shapes probe on samples: %s", ", ".join(f"{k.split('_')[-1]}={v:.2f}" for k, v in scores.items()))
        return paths


def _is_shapes(caption: str) -> bool:
    try:
        parse_caption(caption)
    except ValueError:
        return False
    return True
