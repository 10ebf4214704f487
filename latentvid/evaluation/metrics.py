"""The metrics an evaluation asks for, built from its options: torchmetrics Metrics on the evaluation device.

Videos are (B, 3, T, H, W) in [-1, 1]; image metrics (PSNR, SSIM) see frames (B*T, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latentvid.evaluation.inputs import EvalError, one_line
from latentvid.evaluation.options import EvalOptions

if TYPE_CHECKING:  # heavy imports stay lazy, so the tools' --help and input errors are quick
    import torch
    from torchmetrics import Metric

    from latentvid.metrics.fvd import FrechetVideoDistance


def as_number(value: Any) -> float:
    """A metric's value (0-d tensor or number) as a float."""
    return float(value.item() if hasattr(value, "item") else value)


def video_frames_01(videos: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` in [-1, 1] -> frames ``(B*T, 3, H, W)`` in [0, 1] (for image metrics)."""
    b, c, t, h, w = videos.shape
    frames = videos.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, 3, H, W)
    return ((frames.float() + 1) / 2).clamp(0, 1)


def build_metrics(opts: EvalOptions, clip_frames: int) -> dict[str, Metric]:
    """Construct the requested torchmetrics Metrics; a missing weight file or flag is an EvalError
    carrying the metric's own message."""
    import torch

    metrics: dict[str, Metric] = {}
    for name in opts.metric_names:
        try:
            if name == "probe":
                from latentvid.metrics.shapes import ShapesProbe

                metrics[name] = ShapesProbe()
            elif name == "fvd":
                metrics[name] = build_fvd(opts, clip_frames)
            elif name == "clip":
                from latentvid.metrics.clip_score import VideoCLIPScore

                metrics[name] = VideoCLIPScore(arch=opts.clip_arch, checkpoint=opts.clip_checkpoint)
            elif name == "psnr":
                from torchmetrics.image import PeakSignalNoiseRatio

                metrics[name] = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # per frame, then mean
            elif name == "ssim":
                from torchmetrics.image import StructuralSimilarityIndexMeasure

                metrics[name] = StructuralSimilarityIndexMeasure(data_range=1.0)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
            hint = {"fvd": " [flags: --i3d PATH | --i3d-torchscript PATH | --fvd-random-init]",
                    "clip": " [flags: --clip-checkpoint PATH | --clip-arch local-dir:PATH]"}.get(name, "")
            raise EvalError(f"{name}: {one_line(err)}{hint}") from err
    device = torch.device(opts.device)
    return {k: m.to(device) for k, m in metrics.items()}


def build_fvd(opts: EvalOptions, clip_frames: int) -> FrechetVideoDistance:
    import torch

    from latentvid.metrics.fvd import FrechetVideoDistance

    if opts.i3d and opts.i3d_torchscript:
        raise ValueError("give either --i3d or --i3d-torchscript, not both")
    num_frames = opts.fvd_frames or min(16, clip_frames)
    extractor = "i3d_torchscript" if opts.i3d_torchscript else "i3d"
    weights = opts.i3d_torchscript or opts.i3d
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)  # a random-init I3D is then the same on every run
        return FrechetVideoDistance(extractor, weights=weights, allow_random_init=opts.fvd_random_init,
                                    num_frames=num_frames, resize=opts.fvd_size)
