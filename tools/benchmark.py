#!/usr/bin/env python
"""Benchmarks: ``python tools/benchmark.py {unet,dit,data,buckets,motion,sampling,resilience,frames} [options]`` (``--help`` on each).

Each benchmark lives in ``benchmarks/<name>.py`` with a ``main(argv)`` and measures what it
compares in the same run, printing ratios against a baseline rather than absolute targets.
Results of GPU runs are recorded in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

BENCHMARKS = {
    "unet": "our 3D U-Net vs diffusers' UNet3DConditionModel: train step, sampling, TFLOP/s, MFU, memory",
    "dit": "our spacetime DiT vs diffusers' WanTransformer3DModel: train videos/s, memory with checkpointing, sampling",
    "data": "decoded clips/s for the decord and PyAV readers, from a folder and from webdataset shards",
    "buckets": "square crops vs aspect/length buckets on a mixed-aspect set: pixels lost, clips/s, latent tokens/s",
    "motion": "does the caption's direction word move the shape? probe accuracy against steps for diagnosis variants",
    "sampling": "teacher solvers (DDIM, DPM-Solver++) vs distilled students: probe, MSE to a 200-step sample, s/video",
    "resilience": "step-time cost of the resume/NaN-guard/preemption callbacks, atomic vs Lightning checkpoint writes",
    "frames": "extension, image-to-video, interpolation on held-out shapes: replacement vs guidance vs trained",
}


def load(name: str):
    """Import ``benchmarks/<name>.py`` as a module (the folder is not a package on sys.path)."""
    path = ROOT / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"benchmark.py: {path} is missing")
    spec = importlib.util.spec_from_file_location(f"latentvid_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up here
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {k:6s} {v}" for k, v in BENCHMARKS.items()),
    )
    p.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark to run")
    if not argv or argv[0] in ("-h", "--help"):
        p.parse_args(argv)  # prints help and exits
    args = p.parse_args(argv[:1])
    load(args.benchmark).main(argv[1:])


if __name__ == "__main__":
    main()
