"""Square crops vs resolution x aspect-ratio x length buckets on a mixed-aspect set: pixels lost, throughput.

    python tools/benchmark.py buckets                          # 24 videos, 17 x 128 x 128 reference, 2 workers
    python tools/benchmark.py buckets --clips 192 --workers 0,2 --out runs/benchmarks/buckets.json

Writes its own set first: H.264 videos of 16:9, 9:16, 4:3 and 1:1 at two resolutions each
(``--sizes``, W x H) and several lengths (``--lengths``, frames at ``--source-fps``), with moving
texture so they cost what footage costs to decode, as a folder + CSV and as webdataset shards.
Then, in one run, both ways of making clips of it:

* **square**: today's clips, ``--clip`` T x S x S (shorter side resized, centre/random crop; a file
  shorter than T padded and masked), batches of ``--batch-size``;
* **buckets**: :class:`~latentvid.data.buckets.BucketSpec` over ``--aspects`` x ``--frames`` at the
  clip's area, sides rounded to ``--multiple``, batch sizes keeping ``--batch-size`` x the latent
  tokens of a square clip (counted with ``--spatial-factor`` / ``--temporal-factor``), steps drawn
  in proportion to the data.

(a) Pixels lost, over the whole set, computed from the same functions the loader uses (bucket
assignment, crop box, frames available): **crop loss** = share of the source pixels of the frames a
clip reads that the crop throws away; **padding** = share of the trained pixels that are padding
(masked frames of clips shorter than their length). (b) Throughput through exactly what training
uses (``SampleStream`` -> ``Batched`` or ``BucketBatched`` -> ``DataLoader``), endless streams, timed
from the first batch on: clips/s and latent tokens/s (every latent position of every batch,
``(1 + (T - 1) / tf) x H / sf x W / sf`` per clip, and those of valid frames only, which is what the
loss learns from), plus the masked-frame share of the batches actually read (a check on (a)).
Bucketed readers measure each sample (open + first frame) before decoding it: shards pay that
every time; a folder caches the shape per file, so its figures are those of later epochs. Prints
a table and writes JSON with the machine's load averages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latentvid.data.bucket_batches import BucketBatched, estimate_shares
from latentvid.data.buckets import BucketPlan, BucketSpec, assign, latent_tokens, lost_fraction, step_weights
from latentvid.data.clips import ClipSpec, available_frames
from latentvid.data.folder import VideoFolder
from latentvid.data.shards import ShardWriter, VideoShards
from latentvid.data.stream import Batched, SampleStream, keep_batch
from latentvid.data.video import write_video
from latentvid.files import write_json_atomic


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def texture_video(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a drifting gradient with panning noise (decodes like real footage, not like flat colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = rng.integers(0, 48, size=(height + 2 * num_frames, width + 3 * num_frames), dtype=np.uint8)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        base = np.stack([np.sin(xx / 23 + 0.1 * t + seed), np.cos(yy / 19 - 0.1 * t), np.sin((xx + yy) / 41)], -1)
        frames[t] = np.clip((base + 1) * 100 + noise[2 * t: 2 * t + height, 3 * t: 3 * t + width, None], 0, 255)
    return frames


def make_set(root: Path, args: argparse.Namespace) -> list[dict]:
    """The mixed-aspect videos as a folder + CSV and as shards; returns one row per video."""
    rows, lines = [], ["path,caption"]
    combos = [(size, length) for size in args.sizes for length in args.lengths]
    with ShardWriter(str(root / "shards" / "shard-%04d.tar"), samples_per_shard=args.per_shard) as writer:
        for i, ((w, h), length) in enumerate(tqdm(combos, desc="writing source videos", unit="video")):
            path = root / "videos" / f"{i:03d}_{w}x{h}_{length}f.mp4"
            write_video(path, texture_video(length, h, w, i), fps=args.source_fps, crf=23)
            lines.append(f"videos/{path.name},clip {i}")
            writer.write({"__key__": path.stem, "mp4": path.read_bytes(), "txt": f"clip {i}"})
            rows.append({"height": h, "width": w, "frames": length})
    (root / "videos.csv").write_text("\n".join(lines) + "\n")
    return rows


def pixel_budget(rows: list[dict], buckets: list | None, clip: ClipSpec, source_fps: float) -> dict:
    """Crop loss and padding share of the set (see the module docstring); ``buckets`` None: square clips."""
    read = lost = trained = padded = 0.0
    for r in rows:
        h, w = r["height"], r["width"]
        available = available_frames(r["frames"], source_fps, clip.fps, clip.stride)
        if buckets is None:
            frames, (out_h, out_w) = clip.num_frames, clip.hw
        else:
            b = buckets[assign(buckets, h, w, available, pad=clip.short == "pad")]
            frames, out_h, out_w = b.frames, b.height, b.width
        taken = min(frames, available)
        read += taken * h * w
        lost += taken * h * w * lost_fraction(h, w, out_h, out_w)
        trained += frames * out_h * out_w
        padded += (frames - taken) * out_h * out_w
    return {"crop_loss": lost / read, "padding": padded / trained}


def measure(loader: DataLoader, clips: int, sf: int, tf: int) -> dict:
    """clips/s, latent tokens/s (all, and of valid frames only) and the masked-frame share from ``loader``,
    timed after its first batch."""
    counted = tokens = valid = frames = masked = 0
    start = None
    shapes: dict[str, int] = {}
    for batch in loader:
        if start is None:  # timing starts at the first batch (worker start-up excluded)
            start = time.perf_counter()
            continue
        b, _, t, h, w = batch["video"].shape
        counted += b
        tokens += b * latent_tokens(h, w, t, sf, tf)
        valid += sum(latent_tokens(h, w, int(n), sf, tf) for n in batch["frame_mask"].sum(1))  # padding left out
        frames += b * t
        masked += int((~batch["frame_mask"]).sum())
        shapes[f"{h}x{w}x{t}"] = shapes.get(f"{h}x{w}x{t}", 0) + b
        if counted >= clips:
            break
    elapsed = time.perf_counter() - start
    return {"clips": counted, "seconds": elapsed, "clips_per_s": counted / elapsed, "tokens_per_s": tokens / elapsed,
            "valid_tokens_per_s": valid / elapsed, "masked_frames": masked / frames,
            "clips_by_shape": dict(sorted(shapes.items()))}


def square_loader(source, clip: ClipSpec, batch_size: int, workers: int, seed: int) -> DataLoader:
    stream = SampleStream(source, clip, resampled=True, seed=seed)
    return DataLoader(Batched(stream, batch_size), batch_size=None, num_workers=workers, collate_fn=keep_batch,
                      prefetch_factor=2 if workers else None, persistent_workers=False)


def bucket_loader(source, clip: ClipSpec, spec: BucketSpec, batch_size: int, workers: int, seed: int) -> DataLoader:
    h, w = clip.hw
    buckets = spec.build(h, w, clip.num_frames, batch_size)
    plan = BucketPlan(step_weights(estimate_shares(source, clip, buckets, spec.estimate), buckets), seed=seed)
    stream = SampleStream(source, clip, resampled=True, seed=seed, deferred=True)
    batched = BucketBatched(stream, buckets, plan, clip, seed=seed, buffer=spec.buffer)
    return DataLoader(batched, batch_size=None, num_workers=workers, collate_fn=keep_batch,
                      prefetch_factor=2 if workers else None, persistent_workers=False)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/benchmark.py buckets", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--clip", default="17x128x128", help="reference clip T x S x S (the square way's clips)")
    p.add_argument("--batch-size", type=int, default=4, help="square clips per batch (the token budget of a batch)")
    p.add_argument("--aspects", default="1:1,4:3,3:4,16:9,9:16", help="bucket aspect ratios (width:height)")
    p.add_argument("--frames", default="9,17", help="bucket frame counts")
    p.add_argument("--multiple", type=int, default=16, help="bucket sides are multiples of this")
    p.add_argument("--spatial-factor", type=int, default=8, help="VAE spatial factor (latent tokens)")
    p.add_argument("--temporal-factor", type=int, default=4, help="VAE temporal factor (latent tokens)")
    p.add_argument("--sizes", default="256x144,192x108,144x256,108x192,192x144,160x120,144x144,128x128",
                   help="source sizes W x H (16:9, 9:16, 4:3 and 1:1 at two resolutions)")
    p.add_argument("--lengths", default="12,20,40", help="source lengths in frames")
    p.add_argument("--source-fps", type=float, default=8.0, help="frame rate of the sources and of the clips")
    p.add_argument("--per-shard", type=int, default=4, help="videos per shard")
    p.add_argument("--workers", default="2", help="comma-separated DataLoader worker counts")
    p.add_argument("--sources", default="folder,shards", help="source kinds to time")
    p.add_argument("--clips", type=int, default=96, help="clips timed per configuration")
    p.add_argument("--backend", default="pyav", choices=["decord", "pyav"], help="video reader")
    p.add_argument("--seed", type=int, default=0, help="seed of starts, crops, resampling and the plan")
    p.add_argument("--keep", type=Path, help="write the source videos here (and keep them) instead of a temp dir")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/buckets.json"), help="JSON output path")
    args = p.parse_args(argv)
    try:
        t, h, w = (int(v) for v in args.clip.lower().split("x"))
        args.clip = (t, h, w)
        args.sizes = [_size(s) for s in args.sizes.split(",")]
        args.lengths, args.frames, args.workers = _ints(args.lengths), _ints(args.frames), _ints(args.workers)
    except ValueError as err:
        p.error(f"--clip / --sizes / --lengths / --frames / --workers: {err}")
    args.aspects = args.aspects.split(",")
    args.sources = args.sources.split(",")
    if set(args.sources) - {"folder", "shards"} or min(args.workers) < 0 or args.clips < 1 or args.batch_size < 1:
        p.error("sources from folder,shards; workers >= 0; clips and batch size >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)  # one thread per process: the workers are the parallelism
    t, h, w = args.clip
    sf, tf = args.spatial_factor, args.temporal_factor
    clip = ClipSpec(num_frames=t, size=(h, w), fps=args.source_fps, backend=args.backend, fallback=False)
    spec = BucketSpec(aspect_ratios=tuple(args.aspects), frames=tuple(args.frames), multiple=args.multiple,
                      spatial_factor=sf, temporal_factor=tf)
    buckets = spec.build(h, w, t, args.batch_size)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        rows = make_set(root, args)
        budget = {"square": pixel_budget(rows, None, clip, args.source_fps),
                  "buckets": pixel_budget(rows, buckets, clip, args.source_fps)}
        configs = [(s, way, n) for s in args.sources for n in args.workers for way in ("square", "buckets")]
        results = []
        for source_kind, way, workers in tqdm(configs, desc="measuring", unit="config"):
            source = (VideoFolder(str(root), "videos.csv") if source_kind == "folder"
                      else VideoShards(str(root / "shards" / "shard-*.tar"), shuffle_buffer=8))
            loader = (square_loader(source, clip, args.batch_size, workers, args.seed) if way == "square"
                      else bucket_loader(source, clip, spec, args.batch_size, workers, args.seed))
            results.append({"source": source_kind, "way": way, "workers": workers,
                            **measure(loader, args.clips, sf, tf)})
        first = results[0]  # measured again at the end: how far the machine's load drifted
        source = VideoFolder(str(root), "videos.csv") if first["source"] == "folder" else \
            VideoShards(str(root / "shards" / "shard-*.tar"), shuffle_buffer=8)
        repeat = measure(square_loader(source, clip, args.batch_size, first["workers"], args.seed), args.clips, sf, tf)
    load_after = os.getloadavg()

    print(f"\n{len(rows)} H.264 videos: {', '.join(f'{a}x{b}' for a, b in args.sizes)} (W x H) x "
          f"{args.lengths} frames at {args.source_fps:g} fps; reference clip {t}x{h}x{w}, batch {args.batch_size}; "
          f"latent tokens with spatial factor {sf}, temporal factor {tf}")
    print(f"buckets: {', '.join(f'{b.name} (batch {b.batch_size})' for b in buckets)}")
    print(f"\n(a) pixels lost over the set      {'crop loss':>10s} {'padding':>8s}")
    for way in ("square", "buckets"):
        print(f"    {way:30s} {100 * budget[way]['crop_loss']:9.1f}% {100 * budget[way]['padding']:7.1f}%")
    print(f"\n(b) throughput ({args.backend}; load average {load_before[0]:.2f} before)")
    print(f"    {'source':7s} {'workers':>7s} {'way':8s} {'clips/s':>8s} {'tokens/s':>9s} {'valid/s':>9s} "
          f"{'masked':>7s} {'x clips':>7s} {'x tokens':>8s} {'x valid':>7s}")
    for r in results:
        base = next(b for b in results if b["source"] == r["source"] and b["workers"] == r["workers"]
                    and b["way"] == "square")
        r["clips_ratio"] = r["clips_per_s"] / base["clips_per_s"]
        r["tokens_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["valid_tokens_ratio"] = r["valid_tokens_per_s"] / base["valid_tokens_per_s"]
        print(f"    {r['source']:7s} {r['workers']:7d} {r['way']:8s} {r['clips_per_s']:8.2f} {r['tokens_per_s']:9.0f} "
              f"{r['valid_tokens_per_s']:9.0f} {100 * r['masked_frames']:6.1f}% {r['clips_ratio']:7.2f} "
              f"{r['tokens_ratio']:8.2f} {r['valid_tokens_ratio']:7.2f}")
    print(f"    first row measured again at the end: {repeat['clips_per_s']:.2f} clips/s "
          f"(ratio {repeat['clips_per_s'] / first['clips_per_s']:.2f}); {os.cpu_count()} CPUs, load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    report = {
        "benchmark": "buckets", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "load_avg_before": load_before, "load_avg_after": load_after, "torch": torch.__version__},
        "clip": {"num_frames": t, "height": h, "width": w, "fps": args.source_fps, "batch_size": args.batch_size},
        "buckets": [{"name": b.name, "batch_size": b.batch_size} for b in buckets],
        "set": {"sizes_wh": args.sizes, "lengths": args.lengths, "videos": len(rows)},
        "pixels": budget, "rows": results, "baseline_repeat": repeat,
    }
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
