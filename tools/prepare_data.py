"""Prepare data sets for latentvid.

    python tools/prepare_data.py shapes --out data/shapes [--seed 0 --size 32 --frames 8 ...]
"""

from __future__ import annotations

import argparse
import json
import sys

from latentvid.data.shapes import HELD_OUT, generate_shapes_dataset


def _shapes(args: argparse.Namespace) -> int:
    summary = generate_shapes_dataset(
        args.out,
        seed=args.seed,
        clips_per_combo=args.clips_per_combo,
        num_frames=args.frames,
        size=args.size,
        fps=args.fps,
        images_per_combo=args.images_per_combo,
        heldout_clips_per_combo=args.heldout_clips_per_combo,
        overwrite=args.overwrite,
        progress=True,
    )
    print(f"shapes data in {args.out}:")
    print(f"  {summary['num_videos']} training clips, {summary['num_images']} stills, "
          f"{summary['num_heldout']} held-out clips, {summary['num_bytes'] / 1024:.0f} KiB of media")
    print(f"  held-out combos: {', '.join(' '.join(c) for c in HELD_OUT)}")
    print(f"  parameters: {json.dumps(summary['params'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Prepare data sets for latentvid.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    shapes = commands.add_parser(
        "shapes",
        help="generate the synthetic shapes video-text data set",
        description="Generate the synthetic shapes data: one coloured shape moving over a dark "
        "background, captioned 'a {colour} {shape} moving {direction}' (stills: "
        "'a {colour} {shape}'). Writes videos/, images/, heldout/, their JSONL indexes, "
        "eval_prompts.txt and a .complete marker. Deterministic from --seed; an existing "
        "complete folder with the same parameters is left untouched.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    shapes.add_argument("--out", default="data/shapes", help="output folder")
    shapes.add_argument("--seed", type=int, default=0, help="random seed")
    shapes.add_argument("--size", type=int, default=32, help="frame side in pixels (even)")
    shapes.add_argument("--frames", type=int, default=8, help="frames per clip")
    shapes.add_argument("--fps", type=int, default=8, help="frame rate stored in the mp4 files")
    shapes.add_argument("--clips-per-combo", type=int, default=4,
                        help="training clips per (colour, shape, direction)")
    shapes.add_argument("--images-per-combo", type=int, default=2, help="stills per (colour, shape)")
    shapes.add_argument("--heldout-clips-per-combo", type=int, default=4,
                        help="evaluation clips per held-out combination")
    shapes.add_argument("--overwrite", action="store_true",
                        help="regenerate even if the folder holds a data set made with other parameters")
    shapes.set_defaults(func=_shapes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
