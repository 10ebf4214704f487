"""Decoded clips per second through the real data pipeline: decord vs PyAV, folder vs shards.

    python tools/benchmark.py data                                # 16 x 256 x 256 clips, 0 / 1 / 2 workers
    python tools/benchmark.py data --clip 8x128x128 --workers 0,4,8 --clips 256 --out runs/bench/data.json

Makes its own source videos first (``--videos`` H.264 files of ``--source-size`` at
``--source-fps``, ``--source-frames`` frames each, with moving texture so they cost what real
footage costs to decode) in a temporary folder, as a folder + CSV and as webdataset shards. Then,
for every (source, reader, worker count), it streams ``--clips`` clips through exactly what
training uses (``SampleStream`` -> ``Batched`` -> ``DataLoader``: frame sampling at ``--fps``,
random start, shorter-side resize and random crop, float conversion) and times them from the
first batch on (so worker start-up is mostly excluded). Every row's ratio is against the first configuration
(decord, folder, the first worker count) measured in the same run, so the numbers compare across
machines and loads. Prints a table and writes JSON (with CPU count and load averages: on a
shared machine the load says how much to trust the absolute figures).
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

from latentvid.data.clips import ClipSpec
from latentvid.data.folder import VideoFolder
from latentvid.data.shards import ShardWriter, VideoShards
from latentvid.data.stream import Batched, SampleStream, keep_batch
from latentvid.data.video import write_video
from latentvid.files import write_json_atomic


def _shape(text: str, parts: int) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.lower().split("x"))
    if len(values) != parts or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected {parts} positive integers joined by 'x', got {text!r}")
    return values


def synthetic_video(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a drifting colour gradient with moving fine texture (realistic decode cost)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.integers(0, 48, size=(height + num_frames * 2, width + num_frames * 3), dtype=np.uint8)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        phase = 0.1 * t + seed
        base = np.stack([np.sin(xx / 37 + phase), np.cos(yy / 29 - phase), np.sin((xx + yy) / 53 + 0.5 * phase)], -1)
        moving = texture[2 * t: 2 * t + height, 3 * t: 3 * t + width, None]  # the texture pans 3 px / frame
        frames[t] = np.clip((base + 1) * 100 + moving, 0, 255).astype(np.uint8)
    return frames


def make_sources(root: Path, args: argparse.Namespace) -> tuple[VideoFolder, VideoShards, int]:
    """Write the synthetic videos as a folder + CSV and as shards; returns both sources and bytes on disk."""
    width, height = args.source_size
    lines = ["path,caption"]
    with ShardWriter(str(root / "shards" / "shard-%04d.tar"), samples_per_shard=args.per_shard) as writer:
        for i in tqdm(range(args.videos), desc="writing source videos", unit="video"):
            path = root / "videos" / f"{i:04d}.mp4"
            write_video(path, synthetic_video(args.source_frames, height, width, i), fps=args.source_fps, crf=23)
            lines.append(f"videos/{path.name},synthetic clip {i}")
            writer.write({"__key__": f"{i:04d}", "mp4": path.read_bytes(), "txt": f"synthetic clip {i}"})
    (root / "videos.csv").write_text("\n".join(lines) + "\n")
    size = sum(p.stat().st_size for p in (root / "videos").iterdir())
    shards = VideoShards(str(root / "shards" / "shard-*.tar"), shuffle_buffer=16)
    return VideoFolder(str(root), "videos.csv"), shards, size


def measure(source, spec: ClipSpec, workers: int, clips: int, batch_size: int, seed: int) -> dict:
    """Clips per second streaming ``clips`` clips (after the first batch) with ``workers`` workers."""
    stream = SampleStream(source, spec, resampled=True, epoch_size=clips + batch_size * max(1, workers), seed=seed)
    loader = DataLoader(Batched(stream, batch_size, drop_last=True), batch_size=None, num_workers=workers,
                        collate_fn=keep_batch, prefetch_factor=2 if workers else None)
    counted, start, skipped = 0, None, 0
    for batch in loader:
        skipped += batch["skipped"]
        if start is None:  # timing starts at the first batch (process start-up excluded)
            start = time.perf_counter()
            continue
        counted += len(batch["key"])
    elapsed = time.perf_counter() - start
    return {"clips": counted, "seconds": elapsed, "clips_per_s": counted / elapsed, "skipped": skipped}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/benchmark.py data", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--clip", type=lambda s: _shape(s, 3), default=(16, 256, 256), help="clip T x H x W")
    p.add_argument("--fps", type=float, default=8.0, help="target frame rate of the clips")
    p.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--backends", default="decord,pyav", help="readers to compare")
    p.add_argument("--sources", default="folder,shards", help="source kinds to compare")
    p.add_argument("--clips", type=int, default=48, help="clips timed per configuration")
    p.add_argument("--batch-size", type=int, default=4, help="clips per batch")
    p.add_argument("--videos", type=int, default=16, help="synthetic source videos to write")
    p.add_argument("--source-size", type=lambda s: _shape(s, 2), default=(320, 256), help="source W x H")
    p.add_argument("--source-frames", type=int, default=64, help="frames per source video")
    p.add_argument("--source-fps", type=float, default=24.0, help="frame rate of the source videos")
    p.add_argument("--per-shard", type=int, default=4, help="videos per shard")
    p.add_argument("--threads", type=int, default=1, help="decoder threads per reader")
    p.add_argument("--seed", type=int, default=0, help="seed of starts, crops and resampling")
    p.add_argument("--keep", type=Path, help="write the source videos here (and keep them) instead of a temp dir")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/data.json"), help="JSON output path")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.backends = args.backends.split(",")
    args.sources = args.sources.split(",")
    if min(args.workers) < 0 or args.clips < 1 or set(args.backends) - {"decord", "pyav"} \
            or set(args.sources) - {"folder", "shards"}:
        p.error("workers >= 0, clips >= 1, backends from decord,pyav, sources from folder,shards")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)  # one thread per process: the workers are the parallelism
    t, h, w = args.clip
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        folder, shards, nbytes = make_sources(root, args)
        sources = {"folder": folder, "shards": shards}
        rows = []
        configs = [(s, b, n) for s in args.sources for b in args.backends for n in args.workers]
        for source, backend, workers in tqdm(configs, desc="measuring", unit="config"):
            spec = ClipSpec(num_frames=t, size=(h, w), fps=args.fps, backend=backend, fallback=False,
                            threads=args.threads)
            result = measure(sources[source], spec, workers, args.clips, args.batch_size, args.seed)
            rows.append({"source": source, "backend": backend, "workers": workers, **result})
        # the baseline again at the end: how much the machine's load drifted during the run
        source, backend, workers = configs[0]
        spec = ClipSpec(num_frames=t, size=(h, w), fps=args.fps, backend=backend, fallback=False, threads=args.threads)
        repeat = measure(sources[source], spec, workers, args.clips, args.batch_size, args.seed)
    base = rows[0]["clips_per_s"]
    print(f"\ndecoded clips/s, clip {t}x{h}x{w} at {args.fps:g} fps from {args.videos} H.264 videos of "
          f"{args.source_size[0]}x{args.source_size[1]}, {args.source_frames} frames at {args.source_fps:g} fps "
          f"(batch {args.batch_size}, {args.threads} decoder thread(s) per reader)")
    print(f"{'source':8s} {'reader':7s} {'workers':>7s} {'clips/s':>8s} {'ms/clip':>8s} {'ratio':>6s}")
    for r in rows:
        r["ratio"] = r["clips_per_s"] / base
        print(f"{r['source']:8s} {r['backend']:7s} {r['workers']:7d} {r['clips_per_s']:8.2f} "
              f"{1000 / r['clips_per_s']:8.1f} {r['ratio']:6.2f}")
    load_after = os.getloadavg()
    print(f"baseline: {rows[0]['source']} / {rows[0]['backend']} / {rows[0]['workers']} workers, measured again at "
          f"the end: {repeat['clips_per_s']:.2f} clips/s (ratio {repeat['clips_per_s'] / base:.2f}); "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    report = {
        "benchmark": "data", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "load_avg_before": load_before, "load_avg_after": load_after, "torch": torch.__version__},
        "clip": {"num_frames": t, "height": h, "width": w, "fps": args.fps},
        "source": {"videos": args.videos, "size_wh": list(args.source_size), "frames": args.source_frames,
                   "fps": args.source_fps, "bytes": nbytes, "per_shard": args.per_shard},
        "batch_size": args.batch_size, "threads": args.threads, "rows": rows,
        "baseline_repeat": {**repeat, "ratio": repeat["clips_per_s"] / base},
    }
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
