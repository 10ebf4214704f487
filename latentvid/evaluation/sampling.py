"""Sampling videos from a trained checkpoint, seeded per batch, and writing them as mp4 files.

Videos are (B, 3, T, H, W) in [-1, 1]. Batch ``j`` of a plan is sampled with seed ``seed + j``
(:func:`latentvid.callbacks.metrics.sample_plan`), so the same arguments give the same videos.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentvid.evaluation.inputs import Batch

if TYPE_CHECKING:  # heavy imports stay lazy, so the tools' --help and input errors are quick
    import torch

    from latentvid.models.latent_diffusion import LatentDiffusion


def clip_shape(ckpt: dict[str, Any], frames: int | None = None, height: int | None = None,
               width: int | None = None) -> tuple[int, int, int] | None:
    """(T, H, W) to sample: the given values, else the training clip's from the checkpoint's datamodule
    hparams (``num_frames``, ``size`` as an int or [h, w]); None when some of them are unknown."""
    data_hp = ckpt.get("datamodule_hyper_parameters", {})
    size = data_hp.get("size")
    trained_h, trained_w = (size, size) if not isinstance(size, (list, tuple)) else size
    frames, height, width = frames or data_hp.get("num_frames"), height or trained_h, width or trained_w
    if not (frames and height and width):
        return None
    return int(frames), int(height), int(width)


def sample_batches(
    model: LatentDiffusion,
    captions: list[str],
    shape: tuple[int, int, int],
    num_per_prompt: int = 1,
    batch_size: int = 1,
    seed: int = 0,
    fps: float = 8.0,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    eta: float = 0.0,
    save_videos: str | Path | None = None,
) -> Iterator[Batch]:
    """Sample ``num_per_prompt`` videos per caption in batches of ``batch_size`` (caption-major
    order); batch j uses seed ``seed + j``. Yields videos (B, 3, T, H, W) in [-1, 1], named
    ``NN_<caption>.mp4``; with ``save_videos`` they are also written there with a ``captions.jsonl``.
    ``steps``, ``sampler``, ``guidance``: None keeps the model's own."""
    import torch
    from tqdm import tqdm

    from latentvid.callbacks.metrics import sample_plan
    from latentvid.data.video import to_uint8, write_video
    from latentvid.data.video_log import slug

    plan = sample_plan(captions, num_per_prompt, batch_size, seed)
    total = len(captions) * num_per_prompt
    width = max(2, len(str(total - 1)))
    out = Path(save_videos) if save_videos else None
    index_rows = []
    k = 0
    for batch_seed, batch_captions in tqdm(plan, desc="sampling", unit="batch"):
        g = torch.Generator(device=model.device).manual_seed(batch_seed)
        videos = model.sample(batch_captions, *shape, fps=fps, steps=steps, sampler=sampler,
                              guidance_scale=guidance, eta=eta, generator=g)  # (B, 3, T, H, W)
        names, paths = [], []
        for video, caption in zip(videos, batch_captions):
            name = f"{k:0{width}d}_{slug(caption)}.mp4"
            path = None
            if out is not None:
                path = out / name
                write_video(path, to_uint8(video.float().cpu()), fps=fps)
                index_rows.append({"path": name, "caption": caption, "seed": batch_seed})
            names.append(name)
            paths.append(path)
            k += 1
        yield Batch(videos, list(batch_captions), names, paths, [batch_seed] * len(batch_captions))
    if out is not None:  # lets `--generated DIR` re-score exactly these captions
        (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index_rows), encoding="utf-8")


def sample_videos(model: LatentDiffusion, captions: list[str], shape: tuple[int, int, int], seed: int = 0,
                  **sampling: Any) -> torch.Tensor:
    """All videos of :func:`sample_batches` (same arguments) in one tensor (N, 3, T, H, W) in [-1, 1],
    N = ``len(captions) * num_per_prompt``, caption-major."""
    import torch

    return torch.cat([b.videos for b in sample_batches(model, captions, shape, seed=seed, **sampling)])


def write_samples(
    model: LatentDiffusion,
    captions: list[str],
    shape: tuple[int, int, int],
    out: str | Path,
    seed: int = 0,
    fps: float = 8.0,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    eta: float = 0.0,
    progress: bool = True,
) -> list[Path]:
    """Sample one video per caption (caption i with seed ``seed + i``) and write it: ``out`` is the
    file for one caption (``.mp4``), else a folder receiving ``NN_<caption>.mp4``. Returns the paths."""
    import torch

    from latentvid.data.video import to_uint8, write_video
    from latentvid.data.video_log import slug

    out = Path(out)
    single = len(captions) == 1 and out.suffix == ".mp4"
    paths = []
    for i, caption in enumerate(captions):
        g = torch.Generator(device=model.device).manual_seed(seed + i)
        video = model.sample([caption], *shape, fps=fps, steps=steps, sampler=sampler, guidance_scale=guidance,
                             eta=eta, generator=g, progress=progress)  # (1, 3, T, H, W)
        path = out if single else out / f"{i:02d}_{slug(caption)}.mp4"
        write_video(path, to_uint8(video[0].float().cpu()), fps=fps)
        paths.append(path)
    return paths
