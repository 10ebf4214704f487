#!/usr/bin/env python
"""Export the LoRA adapters of a fine-tuned Wan / CogVideoX / LTX-Video checkpoint as a diffusers LoRA file.

    python tools/export_lora.py --ckpt runs/finetune-wan --out wan_lora.safetensors

The file (safetensors, the adapters only) loads into the model's diffusers pipeline with
``pipe.load_lora_weights("<folder>", weight_name="wan_lora.safetensors")`` and back into latentvid
with ``lora_weights:`` (configs/finetune-*.yaml). The checkpoint's model is rebuilt from its saved
config, so the pretrained folder it was trained from must still be there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint (or run root) of a LoRA fine-tune (configs/finetune-*.yaml)")
    p.add_argument("--out", required=True, help="output file, e.g. lora.safetensors")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    from latentvid.pipelines.loading import load_model

    try:
        model, _ = load_model(args.ckpt)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"export_lora.py: {err}")
    unet = getattr(model, "unet", None)
    if not getattr(unet, "has_lora", False):
        sys.exit(f"export_lora.py: {args.ckpt} holds a {type(unet).__name__} without LoRA adapters: nothing to export")
    try:
        path = unet.save_lora(args.out)
    except ValueError as err:
        sys.exit(f"export_lora.py: {err}")
    print(f"wrote {path}: {len(unet.lora_state_dict())} tensors, {path.stat().st_size / 2**20:.2f} MiB")
    return path


if __name__ == "__main__":
    main()
