#!/usr/bin/env python
"""Generate videos from a trained checkpoint.

    python tools/sample.py --ckpt runs/base/.../last.ckpt --prompt "a red circle moving left" --out out.mp4
    python tools/sample.py --ckpt last.ckpt --prompts data/shapes/eval_prompts.txt --out samples/

The whole cascade (base -> SR stages, per-stage settings in the YAML, mp4 at the final frame rate):
    python tools/sample.py --cascade configs/cascade.yaml --prompt "a red circle moving left" --out out.mp4

Around given frames (a frame-conditioned checkpoint, configs/i2v.yaml, uses its trained conditioning; any
other the training-free reconstruction guidance, or --frames-method replacement):
    python tools/sample.py --ckpt runs/i2v --image first.png --prompt "a red circle moving left" --out out.mp4
    python tools/sample.py --ckpt runs/i2v --extend clip.mp4 --frames 33 --prompt "..." --guidance 0 --out longer.mp4
    python tools/sample.py --ckpt runs/i2v --interpolate clip.mp4 --factor 2 --prompt "..." --out finer.mp4

EMA weights are used when the checkpoint has them (``--no-ema`` for the raw weights). A distillation
checkpoint (configs/distill.yaml) samples its student in the student's own steps (``--steps`` defaults
to them), one network pass per step: ``--guidance`` is then an input of the network, not a second pass.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from latentvid.evaluation.options import SAMPLER_NAMES, SPACING_NAMES  # light: no torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint written by tools/fit.py (e.g. .../checkpoints/last.ckpt)")
    src.add_argument("--cascade", metavar="YAML",
                     help="cascade config (configs/cascade.yaml): base + SR stages with per-stage settings; --steps, "
                          "--sampler, --guidance, --eta, --frames, --height, --width and --fps then override the "
                          "base stage's, --no-ema applies to every stage")
    p.add_argument("--prompt", action="append", default=[], help="caption to generate (repeatable)")
    p.add_argument("--prompts", help="text file with one caption per line")
    p.add_argument("--out", required=True, help="output .mp4 for one caption, or a directory for several")
    p.add_argument("--grid", metavar="PNG",
                   help="also write one picture with each caption's video as a row of its frames")
    p.add_argument("--frames", type=int, help="number of frames (default: the training clip length)")
    p.add_argument("--height", type=int, help="height in pixels (default: the training size)")
    p.add_argument("--width", type=int, help="width in pixels (default: the training size)")
    p.add_argument("--fps", type=float,
                   help="frame rate to condition on and to write (default 8; --extend: the clip's own rate, "
                        "--interpolate: the clip's rate x --factor, so the result lasts as long; with --cascade: "
                        "the YAML's base fps)")
    p.add_argument("--steps", type=int,
                   help="sampler steps (default: the model's sample_steps; a distilled student's own count)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES,
                   help="sampler (default: the model's); dpmpp_2m and heun are second-order ODE solvers for few steps")
    p.add_argument("--spacing", choices=SPACING_NAMES, default="time",
                   help="sampling grid: uniform in t (default), uniform in logSNR or Karras et al.'s rho = 7, both "
                        "within logSNR [-8, 8]; few steps: --sampler dpmpp_2m --steps 10 --spacing logsnr "
                        "(text-to-video from --ckpt)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM eta (default 0 = deterministic)")
    p.add_argument("--seed", type=int, default=0, help="random seed; caption i uses seed + i")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: cuda if available)")
    given = p.add_argument_group("given frames (latentvid.pipelines.frames)")
    task = given.add_mutually_exclusive_group()
    task.add_argument("--image", metavar="PNG", help="image-to-video: animate this still (--frames frames)")
    task.add_argument("--extend", metavar="MP4",
                      help="continue this clip to --frames frames, window by window (--guidance 0 lets the given "
                           "frames alone set the motion: on the shapes i2v model it kept the held-out motion in "
                           "0.93 of the stretches in view, against 0.61 at guidance 3, README)")
    task.add_argument("--interpolate", metavar="MP4", help="insert frames between this clip's (--factor)")
    given.add_argument("--factor", type=int, default=2, help="--interpolate: frames out per frame in (default 2)")
    given.add_argument("--frames-method", choices=("trained", "replacement", "guidance"),
                       help="how the given frames condition the model (default: trained for a frame-conditioned "
                            "checkpoint, else reconstruction guidance; for --interpolate, replacement "
                            "measured 8 dB better than guidance on shapes, README)")
    given.add_argument("--frames-weight", type=float, default=1.0, help="w_r of reconstruction guidance (default 1)")
    given.add_argument("--window", type=int,
                       help="--extend: frames per window (default: the training clip length; on the 9-frame shapes "
                            "i2v model, --window 13 --overlap 9 kept the held-out motion in 0.98 of the stretches "
                            "in view against 0.93, README)")
    given.add_argument("--overlap", type=int,
                       help="--extend: given frames per window, 1 + 4 m with the causal VAE (default: about half)")
    given.add_argument("--stride", type=int, default=1,
                       help="--extend: extend every STRIDE-th frame (at fps / STRIDE), then interpolate between "
                            "(default 1): for motion slower than the model's own pace; the clip needs "
                            "1 + STRIDE (overlap - 1) frames (README)")
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    from latentvid.evaluation import clip_shape, load_model, write_samples

    captions = list(args.prompt)
    if args.prompts:
        if not Path(args.prompts).is_file():
            sys.exit(f"sample.py: prompts file {args.prompts} does not exist")
        captions += [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    if not captions:
        sys.exit("sample.py: give at least one --prompt or a --prompts file")
    given = args.image or args.extend or args.interpolate
    if args.extend and args.frames is None:
        sys.exit("sample.py: --extend needs --frames, the length to extend the clip to")
    if not args.extend and (args.window is not None or args.overlap is not None or args.stride != 1):
        sys.exit("sample.py: --window, --overlap and --stride set how --extend works; give --extend CLIP.mp4")
    if given and args.grid:
        sys.exit("sample.py: --grid does not work with --image / --extend / --interpolate yet")
    if args.spacing != "time" and (args.cascade or given):
        sys.exit("sample.py: --spacing works for text-to-video from --ckpt, not yet with --cascade / --image / "
                 "--extend / --interpolate")
    if args.cascade:
        if args.grid:
            sys.exit("sample.py: --grid works with --ckpt, not yet with --cascade")
        return run_cascade(args, captions)
    if args.fps is None and not (args.extend or args.interpolate):  # given clips bring their own rate
        args.fps = 8.0
    args.eta = 0.0 if args.eta is None else args.eta
    try:
        model, ckpt = load_model(args.ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"sample.py: {exc}")
    shape = clip_shape(ckpt, None if args.extend else args.frames, args.height, args.width)
    if shape is None:
        sys.exit("sample.py: the checkpoint does not record the clip shape; pass --frames, --height and --width")
    if given:
        return run_frames(args, captions, model, shape)
    paths = write_samples(model, captions, shape, args.out, seed=args.seed, fps=args.fps, steps=args.steps,
                          sampler=args.sampler, guidance=args.guidance, eta=args.eta, grid=args.grid,
                          spacing=args.spacing)
    for path, caption in zip(paths, captions):
        print(f"{path}\t{caption}")
    return paths


def run_frames(args: argparse.Namespace, captions: list[str], model, shape: tuple[int, int, int],
               upsample=None, out_fps: float | None = None) -> list[Path]:
    """--image / --extend / --interpolate: caption i with seed + i, written as mp4s (through the cascade's SR
    stages when ``upsample`` is given). ``shape``: (frames, height, width) of the base model's samples."""
    import torch

    from latentvid.data.video import video_info, write_video
    from latentvid.data.video_log import slug
    from latentvid.pipelines.frames import (
        FrameOptions,
        extend_video,
        image_to_video,
        interpolate_video,
        read_frames_input,
    )

    frames, height, width = shape
    out = Path(args.out)
    single = len(captions) == 1 and out.suffix == ".mp4"
    paths = []
    try:
        if args.image:
            source = read_frames_input(args.image, "image", height, width)
        else:
            source = read_frames_input(args.extend or args.interpolate, "video", height, width)
        if args.fps is None:  # the clip's rate: what the model is told and what the file plays at
            args.fps = video_info(args.extend or args.interpolate)["fps"] * (args.factor if args.interpolate else 1)
            print(f"conditioning on and writing at {args.fps:g} fps, the clip's rate"
                  + (f" x {args.factor}" if args.interpolate else "") + " (--fps to choose)", file=sys.stderr)
        opts = FrameOptions(method=args.frames_method, weight=args.frames_weight, steps=args.steps,
                            sampler=args.sampler, guidance=args.guidance, eta=args.eta or 0.0, fps=args.fps)
        for i, caption in enumerate(captions):
            g = torch.Generator(device=model.device).manual_seed(args.seed + i)
            if args.image:
                video = image_to_video(model, source, [caption], frames, opts, g)
            elif args.extend:
                video = extend_video(model, source, [caption], args.frames, args.window or frames, args.overlap, opts, g,
                                     stride=args.stride)
            else:
                video = interpolate_video(model, source, [caption], args.factor, opts, g)
            if upsample is not None:
                video = upsample(video, [caption], seed=args.seed + i, progress=False)
            path = out if single else out / f"{i:02d}_{slug(caption)}.mp4"
            write_video(path, video[0].float().cpu(), fps=out_fps or args.fps)
            paths.append(path)
            print(f"{path}\t{caption}")
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"sample.py: {exc}")
    return paths


def run_cascade(args: argparse.Namespace, captions: list[str]) -> list[Path]:
    """``--cascade``: load the YAML's checkpoints, check that the stages chain, sample, write mp4s."""
    import logging

    from latentvid.pipelines.cascade import CascadePipeline, load_config

    logging.basicConfig(level=logging.WARNING, format="sample.py: %(message)s")
    try:
        config = load_config(args.cascade)
        base = config.base
        for key in ("steps", "sampler", "guidance", "eta", "frames", "height", "width", "fps"):
            if getattr(args, key) is not None and not (key == "frames" and args.extend):  # (--extend: the target)
                # command-line values override the YAML's base stage
                setattr(base, key, getattr(args, key))
        if args.no_ema:
            base.ema = False
            for stage in config.stages:
                stage.ema = False
        pipe = CascadePipeline.from_config(config, args.device)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"sample.py: {exc}")
    if args.image or args.extend or args.interpolate:  # the base makes the video around the given frames
        args.fps = pipe.base_config.fps
        args.eta = pipe.base_config.eta
        for key in ("steps", "sampler", "guidance"):
            setattr(args, key, getattr(pipe.base_config, key))
        return run_frames(args, captions, pipe.base, pipe.base_shape, upsample=pipe.upsample, out_fps=pipe.output_fps)
    plan = pipe.plan()
    print("cascade: " + " -> ".join(f"{p.name} {p.output_shape[0]}x{p.output_shape[1]}x{p.output_shape[2]} "
                                    f"@ {p.fps:g} fps" for p in plan), file=sys.stderr)
    paths = pipe.generate(captions, args.out, seed=args.seed)
    for path, caption in zip(paths, captions):
        print(f"{path}\t{caption}")
    return paths


if __name__ == "__main__":
    main()
