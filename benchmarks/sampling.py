"""Fast sampling, measured: a teacher's solvers and its distilled students side by side.

``python tools/benchmark.py sampling --teacher runs/base --student 8=runs/distill/...8.ckpt
--student 4=runs/distill/last.ckpt`` samples the held-out shapes captions (``--per-prompt`` fresh
seeds each; video k has seed ``--seed + k`` in every row, so every row starts from the same noise)
with:

* the teacher at ``--reference-steps`` DDIM steps (the reference, classifier-free guidance),
* each ``--row SAMPLER:STEPS[:SPACING]`` of the teacher (default DDIM 50, DDIM 8, DPM-Solver++ 8
  and 10 on the uniform-t grid, and DDIM 10, DPM-Solver++ 8 and 10 on the uniform-logSNR grid),
* each ``--student STEPS=CKPT`` at its own step count (one network pass per step: the guidance
  weight is an input),

and prints one table: probe accuracies (colour, shape, direction, all), the mean squared distance
of each video to the reference video from the same noise (pixels in [-1, 1], averaged over every
value), the network passes per video and the seconds per video (wall-clock of the batched sampling
and decoding, measured in this run, and the ratio to the first ``--row``). ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentvid.data.shapes import HELD_OUT, video_caption  # noqa: E402
from latentvid.evaluation import probe_scores  # noqa: E402
from latentvid.evaluation.sampling import clip_shape, sample_videos  # noqa: E402
from latentvid.files import write_json_atomic  # noqa: E402
from latentvid.pipelines.loading import load_model  # noqa: E402


def parse_row(text: str) -> tuple[str, int, str]:
    """``"dpmpp_2m:8"`` -> ("dpmpp_2m", 8, "time"); ``"dpmpp_2m:8:logsnr"`` names the grid."""
    sampler, steps, spacing = (text.split(":") + ["time"])[:3]
    if not steps.isdigit() or int(steps) < 1 or text.count(":") > 2:
        raise argparse.ArgumentTypeError(f"--row wants SAMPLER:STEPS[:SPACING] (e.g. ddim:50), got {text!r}")
    return sampler, int(steps), spacing


def parse_student(text: str) -> tuple[int, str]:
    """``"8=path.ckpt"`` -> (8, "path.ckpt")."""
    steps, _, path = text.partition("=")
    if not steps.isdigit() or not path:
        raise argparse.ArgumentTypeError(f"--student wants STEPS=CKPT (e.g. 8=runs/distill/round3.ckpt), got {text!r}")
    return int(steps), path


def timed_samples(model, captions: list[str], shape: tuple[int, int, int], seed: int, batch_size: int,
                  **sampling) -> tuple[torch.Tensor, float]:
    """All videos (N, 3, T, H, W) of ``captions`` (video k: seed + k) and the seconds they took."""
    start = time.perf_counter()
    videos = sample_videos(model, captions, shape, seed=seed, batch_size=batch_size, **sampling)
    return videos, time.perf_counter() - start


def measure(name: str, videos: torch.Tensor, seconds: float, passes: int, captions: list[str],
            reference: torch.Tensor | None) -> dict:
    """One table row: probe accuracies, distance to the reference, cost."""
    row = {"row": name, **probe_scores(videos, captions), "passes_per_video": passes,
           "seconds_per_video": seconds / len(captions)}
    if reference is not None:
        row["mse_to_reference"] = float(((videos.float() - reference.float()) ** 2).mean())
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="benchmark.py sampling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="the teacher checkpoint (or run root); its EMA weights")
    p.add_argument("--student", type=parse_student, action="append", default=[], metavar="STEPS=CKPT",
                   help="a distilled student (ProgressiveDistillation checkpoint) sampling in STEPS steps")
    p.add_argument("--row", type=parse_row, action="append", default=None, metavar="SAMPLER:STEPS[:SPACING]",
                   help="a teacher row (default: ddim:50 ddim:8 dpmpp_2m:8 dpmpp_2m:10 ddim:10:logsnr "
                        "dpmpp_2m:8:logsnr dpmpp_2m:10:logsnr); SPACING: time (default), logsnr or karras")
    p.add_argument("--reference-steps", type=int, default=200, help="DDIM steps of the reference sample")
    p.add_argument("--per-prompt", type=int, default=8, help="fresh seeds per held-out caption (6 captions)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="write the rows here (JSON)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_wanted = args.row or [("ddim", 50, "time"), ("ddim", 8, "time"), ("dpmpp_2m", 8, "time"),
                               ("dpmpp_2m", 10, "time"), ("ddim", 10, "logsnr"), ("dpmpp_2m", 8, "logsnr"),
                               ("dpmpp_2m", 10, "logsnr")]
    captions = [video_caption(*c) for c in HELD_OUT for _ in range(args.per_prompt)]

    teacher, ckpt = load_model(args.teacher, device=args.device)
    shape = clip_shape(ckpt)
    common = {"seed": args.seed, "batch_size": args.batch_size, "guidance": args.guidance}
    print(f"sampling: {len(captions)} videos ({len(HELD_OUT)} held-out captions x {args.per_prompt} seeds from "
          f"{args.seed}), clip {shape}, guidance {args.guidance}, {torch.get_num_threads()} threads", flush=True)
    with torch.no_grad():
        reference, secs = timed_samples(teacher, captions, shape, sampler="ddim", steps=args.reference_steps, **common)
        rows = [measure(f"teacher DDIM {args.reference_steps} (reference)", reference, secs,
                        2 * args.reference_steps, captions, None)]
        print(rows[-1], flush=True)
        for sampler, steps, spacing in rows_wanted:
            videos, secs = timed_samples(teacher, captions, shape, sampler=sampler, steps=steps, spacing=spacing,
                                         **common)
            passes = 2 * steps * (2 if sampler == "heun" else 1)  # CFG: conditional + unconditional
            grid = "" if spacing == "time" else f" ({spacing} grid)"
            rows.append(measure(f"teacher {sampler} {steps}{grid}", videos, secs, passes, captions, reference))
            print(rows[-1], flush=True)
        del teacher
        for steps, path in args.student:
            student, _ = load_model(path, device=args.device)
            if student.hparams.sample_steps != steps:
                raise SystemExit(f"{path} samples in {student.hparams.sample_steps} steps, not {steps}")
            videos, secs = timed_samples(student, captions, shape, sampler="ddim", steps=steps, **common)
            rows.append(measure(f"student {steps}", videos, secs, steps, captions, reference))
            print(rows[-1], flush=True)

    base = rows[1]["seconds_per_video"] if len(rows) > 1 else rows[0]["seconds_per_video"]
    print(f"\n{'row':34s} {'colour':>6s} {'shape':>6s} {'dir':>6s} {'all':>6s} {'MSE to ref':>10s} "
          f"{'passes':>6s} {'s/video':>8s} {'speed-up':>8s}")
    for r in rows:
        mse = f"{r['mse_to_reference']:.4f}" if "mse_to_reference" in r else "-"
        print(f"{r['row']:34s} {r['colour']:6.2f} {r['shape']:6.2f} {r['direction']:6.2f} {r['all']:6.2f} "
              f"{mse:>10s} {r['passes_per_video']:6d} {r['seconds_per_video']:8.3f} "
              f"{base / r['seconds_per_video']:7.1f}x")
    if args.out:
        write_json_atomic(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "videos": len(captions),
                                     "rows": rows}, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
