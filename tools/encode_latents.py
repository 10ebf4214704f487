#!/usr/bin/env python
"""Encode a folder data set once into latent files, so diffusion training can skip the VAE.

    python tools/encode_latents.py --vae data/vae/shapes-vae.ckpt --data data/shapes --out data/shapes-latents
    python tools/encode_latents.py --vae data/vae/shapes-vae.ckpt --data data/shapes \\
        --index heldout.jsonl --out data/shapes-latents-val          # held-out clips for validation
    python tools/encode_latents.py --vae /models/sd-vae-ft-mse --data data/shapes --out data/shapes-sd

``--vae`` is an ``AutoencoderModule`` checkpoint (``configs/vae.yaml``) or a local diffusers folder
holding an ``AutoencoderKL`` (per-frame, Stable Diffusion style) or ``AutoencoderKLCogVideoX``
(its ``config.json`` directly or in a ``vae/`` subfolder). ``--data`` is a folder in the shapes
layout: JSONL indexes (``videos.jsonl``, ``images.jsonl``, ...) with ``key``, ``path``, ``caption``.

Output (read by :class:`latentvid.data.latents.LatentDataModule`; layout in that module's
docstring): one ``latents/{key}.pt`` per sample holding the scaled posterior-mean latents
(C, t, h, w), an ``index.jsonl`` with key, caption, fps, num_frames, latent_shape, frame_mask and
latent_mask, and ``meta.json`` describing the first stage and clip shape. Every file is written
atomically (temporary file + rename). Re-running resumes: samples already in the index whose
file exists are skipped; the index is rewritten after every batch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

DEFAULT_INDEXES = ("videos.jsonl", "images.jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="AutoencoderModule checkpoint (.ckpt) or local diffusers VAE folder")
    p.add_argument("--data", required=True, help="data folder with JSONL indexes (shapes layout)")
    p.add_argument("--out", required=True, help="output folder for latents/, index.jsonl and meta.json")
    p.add_argument("--index", action="append", default=None,
                   help=f"index file(s) in --data to encode (repeatable; default: those of {list(DEFAULT_INDEXES)} "
                        f"that exist)")
    p.add_argument("--frames", type=int, help="frames per clip T (default: the data set's num_frames)")
    p.add_argument("--size", type=int, help="resize frames to size x size (default: the files' size)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per VAE call")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over when --out holds latents made with other settings")
    return p.parse_args(argv)


# ---- small helpers -------------------------------------------------------------------------------


def file_name(key: str) -> str:
    """A safe file name for a sample key (a short hash is appended when characters were replaced)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)
    if safe != key or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return safe


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_first_stage(source: str) -> Any:
    """``--vae`` -> a frozen FirstStage: an AutoencoderModule checkpoint file or a diffusers folder."""
    path = Path(source).expanduser()
    if path.is_file():
        from latentvid.models.autoencoder import PretrainedCausalVAE

        return PretrainedCausalVAE(str(path))
    if path.is_dir():
        for subfolder in (None, "vae"):
            config = path / (subfolder or "") / "config.json"
            if config.is_file():
                name = json.loads(config.read_text()).get("_class_name")
                if name == "AutoencoderKL":
                    from latentvid.nn.diffusers_vae import DiffusersImageVAE

                    return DiffusersImageVAE(str(path), subfolder=subfolder)
                if name == "AutoencoderKLCogVideoX":
                    from latentvid.nn.diffusers_vae import DiffusersCogVideoXVAE

                    return DiffusersCogVideoXVAE(str(path), subfolder=subfolder)
                raise ValueError(f"{config}: _class_name {name!r} is not AutoencoderKL or AutoencoderKLCogVideoX")
        raise FileNotFoundError(f"--vae {path}: a folder without config.json (nor vae/config.json)")
    raise FileNotFoundError(
        f"--vae {path} does not exist: give an AutoencoderModule checkpoint (train one with "
        f"`python tools/fit.py -c configs/vae.yaml`) or a local diffusers VAE folder"
    )


def default_frames(data: Path) -> int:
    """The data set's clip length from its .complete marker or the first row of videos.jsonl."""
    from latentvid.data.shapes import read_marker

    marker = read_marker(data)
    if marker and "num_frames" in marker.get("params", {}):
        return int(marker["params"]["num_frames"])
    videos = data / "videos.jsonl"
    if videos.is_file():
        for line in videos.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if "num_frames" in row:
                    return int(row["num_frames"])
                break
    raise ValueError(f"cannot tell the clip length of {data}; pass --frames")


def read_existing(out: Path) -> dict[str, dict]:
    """Rows of an existing ``out/index.jsonl`` whose latent file exists, by key (for resuming)."""
    index = out / "index.jsonl"
    if not index.is_file():
        return {}
    rows = {}
    for line in index.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if (out / row["path"]).is_file():
                rows[row["key"]] = row
    return rows


def open_datasets(data: Path, indexes: list[str], frames: int, size: int | None) -> list[tuple[str, Any]]:
    """(index name, dataset) pairs; stills are served as padded ``frames``-frame videos."""
    from latentvid.data.datasets import ImageTextDataset, VideoTextDataset

    sets = []
    for name in indexes:
        rows_path = data / name
        if not rows_path.is_file():
            raise FileNotFoundError(f"index {rows_path} not found")
        first = json.loads(next(ln for ln in rows_path.read_text(encoding="utf-8").splitlines() if ln.strip()))
        is_image = Path(first["path"]).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp")
        cls = ImageTextDataset if is_image else VideoTextDataset
        sets.append((name, cls(str(data), name, frames, size)))
    return sets


# ---- the command -----------------------------------------------------------------------------------


def encode_folder(args: argparse.Namespace) -> dict[str, Any]:
    """Encode every not-yet-encoded sample of ``args.data``; returns a summary dict."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from latentvid.data.datasets import ImageTextDataset

    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data} is not a folder")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    indexes = args.index or [n for n in DEFAULT_INDEXES if (data / n).is_file()]
    if not indexes:
        raise FileNotFoundError(f"--data {data} has none of {list(DEFAULT_INDEXES)}; name the index with --index")
    frames = args.frames or default_frames(data)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    stage = load_first_stage(args.vae).to(device)
    latent_frames = stage.latent_frames(frames)  # raises when T does not fit the temporal factor
    sets = open_datasets(data, indexes, frames, args.size)
    probe = sets[0][1][0]["video"]  # (3, T, H, W): the frame size after --size
    height, width = int(probe.shape[-2]), int(probe.shape[-1])
    if height % stage.spatial_factor or width % stage.spatial_factor:
        raise ValueError(f"frames of {height}x{width} do not fit the VAE's spatial factor {stage.spatial_factor}; "
                         f"pick --size as a multiple of it")
    meta = {
        "format": "latentvid-latents", "version": 1, "vae": str(Path(args.vae).expanduser().resolve()),
        "first_stage": type(stage).__name__, "data": str(data.resolve()), "indexes": indexes,
        "num_frames": frames, "height": height, "width": width, "latent_channels": stage.latent_channels,
        "latent_frames": latent_frames, "spatial_factor": stage.spatial_factor,
        "temporal_factor": stage.temporal_factor, "dtype": "float32",
    }

    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        differ = {k: (old.get(k), v) for k, v in meta.items() if k != "indexes" and old.get(k) != v}
        if differ and not args.overwrite:
            raise ValueError(f"{out} holds latents made with other settings {differ} (found, requested); "
                             f"pass --overwrite or choose another --out")
        if differ:  # start over
            shutil.rmtree(out / "latents", ignore_errors=True)
            (out / "index.jsonl").unlink(missing_ok=True)
        else:  # adding indexes to a folder: remember all of them
            meta["indexes"] = [*old.get("indexes", []), *(n for n in indexes if n not in old.get("indexes", []))]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    prompts = data / "eval_prompts.txt"
    if prompts.is_file():
        atomic_write_text(out / "eval_prompts.txt", prompts.read_text(encoding="utf-8"))

    done = read_existing(out)
    seen: dict[str, str] = {}
    todo = []  # (index name, dataset, positions to encode)
    for name, ds in sets:
        positions = []
        for i, row in enumerate(ds.rows):
            if row["key"] in seen:
                raise ValueError(f"duplicate key {row['key']!r} in {data / name} (also in {data / seen[row['key']]})")
            seen[row["key"]] = name
            if row["key"] not in done:
                positions.append(i)
        todo.append((name, ds, positions))
    total = sum(len(p) for _, _, p in todo)
    skipped = sum(len(ds) for _, ds, _ in todo) - total

    index_path = out / "index.jsonl"
    rows = dict(done)
    bar = tqdm(total=total, desc="encode", unit="clip")
    for name, ds, positions in todo:
        if not positions:
            continue
        is_image = isinstance(ds, ImageTextDataset)
        loader = DataLoader(Subset(ds, positions), batch_size=args.batch_size, shuffle=False, num_workers=0)
        for batch in loader:
            latents = stage.encode(batch["video"].to(device)).float().cpu()  # (B, C, t, h, w), posterior mean
            lmask = stage.latent_mask(batch["frame_mask"])  # (B, t)
            for j, key in enumerate(batch["key"]):
                rel = f"latents/{file_name(key)}.pt"
                z = latents[j].clone()  # (C, t, h, w); clone so the file holds this sample only
                atomic_write_bytes(out / rel, lambda tmp, z=z: torch.save(z, tmp))
                fmask = batch["frame_mask"][j]
                rows[key] = {
                    "key": key, "path": rel, "caption": batch["caption"][j], "fps": float(batch["fps"][j]),
                    "num_frames": int(fmask.sum()), "latent_shape": list(z.shape),
                    "frame_mask": fmask.tolist(), "latent_mask": lmask[j].tolist(),
                    "image": is_image,
                    "source": name,
                }
            atomic_write_text(index_path, "".join(json.dumps(r) + "\n" for r in rows.values()))
            bar.update(len(batch["key"]))
    bar.close()
    if not index_path.is_file():  # nothing to encode and no index yet (e.g. empty todo)
        atomic_write_text(index_path, "".join(json.dumps(r) + "\n" for r in rows.values()))
    return {"encoded": total, "skipped": skipped, "samples": len(rows), "out": str(out), **meta}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        summary = encode_folder(args)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"encode_latents.py: {exc}")
    print(f"{summary['out']}: {summary['samples']} samples ({summary['encoded']} encoded now, "
          f"{summary['skipped']} already there); latents {summary['latent_channels']} x {summary['latent_frames']} x "
          f"{summary['height'] // summary['spatial_factor']} x {summary['width'] // summary['spatial_factor']}")
    return summary


if __name__ == "__main__":
    main()
