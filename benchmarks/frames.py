"""Conditioning on given frames, measured on held-out shapes combinations (issue 18 item 4).

``python tools/benchmark.py frames --base runs/base [--i2v runs/i2v] [options]`` renders ``--samples``
clips of the held-out colour / shape / direction combinations (fresh seeds from ``--seed``) and, for
each method side by side (training-free replacement and reconstruction guidance at each ``--weights``
w_r on the base checkpoint; the trained frame conditioning of the ``--i2v`` checkpoint), measures:

* extension, ``--input-frames`` (9) -> ``--extend-to`` (33) frames (windows of ``--window`` frames, the
  training length by default, overlap 5): the shapes probe
  (:func:`latentvid.metrics.shapes.classify_video`) on each 9-frame stretch of new frames (stride 8)
  against the probe of the input clip (colour, shape, direction, and all three), and at each window
  seam the jump of the shape's centroid between the last kept and the first new frame over the input
  clip's mean per-frame step (the share of seams at most 1.5x, and the median ratio). Two sets of
  inputs:

  - ``extend``: clips at the data's speeds. The same probe on their true continuations (the motion
    rendered on at the same step, ``render_clip(..., extend_to=)``) is the first row: a shape leaves a
    32-pixel frame within about 16 frames, so no faithful extension reaches 1.0 over 33. The "in view"
    columns count only the stretches where the true continuation still reads as the input (colour,
    shape and direction);
  - ``extend_in_view``: clips slow enough that their motion stays in view for all ``--extend-to``
    frames (``held_out_inputs(in_view=True)``: the data's travel spread over the whole length), where
    every stretch of a faithful extension reads as the input. They are the data's motion per second at
    a higher frame rate (:func:`in_view_fps`: 32 fps for 33 frames; the data is at 8). The methods are
    conditioned on ``--stay-fps`` (default 8, the rate the shapes models know; ``--stay-fps 32`` tells a
    model trained on several rates, ``ShapesDataModule(frame_rates=...)``, the clips' true one). Their
    steps are under a pixel a frame,
    so whole-pixel shapes move in uneven one-pixel steps and the seam figure is noisy there even for
    the truth (its own first row);
* image-to-video: PSNR of the generated first frame against the given image, beside the VAE's
  reconstruction PSNR of that image (the best a latent model can do); whether the clip moves (probe
  direction not static) and whether it moves the caption's way;
* interpolation, 5 -> 9 frames (every other frame of a rendered 9-frame clip given): PSNR of the new
  frames against the true ones, beside linear blending of their neighbours.

Prints one table and writes everything (per-sample values included) to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentvid.data.shapes import FPS, HELD_OUT, render_clip, video_caption  # noqa: E402
from latentvid.data.video import from_uint8  # noqa: E402
from latentvid.evaluation.figures import write_frame_grid  # noqa: E402
from latentvid.files import write_json_atomic  # noqa: E402
from latentvid.metrics.shapes import classify_video, foreground_mask  # noqa: E402
from latentvid.pipelines.frames import (  # noqa: E402
    FrameOptions, default_overlap, extend_video, image_to_video, interpolate_video)

ATTRIBUTES = ("colour", "shape", "direction")
SEAM_LIMIT = 1.5  # the issue's bound on a seam's jump, in in-clip per-frame steps
GRID_CLIPS = 3  # clips per extension input set in --grid
DATA_FRAMES = 9  # the shapes data's clip length (configs/base.yaml): TRAVEL_RANGE is the travel over it


def in_view_fps(extend_to: int) -> float:
    """Frame rate of ``held_out_inputs(in_view=True)`` clips: the data's motion per second (``TRAVEL_RANGE``
    over ``DATA_FRAMES`` frames at ``FPS``) spread over ``extend_to`` frames."""
    return FPS * (extend_to - 1) / (DATA_FRAMES - 1)


def held_out_inputs(n: int, seed: int, frames: int = 9, size: int = 32, extend_to: int | None = None,
                    in_view: bool = False) -> tuple[list[str], Tensor]:
    """n captions and clips (n, 3, frames, size, size) in [-1, 1]: held-out combination i % 6, seed + i.
    With ``extend_to`` the clips come with their motion continued, (n, 3, extend_to, size, size): their
    first ``frames`` frames are the clips (``render_clip(..., extend_to=)``). ``in_view`` (needs
    ``extend_to``): clips whose motion stays in view for all ``extend_to`` frames, i.e. ``extend_to``-frame
    clips at the data's travel (``TRAVEL_RANGE`` over the whole length): the data's motion per second
    sampled at :func:`in_view_fps` instead of ``FPS``."""
    if in_view and extend_to is None:
        raise ValueError("in_view needs extend_to")
    combos = [HELD_OUT[i % len(HELD_OUT)] for i in range(n)]

    def render(c: tuple[str, str, str], rng: np.random.Generator) -> np.ndarray:
        if in_view:
            return render_clip(*c, num_frames=extend_to, size=size, rng=rng)
        return render_clip(*c, num_frames=frames, size=size, rng=rng, extend_to=extend_to)

    clips = [from_uint8(render(c, np.random.default_rng(seed + i))) for i, c in enumerate(combos)]
    return [video_caption(*c) for c in combos], torch.stack(clips)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR (dB) per sample of a, b (B, ...) in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def centroids(video: Tensor) -> Tensor:
    """Foreground centroid (x, y) per frame of video (3, T, H, W): (T, 2), NaN where no foreground."""
    mask = foreground_mask(video).float()  # (T, H, W)
    n = mask.sum((1, 2))
    ys, xs = torch.arange(mask.shape[1]).float(), torch.arange(mask.shape[2]).float()
    cx = (mask.sum(1) * xs).sum(1) / n
    cy = (mask.sum(2) * ys).sum(1) / n
    return torch.stack([cx, cy], dim=1)


def seam_ratios(video: Tensor, seams: list[int], step: float) -> list[float]:
    """|centroid[k] - centroid[k - 1]| / step at each seam frame k of video (3, T, H, W) (NaN: no shape)."""
    c = centroids(video)
    return [float((c[k] - c[k - 1]).norm() / max(step, 1e-6)) for k in seams]


def mean_step(clip: Tensor) -> float:
    """The input clip's mean per-frame centroid displacement (pixels)."""
    c = centroids(clip)
    return float((c[1:] - c[:-1]).norm(dim=1).nanmean())


def speed_ratio(video: Tensor, clip: Tensor) -> float:
    """How fast video (3, T, H, W) moves its shape against clip (3, T', H, W): mean per-frame centroid step
    over video's frames (where the shape is seen in both of a pair) / clip's. NaN: no two such frames."""
    return mean_step(video) / max(mean_step(clip), 1e-6)


def extension_scores(videos: Tensor, clips: Tensor, window: int, overlap: int, truth: Tensor | None = None) -> dict:
    """Probe agreement of each new 9-frame stretch with the input clip, and the seams' jumps.

    ``first_direction`` and ``first_speed``: the first new stretch alone, whether it keeps the input's
    direction (share of clips) and the median of its speed against the input's (:func:`speed_ratio`; over
    the clips where the shape is seen in it): what a first window makes of the given frames' motion,
    before later windows build on its output.

    With ``truth`` (the true continuations, shaped like ``videos``) also ``in_view_*``: the same agreement
    over only the stretches whose true continuation still reads as the input clip on all three attributes,
    and ``in_view_stretches``, their number."""
    t0, total, n = clips.shape[2], videos.shape[2], DATA_FRAMES
    stretches = [(s, s + n) for s in range(t0 - 1, total - n + 1, n - 1)]  # new frames (9, stride 8)
    seams = list(range(t0, total, window - overlap))
    agree = {a: [] for a in (*ATTRIBUTES, "all")}
    in_view = {a: [] for a in (*ATTRIBUTES, "all")}
    ratios, first_direction, first_speed = [], [], []
    for k, (video, clip) in enumerate(zip(videos, clips)):
        ref = classify_video(clip)
        for j, (lo, hi) in enumerate(stretches):
            got = classify_video(video[:, lo:hi])
            if j == 0:
                first_direction.append(got["direction"] == ref["direction"])
                first_speed.append(speed_ratio(video[:, lo:hi], clip))
            hits = [got[a] == ref[a] for a in ATTRIBUTES]
            visible = truth is not None and all(classify_video(truth[k, :, lo:hi])[a] == ref[a] for a in ATTRIBUTES)
            for a, hit in zip((*ATTRIBUTES, "all"), (*hits, all(hits))):
                agree[a].append(hit)
                if visible:
                    in_view[a].append(hit)
        ratios += seam_ratios(video, seams, mean_step(clip))
    r = np.array(ratios, dtype=np.float64)
    finite = r[np.isfinite(r)]
    speeds = np.array(first_speed, dtype=np.float64)
    speeds = speeds[np.isfinite(speeds)]
    if truth is not None:
        n_view = len(in_view["all"])
        agree_in_view = {f"in_view_{a}": float(np.mean(v)) if n_view else float("nan") for a, v in in_view.items()}
        agree_in_view["in_view_stretches"] = n_view
    else:
        agree_in_view = {}
    return {**{f"probe_{a}": float(np.mean(v)) for a, v in agree.items()}, **agree_in_view,
            "seam_within": float(np.mean(finite <= SEAM_LIMIT)) if len(finite) else float("nan"),
            "seam_median": float(np.median(finite)) if len(finite) else float("nan"),
            "seams_without_shape": int((~np.isfinite(r)).sum()),
            "first_direction": float(np.mean(first_direction)) if first_direction else float("nan"),
            "first_speed": float(np.median(speeds)) if len(speeds) else float("nan"),
            "stretches": stretches, "seams": seams}


def i2v_scores(videos: Tensor, images: Tensor, recon: Tensor, captions: list[str]) -> dict:
    first = psnr(videos[:, :, 0], images)
    vae = psnr(recon, images)
    probes = [classify_video(v) for v in videos]
    want = [c.rsplit(" ", 1)[-1] for c in captions]
    return {"first_psnr": float(first.mean()), "vae_psnr": float(vae.mean()),
            "first_minus_vae": float((first - vae).mean()),
            "moves": float(np.mean([p["direction"] not in (None, "static") for p in probes])),
            "direction": float(np.mean([p["direction"] == w for p, w in zip(probes, want)])),
            "first_psnr_per_sample": first.tolist()}


def interpolation_scores(videos: Tensor, truth: Tensor) -> dict:
    new = list(range(1, truth.shape[2], 2))
    blend = 0.5 * (truth[:, :, [i - 1 for i in new]] + truth[:, :, [i + 1 for i in new]])
    ours, lin = psnr(videos[:, :, new], truth[:, :, new]), psnr(blend, truth[:, :, new])
    return {"psnr": float(ours.mean()), "linear_psnr": float(lin.mean()), "beats_linear": float((ours > lin).float().mean())}


def batched(fn, n: int, batch: int, *tensors: Tensor, captions: list[str]) -> Tensor:
    """fn(captions_chunk, *tensor_chunks) over chunks of ``batch`` samples, concatenated."""
    out = []
    for lo in range(0, n, batch):
        out.append(fn(captions[lo: lo + batch], *(t[lo: lo + batch] for t in tensors)).cpu())
    return torch.cat(out)


def run_method(name: str, model, opts: FrameOptions, tasks: list[str], captions: list[str],
               inputs: dict[str, tuple[Tensor, Tensor]], args: argparse.Namespace,
               keep: dict[str, Tensor] | None = None) -> dict:
    """Every task with one model and method; a fresh generator per task from ``--seed``. ``inputs``: per
    extension task, the input clips (n, 3, window, H, W) and their true continuations; image-to-video and
    interpolation take the "extend" clips (the data's speeds). ``keep``: filled with each extension task's
    first ``GRID_CLIPS`` videos (for ``--grid``)."""
    n, row = len(captions), {"method": name}
    window = args.window
    for task in ("extend", "extend_in_view"):
        if task not in tasks:
            continue
        t = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed)
        clips, truth = inputs[task]
        task_opts = replace(opts, fps=args.stay_fps) if task == "extend_in_view" else opts
        videos = batched(lambda c, x: extend_video(model, x, c, args.extend_to, window, args.overlap, task_opts, g,
                                                   stride=args.stride), n, args.batch, clips, captions=captions)
        overlap = args.overlap or default_overlap(model, window)
        row[task] = {**extension_scores(videos, clips, window, overlap, truth), "seconds": time.perf_counter() - t}
        if keep is not None:
            keep[task] = videos[:GRID_CLIPS]
    clips = inputs["extend"][0]
    if "i2v" in tasks:
        t = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed + 1)
        images = clips[:, :, 0]
        videos = batched(lambda c, x: image_to_video(model, x, c, window, opts, g), n, args.batch, images,
                         captions=captions)
        with torch.no_grad():
            fs = model.first_stage
            recon = fs.decode(fs.encode(images[:, :, None].to(model.device)))[:, :, 0].clamp(-1, 1).cpu()
        row["i2v"] = {**i2v_scores(videos, images, recon, captions), "seconds": time.perf_counter() - t}
    if "interp" in tasks:
        t = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed + 2)
        videos = batched(lambda c, x: interpolate_video(model, x[:, :, ::2], c, 2, opts, g), n, args.batch, clips,
                         captions=captions)
        row["interp"] = {**interpolation_scores(videos, clips), "seconds": time.perf_counter() - t}
    return row


def table(rows: list[dict]) -> str:
    """One line per method: extension at the data's speeds (in view: the stretches whose true continuation
    reads as the input), extension of clips that stay in view (with the first new stretch's direction and
    speed against the input's), image-to-video, interpolation."""
    head = (f"{'method':>16s} | {'ext all':>7s} {'colour':>6s} {'shape':>6s} {'dir':>5s} {'seam<=1.5':>9s} "
            f"{'seam med':>8s} {'in view: all':>12s} {'dir':>5s} {'n':>4s} | {'stay: all':>9s} {'colour':>6s} "
            f"{'shape':>6s} {'dir':>5s} {'seam<=1.5':>9s} {'1st dir':>7s} {'speed':>5s} | {'i2v 1st':>7s} {'VAE':>6s} "
            f"{'diff':>6s} {'moves':>5s} {'dir':>5s} | {'interp':>6s} {'linear':>6s} {'wins':>5s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        e, v, i, p = r.get("extend"), r.get("extend_in_view"), r.get("i2v"), r.get("interp")
        ext = (f"{e['probe_all']:7.2f} {e['probe_colour']:6.2f} {e['probe_shape']:6.2f} {e['probe_direction']:5.2f} "
               f"{e['seam_within']:9.2f} {e['seam_median']:8.2f} {e.get('in_view_all', float('nan')):12.2f} "
               f"{e.get('in_view_direction', float('nan')):5.2f} {e.get('in_view_stretches', 0):4d}" if e else " " * 71)
        stay = (f"{v['probe_all']:9.2f} {v['probe_colour']:6.2f} {v['probe_shape']:6.2f} {v['probe_direction']:5.2f} "
                f"{v['seam_within']:9.2f} {v['first_direction']:7.2f} {v['first_speed']:5.2f}" if v else " " * 53)
        im = (f"{i['first_psnr']:7.2f} {i['vae_psnr']:6.2f} {i['first_minus_vae']:6.2f} {i['moves']:5.2f} "
              f"{i['direction']:5.2f}" if i else " " * 33)
        it = f"{p['psnr']:6.2f} {p['linear_psnr']:6.2f} {p['beats_linear']:5.2f}" if p else ""
        lines.append(f"{r['method']:>16s} | {ext} | {stay} | {im} | {it}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmark.py frames", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="text-to-video checkpoint (or run root): the training-free methods")
    p.add_argument("--i2v", help="frame-conditioned checkpoint (configs/i2v.yaml): the trained conditioning")
    p.add_argument("--samples", type=int, default=48, help="held-out clips (combination i %% 6, seed + i)")
    p.add_argument("--seed", type=int, default=1000, help="first clip seed and the samplers' seed (fresh: not 0..)")
    p.add_argument("--tasks", default="extend,extend_in_view,i2v,interp",
                   help="comma-separated: extend (inputs at the data's speeds), extend_in_view (inputs slow enough to "
                        "stay in view over --extend-to frames), i2v, interp")
    p.add_argument("--weights", default="1,5", help="w_r values of reconstruction guidance (comma-separated)")
    p.add_argument("--no-replacement", dest="replacement", action="store_false")
    p.add_argument("--steps", type=int, default=20, help="sampler steps")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--extend-to", type=int, default=33)
    p.add_argument("--input-frames", type=int, default=9, help="frames of each clip to extend")
    p.add_argument("--window", type=int, default=9, help="extension window and image-to-video length")
    p.add_argument("--overlap", type=int, default=None, help="given frames per extension window (default 5)")
    p.add_argument("--stride", type=int, default=1,
                   help="extend every STRIDE-th input frame, then interpolate (extend_video's stride; needs "
                        "--input-frames >= 1 + STRIDE (overlap - 1))")
    p.add_argument("--stay-fps", type=float, default=float(FPS),
                   help=f"frame rate the extend_in_view clips are sampled at (default {FPS}, the rate the shapes models "
                        "are trained at, as tools/sample.py's default --fps; their true rate, the data's motion per "
                        f"second over --extend-to frames, is {FPS} x (extend-to - 1) / ({DATA_FRAMES} - 1): 32 for 33)")
    p.add_argument("--batch", type=int, default=16, help="samples per sampler batch")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="write the results here (JSON)")
    p.add_argument("--grid", type=Path, metavar="PNG",
                   help=f"frame grid of the first {GRID_CLIPS} clips of each extension input set (every other frame): "
                        "per clip its true continuation, then each method's extension in the table's order")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from latentvid.pipelines.loading import load_model

    tasks = [t for t in args.tasks.split(",") if t]
    if not set(tasks) <= {"extend", "extend_in_view", "i2v", "interp"}:
        p.error(f"--tasks must be among extend, extend_in_view, i2v, interp; got {args.tasks}")
    inputs = {}  # the inputs are the true continuations' first frames
    for task in ("extend", "extend_in_view"):
        captions, truth = held_out_inputs(args.samples, args.seed, args.input_frames, args.size,
                                          extend_to=args.extend_to, in_view=task == "extend_in_view")
        inputs[task] = (truth[:, :, :args.input_frames], truth)
    base, _ = load_model(args.base, args.device)
    methods = []
    if args.replacement:
        methods.append(("replacement", base, "replacement", 1.0))
    methods += [(f"guidance w_r={float(w):g}", base, "guidance", float(w)) for w in args.weights.split(",") if w]
    if args.i2v:
        i2v, _ = load_model(args.i2v, args.device)
        methods.append(("trained", i2v, "trained", 1.0))
    rows = []
    kept: dict[str, dict[str, Tensor]] = {}  # method -> task -> its first extensions (--grid)
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "held_out": [list(c) for c in HELD_OUT], "rows": rows}
    overlap = args.overlap or default_overlap(base, args.window)
    truth_row = {"method": "true continuation"}  # the ceiling of the extension scores: the clips' own continuations
    for task in ("extend", "extend_in_view"):
        if task in tasks:
            clips, truth = inputs[task]
            truth_row[task] = {**extension_scores(truth, clips, args.window, overlap, truth), "seconds": 0.0}
    if len(truth_row) > 1:
        rows.append(truth_row)
    for name, model, method, weight in methods:
        opts = FrameOptions(method=method, weight=weight, steps=args.steps, sampler=args.sampler,
                            guidance=args.guidance)
        rows.append(run_method(name, model, opts, tasks, captions, inputs, args, keep=kept.setdefault(name, {})))
        print(f"[{name}] done: " + ", ".join(f"{t} {rows[-1][t]['seconds']:.0f} s" for t in tasks), flush=True)
        if args.out:  # after every method: a long run stopped early keeps what it measured
            write_json_atomic(args.out, result, indent=1)
    print(table(rows))
    if args.grid:
        grid = [v for task in ("extend", "extend_in_view") if task in tasks
                for i in range(min(GRID_CLIPS, len(captions)))
                for v in [inputs[task][1][i], *(kept[name][task][i] for name, *_ in methods)]]
        if grid:
            write_frame_grid(torch.stack(grid)[:, :, ::2], args.grid)
            print(f"wrote {args.grid}")
    return result


if __name__ == "__main__":
    main()
