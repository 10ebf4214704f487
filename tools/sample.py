#!/usr/bin/env python
"""Generate videos from a trained checkpoint.

    python tools/sample.py --ckpt runs/base/.../last.ckpt --prompt "a red circle moving left" --out out.mp4
    python tools/sample.py --ckpt last.ckpt --prompts data/shapes/eval_prompts.txt --out samples/

The whole cascade (base -> SR stages, per-stage settings in the YAML, mp4 at the final frame rate):
    python tools/sample.py --cascade configs/cascade.yaml --prompt "a red circle moving left" --out out.mp4

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
    from latentvid.evaluation.options import SAMPLER_NAMES  # light: no torch

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
                   help="frame rate to condition on and to write (default 8; with --cascade: the YAML's base fps)")
    p.add_argument("--steps", type=int,
                   help="sampler steps (default: the model's sample_steps; a distilled student's own count)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES,
                   help="sampler (default: the model's); dpmpp_2m and heun are second-order ODE solvers for few steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--eta", type=float, help="DDIM eta (default 0 = deterministic)")
    p.add_argument("--seed", type=int, default=0, help="random seed; caption i uses seed + i")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: cuda if available)")
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
    if args.cascade:
        if args.grid:
            sys.exit("sample.py: --grid works with --ckpt, not yet with --cascade")
        return run_cascade(args, captions)
    args.fps = 8.0 if args.fps is None else args.fps
    args.eta = 0.0 if args.eta is None else args.eta
    try:
        model, ckpt = load_model(args.ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"sample.py: {exc}")
    shape = clip_shape(ckpt, args.frames, args.height, args.width)
    if shape is None:
        sys.exit("sample.py: the checkpoint does not record the clip shape; pass --frames, --height and --width")
    paths = write_samples(model, captions, shape, args.out, seed=args.seed, fps=args.fps, steps=args.steps,
                          sampler=args.sampler, guidance=args.guidance, eta=args.eta, grid=args.grid)
    for path, caption in zip(paths, captions):
        print(f"{path}\t{caption}")
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
            if getattr(args, key) is not None:  # command-line values override the YAML's base stage
                setattr(base, key, getattr(args, key))
        if args.no_ema:
            base.ema = False
            for stage in config.stages:
                stage.ema = False
        pipe = CascadePipeline.from_config(config, args.device)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"sample.py: {exc}")
    plan = pipe.plan()
    print("cascade: " + " -> ".join(f"{p.name} {p.output_shape[0]}x{p.output_shape[1]}x{p.output_shape[2]} "
                                    f"@ {p.fps:g} fps" for p in plan), file=sys.stderr)
    paths = pipe.generate(captions, args.out, seed=args.seed)
    for path, caption in zip(paths, captions):
        print(f"{path}\t{caption}")
    return paths


if __name__ == "__main__":
    main()
