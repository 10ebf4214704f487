"""Scoring models against reference clips: an SR stage beside its plain baseline, a VAE's reconstructions.

Both read ``real`` clips (B, 3, T, H, W) in [-1, 1], run the model on them and report PSNR per
clip (averaged over clips) and SSIM per frame, as :func:`latentvid.evaluation.scoring.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentvid.evaluation.inputs import EvalError, one_line, read_batches, real_with_captions
from latentvid.evaluation.options import EvalOptions
from latentvid.evaluation.metrics import as_number, build_metrics, video_frames_01

if TYPE_CHECKING:
    import torch
    from torchmetrics import Metric


def sr_baseline(model: Any, low: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The plain upsampling an SR stage must beat: SSR -> bicubic to the target size (clamped to
    [-1, 1]), TSR -> each frame repeated. ``low`` (B, 3, t, h, w) -> (name, (B, 3, T, H, W))."""
    from latentvid.models.super_resolution import (
        SpatialSuperResolution, TemporalSuperResolution, expand_frames, upsample_space,
    )

    if isinstance(model, SpatialSuperResolution):
        f = model.scale_factor
        return "bicubic", upsample_space(low, (low.shape[-2] * f, low.shape[-1] * f), "bicubic").clamp(-1, 1)
    if isinstance(model, TemporalSuperResolution):
        return "repeat", expand_frames(low, model.frame_factor, "repeat")
    raise EvalError(f"--sr-ckpt needs an SSR or TSR checkpoint, got a {type(model).__name__}")


def _sr_metrics(opts: EvalOptions) -> dict[str, Metric]:
    """PSNR per clip (the MSE over all its scored frames: a static frame copied exactly would make a
    per-frame PSNR infinite), SSIM per frame as for --generated."""
    import torch
    from torchmetrics.image import PeakSignalNoiseRatio

    metrics = build_metrics(opts, 1)
    if "psnr" in metrics:
        metrics["psnr"] = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3, 4)).to(torch.device(opts.device))
    return metrics


def _sr_inputs(name: str, video: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, T, H, W) in [-1, 1] -> what metric ``name`` takes: clips (psnr) or frames (ssim) in [0, 1]."""
    if name == "psnr":
        return ((video.float() + 1) / 2).clamp(0, 1), ((ref.float() + 1) / 2).clamp(0, 1)
    return video_frames_01(video), video_frames_01(ref)


def _new_frames(model: Any, num_frames: int) -> list[int]:
    """Frames an SR stage is scored on: all for SSR; for TSR those between the input frames (the
    repeated-frame baseline copies the others exactly, an infinite PSNR)."""
    factor = getattr(model, "frame_factor", 1)
    return [j for j in range(num_frames) if factor == 1 or j % factor]


def evaluate_sr(opts: EvalOptions) -> dict[str, Any]:
    """Score an SR stage on degraded --real clips against the originals, beside its plain baseline.

    SSR is scored on every frame, TSR on the frames between its input frames; PSNR is per clip
    (averaged over clips), SSIM per frame. Clip batch j is sampled with seed ``--seed + j``. Reports psnr / ssim of the stage and of the
    baseline (``psnr_bicubic`` ...) and the gain in PSNR."""
    import torch

    from latentvid.data.video import to_uint8, video_info, write_video
    from latentvid.models.super_resolution import SuperResolutionDiffusion
    from latentvid.pipelines.loading import load_model

    names = [n for n in opts.metric_names if n != "probe"] or ["psnr", "ssim"]  # probe is the default
    if set(names) - {"psnr", "ssim"}:
        raise EvalError(f"--sr-ckpt scores psnr and ssim, not {sorted(set(names) - {'psnr', 'ssim'})}")
    if not opts.real:
        raise EvalError("--sr-ckpt needs --real: the high-resolution clips to degrade and compare with")
    try:
        model, ckpt = load_model(opts.sr_ckpt, opts.device, ema=not opts.no_ema)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(one_line(err)) from err
    if not isinstance(model, SuperResolutionDiffusion):
        raise EvalError(f"{opts.sr_ckpt} holds a {type(model).__name__}, not an SR stage")
    items = real_with_captions(opts.real)[: opts.limit or None]
    if not items:
        raise EvalError(f"no clips in --real {opts.real}")
    opts.metric_names = names
    ours, base = _sr_metrics(opts), _sr_metrics(opts)
    out = Path(opts.save_videos) if opts.save_videos else None
    report: dict[str, Any] = {"args": opts.as_report(), "metrics": {},
                              "checkpoint": {"path": str(Path(opts.sr_ckpt).resolve()),
                                             "global_step": ckpt.get("global_step"), "ema": not opts.no_ema},
                              "videos": []}
    device = torch.device(opts.device)
    n, baseline = 0, "baseline"
    for j, batch in enumerate(read_batches(items, opts.batch_size, "super-resolving")):
        truth = batch.videos.to(device)  # (B, 3, T, H, W)
        try:
            low, _ = model.degrade(truth, None)
        except ValueError as err:
            raise EvalError(f"{batch.paths[0]}: {one_line(err)}") from err
        fps = video_info(batch.paths[0])["fps"] or opts.fps
        g = torch.Generator(device=model.device).manual_seed(opts.seed + j)
        sr = model.sample(low, batch.captions, fps=fps, steps=opts.steps, sampler=opts.sampler,
                          guidance_scale=opts.guidance, eta=opts.eta, aug_level=opts.aug_level, generator=g)
        baseline, plain = sr_baseline(model, low)
        new = _new_frames(model, truth.shape[2])  # TSR: only the frames it had to invent
        for name in names:
            ours[name].update(*_sr_inputs(name, sr[:, :, new], truth[:, :, new]))
            base[name].update(*_sr_inputs(name, plain[:, :, new], truth[:, :, new]))
        for i, path in enumerate(batch.paths):
            report["videos"].append({"name": path.name, "caption": batch.captions[i], "seed": opts.seed + j})
            if out is not None:
                write_video(out / "sr" / path.name, to_uint8(sr[i].float().cpu()), fps=fps)
                write_video(out / baseline / path.name, to_uint8(plain[i].float().cpu()), fps=fps)
        n += truth.shape[0]
    results = report["metrics"]
    for name in names:
        results[name] = {"value": as_number(ours[name].compute()), "n": n}
        results[f"{name}_{baseline}"] = {"value": as_number(base[name].compute()), "n": n}
    if "psnr" in names:
        results[f"psnr_gain_over_{baseline}"] = {
            "value": results["psnr"]["value"] - results[f"psnr_{baseline}"]["value"], "n": n}
    return report


def evaluate_vae(opts: EvalOptions) -> dict[str, Any]:
    """Score a VAE's reconstructions (posterior mean, decoded) of the --real clips against them.

    PSNR per clip (averaged over clips) and SSIM per frame, as for ``--sr-ckpt``. Clips whose frame
    count does not fit the VAE's temporal factor are an error naming the file."""
    import torch

    from latentvid.data.video import to_uint8, write_video
    from latentvid.models.autoencoder import load_vae_from_checkpoint

    names = [n for n in opts.metric_names if n != "probe"] or ["psnr", "ssim"]
    if set(names) - {"psnr", "ssim"}:
        raise EvalError(f"--vae-ckpt scores psnr and ssim, not {sorted(set(names) - {'psnr', 'ssim'})}")
    if not opts.real:
        raise EvalError("--vae-ckpt needs --real: the clips to reconstruct")
    try:
        vae = load_vae_from_checkpoint(opts.vae_ckpt).to(opts.device)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(one_line(err)) from err
    items = real_with_captions(opts.real)[: opts.limit or None]
    if not items:
        raise EvalError(f"no clips in --real {opts.real}")
    opts.metric_names = names
    metrics = _sr_metrics(opts)
    out = Path(opts.save_videos) if opts.save_videos else None
    report: dict[str, Any] = {"args": opts.as_report(), "metrics": {},
                              "checkpoint": {"path": str(Path(opts.vae_ckpt).resolve())}, "videos": []}
    n = 0
    for batch in read_batches(items, opts.batch_size, "reconstructing"):
        video = batch.videos.to(opts.device)  # (B, 3, T, H, W)
        try:
            with torch.no_grad():
                recon = vae.decode(vae.encode(video)).clamp(-1, 1)
        except ValueError as err:
            raise EvalError(f"{batch.paths[0]}: {one_line(err)}") from err
        for name in names:
            metrics[name].update(*_sr_inputs(name, recon, video))
        for i, path in enumerate(batch.paths):
            report["videos"].append({"name": path.name})
            if out is not None:
                write_video(out / path.name, to_uint8(recon[i].float().cpu()), fps=opts.fps)
        n += video.shape[0]
    for name in names:
        report["metrics"][name] = {"value": as_number(metrics[name].compute()), "n": n}
    return report
