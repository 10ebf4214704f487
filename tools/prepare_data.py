"""Prepare data sets for latentvid.

    python tools/prepare_data.py shapes --out data/shapes [--seed 0 --size 32 --frames 9 ...]
    python tools/prepare_data.py shapes --out data/shapes --shards data/shapes-shards   # ... and as shards
    python tools/prepare_data.py shards --root webvid/ --index results.csv --caption-column name \
        --path-format "{page_dir}/{videoid}.mp4" --key-column videoid --out webvid-shards/%06d.tar
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from latentvid.data.shapes import HELD_OUT, TRAVEL_RANGE, generate_shapes_dataset  # noqa: E402

MAX_LISTED = 20  # skipped files listed by name in the report


def _report(result: dict, out: str) -> None:
    """Print what was written and which files were left out (and why)."""
    print(f"wrote {result['num_samples']} samples in {len(result['paths'])} shards to {out}")
    skipped = result["skipped"]
    if skipped:
        print(f"skipped {len(skipped)} rows:")
        for name, reason in skipped[:MAX_LISTED]:
            print(f"  {name}: {reason}")
        if len(skipped) > MAX_LISTED:
            print(f"  ... and {len(skipped) - MAX_LISTED} more")


def _shards(args: argparse.Namespace) -> int:
    from latentvid.data.folder import ImageFolder, VideoFolder
    from latentvid.data.shards import folder_to_shards
    from latentvid.data.sources import DataError

    cls = VideoFolder if args.kind == "video" else ImageFolder
    columns = dict(path_column=args.path_column, caption_column=args.caption_column, key_column=args.key_column,
                   path_format=args.path_format)
    if args.kind == "video":
        columns.update(fps_column=args.fps_column, start_column=args.start_column, end_column=args.end_column)
    try:
        folder = cls(args.root, args.index, **columns)
    except (FileNotFoundError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = folder_to_shards(folder, args.out, args.samples_per_shard, check=not args.no_check, progress=True)
    _report(result, args.out)
    if not result["num_samples"]:
        print(f"error: nothing written: no row of {folder.describe()} was usable", file=sys.stderr)
        return 2
    return 0


def _shapes_to_shards(root: str, out: str, samples_per_shard: int) -> None:
    """The shapes folder's three indexes as videos-*.tar, images-*.tar, heldout-*.tar (+ eval_prompts.txt)."""
    from latentvid.data.folder import ImageFolder, VideoFolder
    from latentvid.data.shards import folder_to_shards

    Path(out).mkdir(parents=True, exist_ok=True)
    for name, cls in (("videos", VideoFolder), ("images", ImageFolder), ("heldout", VideoFolder)):
        folder = cls(root, f"{name}.jsonl", key_column="key")
        result = folder_to_shards(folder, str(Path(out) / f"{name}-%06d.tar"), samples_per_shard, progress=True)
        _report(result, str(Path(out) / f"{name}-*.tar"))
    shutil.copy(Path(root) / "eval_prompts.txt", Path(out) / "eval_prompts.txt")


def _shapes(args: argparse.Namespace) -> int:
    summary = generate_shapes_dataset(
        args.out,
        seed=args.seed,
        clips_per_combo=args.clips_per_combo,
        leave_ratio=args.leave_ratio,
        travel_range=tuple(args.travel_range),
        frame_rates=args.frame_rates,
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
    if args.shards:
        _shapes_to_shards(args.out, args.shards, args.samples_per_shard)
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
    shapes.add_argument("--frames", type=int, default=9,
                        help="frames per clip (9 = 1 + 4 * 2 fits the causal VAE's 4x temporal compression)")
    shapes.add_argument("--fps", type=int, default=8, help="frame rate stored in the mp4 files")
    shapes.add_argument("--clips-per-combo", type=int, default=4,
                        help="training clips per (colour, shape, direction)")
    shapes.add_argument("--leave-ratio", type=float, default=0.0,
                        help="share of each combination's training clips in which the shape may leave the frame "
                             "(extension fine-tunes; configs/i2v.yaml uses 1.0)")
    shapes.add_argument("--travel-range", type=float, nargs=2, metavar=("LO", "HI"), default=list(TRAVEL_RANGE),
                        help="training clips' travel over a clip, as fractions of the frame side (a wider range "
                             "down to slow clips teaches extension of motion that stays in view longer)")
    shapes.add_argument("--frame-rates", type=float, nargs="+", metavar="FPS",
                        help="training clips' frame rates, cycled over each combination's clips (default: all at "
                             "--fps); a clip at r fps shows the same motion r / fps times as densely")
    shapes.add_argument("--images-per-combo", type=int, default=2, help="stills per (colour, shape)")
    shapes.add_argument("--heldout-clips-per-combo", type=int, default=4,
                        help="evaluation clips per held-out combination")
    shapes.add_argument("--overwrite", action="store_true",
                        help="regenerate even if the folder holds a data set made with other parameters")
    shapes.add_argument("--shards", metavar="DIR", help="also write the data as webdataset shards in DIR "
                        "(videos-*.tar, images-*.tar, heldout-*.tar)")
    shapes.add_argument("--samples-per-shard", type=int, default=64, help="samples per shard with --shards")
    shapes.set_defaults(func=_shapes)

    shards = commands.add_parser(
        "shards",
        help="turn a folder + CSV/TSV/JSONL index into webdataset tar shards",
        description="Write the files listed in an index (a WebVid-style CSV, a TSV or JSON lines) as "
        "webdataset shards: each sample is key.<ext> (the file as it is) + key.txt (the caption) + "
        "key.json (caption, key, path and any fps / start / end). Rows whose file is missing or does "
        "not decode are left out and listed at the end. Read the shards with "
        "latentvid.data.shards.VideoShards / ImageShards.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    shards.add_argument("--root", required=True, help="folder the index's paths are relative to")
    shards.add_argument("--index", required=True, help="index file inside --root (.csv, .tsv or .jsonl)")
    shards.add_argument("--out", required=True,
                        help="shard path pattern with one integer field, e.g. shards/videos-%%06d.tar")
    shards.add_argument("--kind", choices=("video", "image"), default="video", help="what the files are")
    shards.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar file")
    shards.add_argument("--path-column", default="path", help="index column with the file path")
    shards.add_argument("--caption-column", default="caption", help="index column with the caption")
    shards.add_argument("--key-column", help="index column with a unique id (default: the path)")
    shards.add_argument("--path-format", help="build the path from columns, e.g. '{page_dir}/{videoid}.mp4'")
    shards.add_argument("--fps-column", help="optional column with the frame rate (videos)")
    shards.add_argument("--start-column", help="optional column with a start time in seconds (videos)")
    shards.add_argument("--end-column", help="optional column with an end time in seconds (videos)")
    shards.add_argument("--no-check", action="store_true",
                        help="do not decode each file's first frame before writing it (faster)")
    shards.set_defaults(func=_shards)
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
