#!/usr/bin/env python
"""Export the temporal layers of a fine-tuned inflated Stable Diffusion model as a motion module.

    python tools/export_motion_module.py --ckpt runs/finetune-sd/.../last.ckpt --out motion.safetensors

The motion module (safetensors, a few percent of the U-Net's size) holds only the layers that
inflation added; load it onto the same or another SD model of the same layout with
``InflatedUNet3D(pretrained=..., motion_module="motion.safetensors")`` (``motion_module:`` in
configs/finetune-sd.yaml) or :func:`latentvid.nn.motion_module.load_motion_module`. The checkpoint's
model is rebuilt from its saved config, so the SD folder it was trained from must still be there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by tools/fit.py -c configs/finetune-sd.yaml")
    p.add_argument("--out", required=True, help="output motion module, e.g. motion.safetensors")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights (if any)")
    p.add_argument("--fp16", action="store_true", help="store the tensors as float16 (half the file size)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from latentvid.nn.motion_module import save_motion_module
    from latentvid.pipelines.loading import load_model

    try:
        model, _ = load_model(args.ckpt, ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"export_motion_module.py: {err}")
    unet = getattr(model, "unet", None)
    if not hasattr(unet, "temporal_state_dict"):
        sys.exit(f"export_motion_module.py: {args.ckpt} holds a {type(unet).__name__}, not an inflated image "
                 "model (latentvid.nn.inflated_unet.InflatedUNet3D): nothing to export")
    import torch

    path = save_motion_module(unet, args.out, dtype=torch.float16 if args.fp16 else None)
    n = len(unet.temporal_state_dict())
    print(f"wrote {path}: {n} tensors, {path.stat().st_size / 2**20:.1f} MiB")
    return path


if __name__ == "__main__":
    main()
