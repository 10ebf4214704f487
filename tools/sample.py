#!/usr/bin/env python
"""Generate videos from a trained checkpoint.

    python tools/sample.py --ckpt runs/base/.../last.ckpt --prompt "a red circle moving left" --out out.mp4
    python tools/sample.py --ckpt last.ckpt --prompts data/shapes/eval_prompts.txt --out samples/

EMA weights are used when the checkpoint has them (``--no-ema`` for the raw weights).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by tools/fit.py (e.g. .../checkpoints/last.ckpt)")
    p.add_argument("--prompt", action="append", default=[], help="caption to generate (repeatable)")
    p.add_argument("--prompts", help="text file with one caption per line")
    p.add_argument("--out", required=True, help="output .mp4 for one caption, or a directory for several")
    p.add_argument("--frames", type=int, help="number of frames (default: the training clip length)")
    p.add_argument("--height", type=int, help="height in pixels (default: the training size)")
    p.add_argument("--width", type=int, help="width in pixels (default: the training size)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate to condition on and to write (default 8)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the model's sample_steps)")
    p.add_argument("--sampler", choices=["ddim", "ancestral"], help="sampler (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0, help="random seed; caption i uses seed + i")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: cuda if available)")
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_model(ckpt_path: str, device: str = "cpu", ema: bool = True):
    """Rebuild the LightningModule saved in ``ckpt_path`` (config from its hparams) with EMA or raw weights."""
    import torch

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters", {})
    class_path = hp.get("_class_path")
    if class_path is None:
        raise ValueError(f"{ckpt_path} has no saved model config (was it written by tools/fit.py / latentvid fit?)")
    module, name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    # EMAWeightAveraging stores the averaged weights as "state_dict" and the raw ones beside them
    if not ema and "current_model_state" in ckpt:
        model.load_state_dict(ckpt["current_model_state"])
    return model.to(device).eval(), ckpt


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    import torch

    from latentvid.callbacks.samples import slug
    from latentvid.data.video import to_uint8, write_video

    captions = list(args.prompt)
    if args.prompts:
        if not Path(args.prompts).is_file():
            sys.exit(f"sample.py: prompts file {args.prompts} does not exist")
        captions += [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    if not captions:
        sys.exit("sample.py: give at least one --prompt or a --prompts file")
    try:
        model, ckpt = load_model(args.ckpt, args.device, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"sample.py: {exc}")
    data_hp = ckpt.get("datamodule_hyper_parameters", {})
    frames = args.frames or data_hp.get("num_frames")
    size = data_hp.get("size")
    height, width = args.height or size, args.width or size
    if not (frames and height and width):
        sys.exit("sample.py: the checkpoint does not record the clip shape; pass --frames, --height and --width")

    out = Path(args.out)
    single = len(captions) == 1 and out.suffix == ".mp4"
    paths = []
    for i, caption in enumerate(captions):
        g = torch.Generator(device=args.device).manual_seed(args.seed + i)
        video = model.sample([caption], frames, height, width, fps=args.fps, steps=args.steps, sampler=args.sampler,
                             guidance_scale=args.guidance, eta=args.eta, generator=g, progress=True)
        path = out if single else out / f"{i:02d}_{slug(caption)}.mp4"
        write_video(path, to_uint8(video[0].float().cpu()), fps=args.fps)
        print(f"{path}\t{caption}")
        paths.append(path)
    return paths


if __name__ == "__main__":
    main()
