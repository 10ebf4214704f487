"""Scoring videos with the shapes probe, FVD, CLIP score and PSNR / SSIM, generated or read from files.

:func:`evaluate` runs one whole evaluation from :class:`~latentvid.evaluation.options.EvalOptions`
and returns the JSON-ready report ``tools/evaluate.py`` prints and writes; :func:`probe_scores`
scores videos already in memory. Videos are (B, 3, T, H, W) in [-1, 1]; image metrics see frames
(B*T, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentvid.evaluation.inputs import (
    EvalError,
    list_generated,
    list_real,
    one_line,
    pair_by_name,
    read_batches,
    read_checked,
    read_prompts,
)
from latentvid.evaluation.metrics import as_number, build_metrics, video_frames_01
from latentvid.evaluation.options import EvalOptions
from latentvid.evaluation.reference import evaluate_sr, evaluate_vae
from latentvid.evaluation.sampling import clip_shape, sample_batches

if TYPE_CHECKING:  # heavy imports stay lazy, so the tools' --help and input errors are quick
    import torch

    from latentvid.metrics.fvd import FrechetVideoDistance
    from latentvid.models.latent_diffusion import LatentDiffusion

READ_BATCH = 8  # decoded clips per metric update when reading files


def open_checkpoint(opts: EvalOptions) -> tuple[LatentDiffusion, dict[str, Any], tuple[int, int, int]]:
    """Load the model (EMA weights unless --no-ema) and the (T, H, W) to sample."""
    from latentvid.pipelines.loading import load_model

    try:
        model, ckpt = load_model(opts.ckpt, opts.device, ema=not opts.no_ema)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(one_line(err)) from err
    shape = clip_shape(ckpt, opts.frames, opts.height, opts.width)
    if shape is None:
        raise EvalError(f"{opts.ckpt} does not record the clip shape; pass --frames, --height and --width")
    info = {"path": str(Path(opts.ckpt).resolve()), "global_step": ckpt.get("global_step"), "ema": not opts.no_ema}
    return model, info, shape


def _probe_prediction(video: torch.Tensor) -> dict[str, str | None]:
    """Colour, shape and direction read from one ``(3, T, H, W)`` clip."""
    from latentvid.metrics.shapes import classify_video

    return classify_video(video)


def _check_probe_captions(captions: list[str], where: str) -> None:
    from latentvid.metrics.shapes import parse_caption

    for caption in captions:
        try:
            parse_caption(caption)
        except ValueError as err:
            raise EvalError(f"probe needs shapes captions ({where}): {one_line(err)}") from err


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    """Run the whole evaluation; returns the JSON-ready report (also written to ``--out``)."""
    import torch

    opts.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = False  # reproducible numbers on GPU too
    torch.backends.cudnn.deterministic = True
    if opts.sr_ckpt:
        return evaluate_sr(opts)
    if opts.vae_ckpt:
        return evaluate_vae(opts)
    names = opts.metric_names
    pairwise = [n for n in names if n in ("psnr", "ssim")]
    if ("fvd" in names or pairwise) and not opts.real:
        raise EvalError(f"{', '.join(n for n in names if n in ('fvd', 'psnr', 'ssim'))} need(s) --real")
    if pairwise and not opts.generated:
        raise EvalError("psnr/ssim compare a --generated folder (reconstruction / SR outputs) with --real references "
                        "paired by file name; they do not apply to --ckpt samples")

    report: dict[str, Any] = {"args": opts.as_report(),
                              "metrics": {}, "videos": [], "probe_per_caption": {}}
    real_files = list_real(opts.real) if opts.real else []
    if opts.ckpt:
        captions = (read_prompts(opts.prompts) if opts.prompts else []) + list(opts.prompt)
        if not captions:
            raise EvalError("--ckpt needs captions: --prompts FILE and/or --prompt TEXT")
        if "probe" in names:
            _check_probe_captions(captions, "--prompts/--prompt")
        model, ckpt_info, shape = open_checkpoint(opts)
        report["checkpoint"] = ckpt_info
        report["sample_shape"] = {"frames": shape[0], "height": shape[1], "width": shape[2]}
        metrics = build_metrics(opts, shape[0])
        batches = sample_batches(model, captions, shape, opts.num_per_prompt, opts.batch_size, opts.seed, opts.fps,
                                 opts.steps, opts.sampler, opts.guidance, opts.eta, opts.save_videos,
                                 spacing=opts.spacing)
    else:
        items = list_generated(opts.generated)
        if "probe" in names:
            for path, caption in items:
                _check_probe_captions([caption], str(path))
        pairs = pair_by_name([p for p, _ in items], real_files) if pairwise else {}
        from latentvid.data.video import video_info

        try:
            first_frames = video_info(items[0][0])["num_frames"]
        except (FileNotFoundError, ValueError) as err:
            raise EvalError(one_line(err)) from err
        metrics = build_metrics(opts, first_frames)
        batches = read_batches(items, READ_BATCH, "reading generated")
    device = torch.device(opts.device)

    from latentvid.metrics.shapes import ShapesProbe

    per_caption: dict[str, ShapesProbe] = {}
    seeds: list[int] = []
    n_generated = 0
    for batch in batches:
        videos = batch.videos.to(device)
        n_generated += videos.shape[0]
        seeds += [s for s in batch.seeds if s is not None]
        if "fvd" in metrics:
            _check_frames(metrics["fvd"], videos.shape[2], batch.names[0])
            metrics["fvd"].update(videos, real=False)
        if "clip" in metrics:
            metrics["clip"].update(videos, batch.captions)
        if "probe" in metrics:
            metrics["probe"].update(videos, batch.captions)
        if pairwise:
            refs = torch.stack([_paired(p, pairs[p], v) for p, v in zip(batch.paths, batch.videos)]).to(device)
            for n in pairwise:
                metrics[n].update(video_frames_01(videos), video_frames_01(refs))
        for i, caption in enumerate(batch.captions):
            row: dict[str, Any] = {"name": batch.names[i], "caption": caption}
            if batch.paths[i] is not None:
                row["path"] = str(batch.paths[i])
            if batch.seeds[i] is not None:
                row["seed"] = batch.seeds[i]
            if "probe" in metrics:
                row["probe"] = _probe_prediction(videos[i])
                per_caption.setdefault(caption, ShapesProbe()).update(videos[i : i + 1].cpu(), [caption])
            report["videos"].append(row)

    n_real = 0
    if "fvd" in metrics:
        for batch in read_batches([(p, "") for p in real_files], READ_BATCH, "reading real"):
            _check_frames(metrics["fvd"], batch.videos.shape[2], str(batch.paths[0]))
            metrics["fvd"].update(batch.videos.to(device), real=True)
            n_real += batch.videos.shape[0]

    results = report["metrics"]
    for name, metric in metrics.items():
        try:
            value = metric.compute()
        except RuntimeError as err:  # e.g. FVD with fewer than 2 videos on a side
            raise EvalError(f"{name}: {one_line(err)}") from err
        if name == "probe":
            for key, v in value.items():
                results[f"probe/{key}"] = {"value": as_number(v), "n": n_generated}
        elif name == "fvd":
            results["fvd"] = {"value": as_number(value), "n": n_generated, "n_real": n_real,
                              "feature_extractor": "i3d_torchscript" if opts.i3d_torchscript else "i3d",
                              "random_init": not (opts.i3d or opts.i3d_torchscript),
                              "num_frames": metric.num_frames, "resize": metric.resize}
        else:
            results[name] = {"value": as_number(value), "n": n_generated}
    report["probe_per_caption"] = {c: {"n": int(m.num_clips), **{k: as_number(v) for k, v in m.compute().items()}}
                                   for c, m in per_caption.items()}
    report["seeds"] = seeds
    return report


def _check_frames(fvd: FrechetVideoDistance, frames: int, where: str) -> None:
    if frames < fvd.num_frames:
        raise EvalError(f"FVD uses {fvd.num_frames} frames per clip but {where} has {frames}; pass --fvd-frames")


def _paired(generated: Path, real: Path, video: torch.Tensor) -> torch.Tensor:
    """The reference clip for ``generated``, checked to have the same (3, T, H, W) shape."""
    ref = read_checked(real)
    if ref.shape != video.shape:
        raise EvalError(f"psnr/ssim need equal shapes: {generated} is {tuple(video.shape)} (C, T, H, W) but "
                        f"{real} is {tuple(ref.shape)}")
    return ref


def probe_scores(videos: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Shapes-probe accuracy of videos (B, 3, T, H, W) in [-1, 1] against their shapes captions:
    ``{"colour", "shape", "direction", "all"}`` -> fraction of videos that match."""
    from latentvid.metrics.shapes import ShapesProbe

    _check_probe_captions(captions, "probe_scores")
    probe = ShapesProbe()
    probe.update(videos.float().cpu(), captions)
    return {k: as_number(v) for k, v in probe.compute().items()}
