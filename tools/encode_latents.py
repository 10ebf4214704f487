#!/usr/bin/env python
"""Encode a folder data set once into latent files, so diffusion training can skip the VAE.

    python tools/encode_latents.py --vae data/vae/shapes-vae.ckpt --data data/shapes --out data/shapes-latents
    python tools/encode_latents.py --vae data/vae/shapes-vae.ckpt --data data/shapes \\
        --index heldout.jsonl --out data/shapes-latents-val          # held-out clips for validation
    python tools/encode_latents.py --vae /models/sd-vae-ft-mse --data data/shapes --out data/shapes-sd

With a data config instead of a folder (``--data configs/bucket-data.yaml``: a
``VideoTextDataModule`` with ``buckets:``), each clip is read from the config's sources (folder or
shards, videos and stills) at the shape of its bucket, chosen by the same
:func:`~latentvid.data.buckets.assign` as training from the clip's size and length, with the
config's ``clip`` (centred start and crop); the folder then holds one latent shape per bucket and
trains with ``LatentDataModule(buckets=True)``. ``--frames`` and ``--size`` do not apply there.

``--vae`` is an ``AutoencoderModule`` checkpoint (``configs/vae.yaml``) or a local diffusers folder
holding an ``AutoencoderKL`` (per-frame, Stable Diffusion style), ``AutoencoderKLCogVideoX``,
``AutoencoderKLWan`` or ``AutoencoderKLLTXVideo`` (its ``config.json`` directly or in a ``vae/``
subfolder, e.g. a Wan / CogVideoX / LTX-Video pipeline folder). ``--data`` is a folder in the shapes
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
import re
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from latentvid.files import atomic_path, write_text_atomic  # noqa: E402

DEFAULT_INDEXES = ("videos.jsonl", "images.jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="AutoencoderModule checkpoint (.ckpt) or local diffusers VAE folder")
    p.add_argument("--data", required=True,
                   help="data folder with JSONL indexes (shapes layout), or a data config (.yaml) with buckets:")
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
                if name == "AutoencoderKLWan":
                    from latentvid.nn.diffusers_vae import DiffusersWanVAE

                    return DiffusersWanVAE(str(path), subfolder=subfolder)
                if name == "AutoencoderKLLTXVideo":
                    from latentvid.nn.diffusers_vae import DiffusersLTXVideoVAE

                    return DiffusersLTXVideoVAE(str(path), subfolder=subfolder)
                raise ValueError(f"{config}: _class_name {name!r} is not AutoencoderKL, AutoencoderKLCogVideoX, "
                                 "AutoencoderKLWan or AutoencoderKLLTXVideo")
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


def start_out(out: Path, meta: dict[str, Any], data: Path | None, overwrite: bool) -> None:
    """Write ``out/meta.json`` (and the data folder's ``eval_prompts.txt``): a folder made with
    other settings is an error without ``overwrite`` and emptied with it; one made with the same
    settings keeps its samples (resume) and remembers the indexes of both runs."""
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        differ = {k: (old.get(k), v) for k, v in meta.items() if k != "indexes" and old.get(k) != v}
        if differ and not overwrite:
            raise ValueError(f"{out} holds latents made with other settings {differ} (found, requested); "
                             f"pass --overwrite or choose another --out")
        if differ:  # start over
            shutil.rmtree(out / "latents", ignore_errors=True)
            (out / "index.jsonl").unlink(missing_ok=True)
        else:  # adding indexes to a folder: remember all of them
            meta["indexes"] = [*old.get("indexes", []),
                               *(n for n in meta["indexes"] if n not in old.get("indexes", []))]
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    prompts = data / "eval_prompts.txt" if data is not None else None
    if prompts is not None and prompts.is_file():
        write_text_atomic(out / "eval_prompts.txt", prompts.read_text(encoding="utf-8"))


# ---- the command -----------------------------------------------------------------------------------


def encode_folder(args: argparse.Namespace) -> dict[str, Any]:
    """Encode every not-yet-encoded sample of ``args.data`` (a data config: :func:`encode_buckets`);
    returns a summary dict."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from latentvid.data.datasets import ImageTextDataset

    data, out = Path(args.data), Path(args.out)
    if data.is_file() and data.suffix in (".yaml", ".yml"):
        return encode_buckets(args)
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

    start_out(out, meta, data, args.overwrite)

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
                with atomic_path(out / rel) as tmp:  # readers never see a partial file
                    torch.save(z, tmp)
                fmask = batch["frame_mask"][j]
                rows[key] = {
                    "key": key, "path": rel, "caption": batch["caption"][j], "fps": float(batch["fps"][j]),
                    "num_frames": int(fmask.sum()), "latent_shape": list(z.shape),
                    "frame_mask": fmask.tolist(), "latent_mask": lmask[j].tolist(),
                    "image": is_image,
                    "source": name,
                }
            write_text_atomic(index_path, "".join(json.dumps(r) + "\n" for r in rows.values()))
            bar.update(len(batch["key"]))
    bar.close()
    if not index_path.is_file():  # nothing to encode and no index yet (e.g. empty todo)
        write_text_atomic(index_path, "".join(json.dumps(r) + "\n" for r in rows.values()))
    return {"encoded": total, "skipped": skipped, "samples": len(rows), "out": str(out), **meta}


def load_data_config(path: Path) -> Any:
    """The data module a data config (``configs/bucket-data.yaml``'s layout) builds, as the CLI builds it."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        config = parser.parse_args(["--data", str(path)])
    except Exception as err:  # jsonargparse's ArgumentError, with the key that does not parse
        raise ValueError(f"--data {path}: not a data config ({str(err).splitlines()[0][:300]})") from err
    return parser.instantiate_classes(config).data


def known_key(source: Any, raw: Any) -> str | None:
    """A folder source's key of a raw sample (its index row's), without decoding it; None for shards."""
    rows = getattr(source, "rows", None)
    return rows[raw.data].key if isinstance(rows, list) and isinstance(raw.data, int) else None


def encode_buckets(args: argparse.Namespace) -> dict[str, Any]:
    """Encode the samples of a bucketed data config, each at its bucket's shape; returns a summary dict."""
    import torch
    from tqdm import tqdm

    from latentvid.data.bucket_batches import bucket_clip
    from latentvid.data.buckets import assign
    from latentvid.data.clips import ClipError
    from latentvid.data.sources import SampleError

    config, out = Path(args.data), Path(args.out)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.frames is not None or args.size is not None or args.index is not None:
        raise ValueError(f"--data {config} is a data config: its clip and buckets set the shapes and its sources "
                         "the samples; drop --frames, --size and --index")
    dm = load_data_config(config)
    buckets = getattr(dm, "bucket_list", None)
    if not buckets:
        raise ValueError(f"--data {config}: the data config has no buckets: (or reads pre-encoded latents); to "
                         "encode every clip at one size give the data folder as --data")
    clip = dm.clip.deterministic()  # the same latents on every run: centred start and crop
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    stage = load_first_stage(args.vae).to(device)
    sf, bad = stage.spatial_factor, []
    for b in buckets:
        reasons = [f"{name} {side}" for name, side in (("height", b.height), ("width", b.width)) if side % sf]
        try:
            stage.latent_frames(b.frames)
        except ValueError:
            reasons.append(f"frames {b.frames}")
        if reasons:
            bad.append(f"{b.name} ({', '.join(reasons)})")
    if bad:
        raise ValueError(f"--data {config}: buckets that do not fit the VAE (spatial factor {sf}, temporal factor "
                         f"{stage.temporal_factor}): {'; '.join(bad)}")
    sources = [(label, source) for label, source in (("video", dm.video), ("images", dm.images)) if source is not None]
    height, width = clip.hw
    meta = {
        "format": "latentvid-latents", "version": 1, "vae": str(Path(args.vae).expanduser().resolve()),
        "first_stage": type(stage).__name__, "data": str(config.resolve()),
        "indexes": [source.describe() for _, source in sources],
        # the reference clip: LatentDataModule(buckets=True) sizes each bucket's batch by its tokens
        "num_frames": clip.num_frames, "height": height, "width": width, "latent_channels": stage.latent_channels,
        "latent_frames": stage.latent_frames(clip.num_frames), "spatial_factor": sf,
        "temporal_factor": stage.temporal_factor, "dtype": "float32",
        "buckets": [b.name for b in buckets],
    }
    root = getattr(dm.video, "root", None)
    start_out(out, meta, Path(root) if root else None, args.overwrite)

    done = read_existing(out)
    rows = dict(done)
    index_path = out / "index.jsonl"
    waiting: list[list[tuple[dict, str, bool]]] = [[] for _ in buckets]  # per bucket: (item, source, still)
    counts = {"encoded": 0, "skipped": 0, "failed": 0}

    def flush(k: int) -> None:
        """Encode bucket ``k``'s waiting clips (one shape: they stack) and write them."""
        items, waiting[k] = waiting[k], []
        video = torch.stack([item["video"] for item, _, _ in items])  # (B, 3, T_k, H_k, W_k)
        frame_mask = torch.stack([item["frame_mask"] for item, _, _ in items])  # (B, T_k)
        with torch.no_grad():
            latents = stage.encode(video.to(device)).float().cpu()  # (B, C, t_k, h_k, w_k), posterior mean
        lmask = stage.latent_mask(frame_mask)  # (B, t_k)
        for j, (item, name, still) in enumerate(items):
            key, rel = item["key"], f"latents/{file_name(item['key'])}.pt"
            z = latents[j].clone()  # (C, t, h, w); clone so the file holds this sample only
            with atomic_path(out / rel) as tmp:
                torch.save(z, tmp)
            rows[key] = {
                "key": key, "path": rel, "caption": item["caption"], "fps": float(item["fps"]),
                "num_frames": int(frame_mask[j].sum()), "latent_shape": list(z.shape),
                "frame_mask": frame_mask[j].tolist(), "latent_mask": lmask[j].tolist(), "image": still,
                "source": name, "bucket": buckets[k].name,
            }
        write_text_atomic(index_path, "".join(json.dumps(r) + "\n" for r in rows.values()))
        counts["encoded"] += len(items)
        bar.update(len(items))

    bar = tqdm(desc="encode", unit="clip")
    seen: dict[str, str] = {}
    for label, source in sources:
        still, name = source.kind == "image", source.describe()
        for unit in range(source.num_units()):
            try:
                for raw in source.read_unit(unit, epoch=0, seed=0, shuffle=False):
                    if known_key(source, raw) in done:  # resuming: a folder row's key is known before decoding
                        counts["skipped"] += 1
                        continue
                    try:
                        src_h, src_w, frames = source.measure(raw, clip)
                        k = assign(buckets, src_h, src_w, frames, pad=clip.short == "pad")
                        if k is None:  # short: skip, as in training
                            print(f"skipping {raw.name}: too short for every bucket ({frames} frames)", file=sys.stderr)
                            counts["failed"] += 1
                            continue
                        item = source.decode(raw, bucket_clip(clip, buckets[k]))
                    except (SampleError, ClipError, FileNotFoundError) as err:
                        print(f"skipping {err}", file=sys.stderr)
                        counts["failed"] += 1
                        continue
                    key = item["key"]
                    if key in seen:
                        raise ValueError(f"duplicate key {key!r} in {name} (also in {seen[key]})")
                    seen[key] = name
                    if key in done:
                        counts["skipped"] += 1
                        continue
                    waiting[k].append((item, label, still))
                    if len(waiting[k]) == args.batch_size:
                        flush(k)
            except SampleError as err:  # an unreadable shard: the rest of the data still encodes
                print(f"skipping {err}", file=sys.stderr)
    for k in range(len(buckets)):
        if waiting[k]:
            flush(k)
    bar.close()
    if not index_path.is_file():  # nothing to encode and no index yet
        write_text_atomic(index_path, "".join(json.dumps(r) + "\n" for r in rows.values()))
    per_bucket = {b.name: 0 for b in buckets}
    for row in rows.values():
        per_bucket[row.get("bucket", "?")] = per_bucket.get(row.get("bucket", "?"), 0) + 1
    return {**counts, "samples": len(rows), "out": str(out), **meta, "per_bucket": per_bucket}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        summary = encode_folder(args)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"encode_latents.py: {exc}")
    if "per_bucket" in summary:
        print(f"{summary['out']}: {summary['samples']} samples ({summary['encoded']} encoded now, "
              f"{summary['skipped']} already there, {summary['failed']} unreadable or too short); per bucket: "
              f"{', '.join(f'{name} {n}' for name, n in summary['per_bucket'].items())}")
        return summary
    print(f"{summary['out']}: {summary['samples']} samples ({summary['encoded']} encoded now, "
          f"{summary['skipped']} already there); latents {summary['latent_channels']} x {summary['latent_frames']} x "
          f"{summary['height'] // summary['spatial_factor']} x {summary['width'] // summary['spatial_factor']}")
    return summary


if __name__ == "__main__":
    main()
