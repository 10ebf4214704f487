"""What latentvid's long-run machinery costs, against plain Lightning measured in the same run.

    python tools/benchmark.py resilience                      # tiny U-Net on CPU, 40 steps per variant
    python tools/benchmark.py resilience --steps 100 --model-channels 32 --ckpt-mb 256 --out runs/bench/res.json

1. Training step time of one LatentDiffusion on the same in-memory batches, with and without the
   callbacks every ``latentvid fit`` run gets (DataPosition, RNGState, NumericalGuard with the
   gradient-norm check and logging, Preemption): the RNG swap twice a step, one gradient norm (a
   host sync) and, under DDP, two tiny all-reduces. Variants alternate, ``--repeats`` times each;
   the median seconds per step (after ``--warmup`` steps) and their ratio are reported.
2. Checkpoint write time for ``--ckpt-mb`` megabytes of tensors: AtomicCheckpointIO (stream to a
   temporary file, fsync, rename) vs Lightning's TorchCheckpointIO (serialise to memory, write
   through an fsspec transaction, no fsync), in a temporary folder on ``--dir``'s file system.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from latentvid.callbacks.checkpoint_io import AtomicCheckpointIO
from latentvid.cli import DEFAULT_CALLBACKS
from latentvid.conditioning.text import OpenCLIPTextEncoder
from latentvid.data.sampler import ResumableDataLoader, ResumableSampler
from latentvid.files import write_json_atomic
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.nn.unet3d import UNet3D


class RandomClips(Dataset):
    """Fixed random clips (3, T, S, S) with captions and keys: no decoding in the timed loop."""

    def __init__(self, n: int, frames: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.videos = torch.rand(n, 3, frames, size, size, generator=g) * 2 - 1  # (N, 3, T, S, S)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"video": self.videos[i], "frame_mask": torch.ones(self.videos.shape[2], dtype=torch.bool),
                "fps": torch.tensor(8.0), "caption": f"a red circle moving left {i % 7}", "key": f"clip_{i:04d}"}


class StepTimer(Callback):
    """Wall time of each training batch (start hook to end hook of the next), after ``warmup`` batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._t = warmup, [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._t is not None and trainer.global_step > self.warmup:
            self.times.append(now - self._t)
        self._t = now


def _model(args: argparse.Namespace) -> LatentDiffusion:
    torch.manual_seed(0)
    unet = UNet3D(model_channels=args.model_channels, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                  head_dim=8, context_dim=32, norm_groups=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = OpenCLIPTextEncoder(random_width=32, random_layers=1, random_heads=2, max_length=16)
    return LatentDiffusion(unet, text, warmup_steps=1, lr=1e-3)


def time_steps(args: argparse.Namespace, with_callbacks: bool) -> float:
    """Median seconds per training step of one fit."""
    data = RandomClips(args.batch_size * (args.steps + 2), args.frames, args.size)
    loader = ResumableDataLoader(data, batch_size=args.batch_size, drop_last=True,
                                 sampler=ResumableSampler(len(data), seed=0))
    timer = StepTimer(args.warmup)
    callbacks = [timer] + ([cls() for cls in DEFAULT_CALLBACKS.values()] if with_callbacks else [])
    trainer = Trainer(accelerator=args.accelerator, devices=1, max_steps=args.steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks, log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(_model(args), train_dataloaders=loader)
    return statistics.median(timer.times)


def time_saves(args: argparse.Namespace, io, folder: Path) -> float:
    """Median seconds to write the benchmark checkpoint with ``io``."""
    n = int(args.ckpt_mb * 2**20 / 4)
    checkpoint = {"state_dict": {f"w{i}": torch.randn(n // 8) for i in range(8)}, "global_step": 1}
    times = []
    for i in range(args.repeats + 1):
        start = time.perf_counter()
        io.save_checkpoint(checkpoint, folder / f"bench-{type(io).__name__}.ckpt")
        if i:  # the first write warms the page cache and allocator
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmark.py resilience", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="training steps per fit")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--repeats", type=int, default=2, help="fits (and checkpoint writes) per variant")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=16, help="frame side in pixels")
    p.add_argument("--model-channels", type=int, default=8, help="U-Net base width")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--ckpt-mb", type=float, default=64.0, help="checkpoint size for the write benchmark")
    p.add_argument("--dir", default=None, help="folder for the checkpoint writes (default: the temp folder)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    step = {"plain Lightning": [], "latentvid defaults": []}
    for _ in tqdm(range(args.repeats), desc="training fits"):
        for name, flag in (("plain Lightning", False), ("latentvid defaults", True)):
            step[name].append(time_steps(args, flag))
    base = statistics.median(step["plain Lightning"])
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        saves = {"TorchCheckpointIO (Lightning)": time_saves(args, TorchCheckpointIO(), Path(tmp)),
                 "AtomicCheckpointIO": time_saves(args, AtomicCheckpointIO(), Path(tmp))}
    print(f"\ntraining step, {args.batch_size} x 3 x {args.frames} x {args.size}^2, U-Net width {args.model_channels}:")
    for name, times in step.items():
        t = statistics.median(times)
        print(f"  {name:32s} {t * 1e3:8.2f} ms/step   x{t / base:.3f}")
    print(f"checkpoint write, {args.ckpt_mb:g} MB:")
    ref = saves["TorchCheckpointIO (Lightning)"]
    for name, t in saves.items():
        print(f"  {name:32s} {t:8.3f} s         x{t / ref:.3f}")
    result = {"step_seconds": step, "save_seconds": saves, "args": vars(args), "cpus": os.cpu_count(),
              "load_avg": os.getloadavg(), "machine": platform.machine(), "torch": torch.__version__}
    if args.out:
        write_json_atomic(args.out, result)
    return result
