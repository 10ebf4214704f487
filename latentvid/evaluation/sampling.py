"""Sampling videos from a trained checkpoint, seeded per video, and writing them as mp4 files.

Videos are (B, 3, T, H, W) in [-1, 1]. Video ``k`` of a run is sampled with seed ``seed + k`` from
its own generators (:func:`sample_seeded`), so the same arguments give the same videos and the
batch size changes only the speed: video k is the one ``model.sample`` gives for its caption alone
with seed ``seed + k`` (as tools/sample.py writes it), up to float rounding in batched kernels.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentvid.evaluation.inputs import Batch
from latentvid.files import write_text_atomic

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


def sample_seeded(
    model: LatentDiffusion,
    captions: list[str],
    shape: tuple[int, int, int],
    seeds: list[int],
    fps: float = 8.0,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    eta: float = 0.0,
    progress: bool = False,
    spacing: str = "time",
) -> torch.Tensor:
    """Videos (B, 3, T, H, W) in [-1, 1] for B ``captions`` in one batched run, video i from seed ``seeds[i]``.

    With one generator ``model.sample``'s videos depend on the batch they share. Here each video gets its
    own generator (its starting noise and any fresh sampler noise), which makes video i equal to
    ``model.sample([captions[i]], *shape, generator=Generator().manual_seed(seeds[i]))`` whatever else is in
    the batch. ``shape`` is (frames, height, width) in pixels; ``steps``, ``sampler``, ``guidance``: None
    keeps the model's own; ``spacing``: the sampling grid.
    """
    import torch

    if len(seeds) != len(captions):
        raise ValueError(f"{len(seeds)} seeds for {len(captions)} captions")
    generators = [torch.Generator(device=model.device).manual_seed(int(s)) for s in seeds]
    return model.sample(list(captions), *shape, fps=fps, steps=steps, sampler=sampler, guidance_scale=guidance,
                        eta=eta, generator=generators, progress=progress, spacing=spacing)


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
    spacing: str = "time",
) -> Iterator[Batch]:
    """Sample ``num_per_prompt`` videos per caption in batches of ``batch_size`` (caption-major
    order); video k uses seed ``seed + k`` whatever the batch size (:func:`sample_seeded`). Yields
    videos (B, 3, T, H, W) in [-1, 1], named ``NN_<caption>.mp4``; with ``save_videos`` they are also
    written there with a ``captions.jsonl``. ``steps``, ``sampler``, ``guidance``: None keeps the model's own."""
    from tqdm import tqdm

    from latentvid.data.video import to_uint8, write_video
    from latentvid.data.video_log import slug

    if num_per_prompt < 1 or batch_size < 1:
        raise ValueError(f"num_per_prompt and batch_size must be >= 1, got {num_per_prompt}, {batch_size}")
    items = [c for c in captions for _ in range(num_per_prompt)]  # caption-major; item k has seed + k
    width = max(2, len(str(len(items) - 1)))
    out = Path(save_videos) if save_videos else None
    index_rows = []
    for start in tqdm(range(0, len(items), batch_size), desc="sampling", unit="batch"):
        batch_captions = items[start : start + batch_size]
        seeds = [seed + k for k in range(start, start + len(batch_captions))]
        videos = sample_seeded(model, batch_captions, shape, seeds, fps=fps, steps=steps, sampler=sampler,
                               guidance=guidance, eta=eta, spacing=spacing)  # (B, 3, T, H, W)
        names, paths = [], []
        for k, video, caption, video_seed in zip(range(start, start + len(seeds)), videos, batch_captions, seeds):
            name = f"{k:0{width}d}_{slug(caption)}.mp4"
            path = None
            if out is not None:
                path = out / name
                write_video(path, to_uint8(video.float().cpu()), fps=fps)
                index_rows.append({"path": name, "caption": caption, "seed": video_seed})
            names.append(name)
            paths.append(path)
        yield Batch(videos, list(batch_captions), names, paths, seeds)
    if out is not None:  # lets `--generated DIR` re-score exactly these captions
        write_text_atomic(out / "captions.jsonl", "".join(json.dumps(r) + "\n" for r in index_rows))


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
    grid: str | Path | None = None,
    spacing: str = "time",
) -> list[Path]:
    """Sample one video per caption (caption i with seed ``seed + i``) and write it: ``out`` is the
    file for one caption (``.mp4``), else a folder receiving ``NN_<caption>.mp4``. With ``grid``, also
    a PNG there with each video as a row of frames (:func:`~latentvid.evaluation.figures.frame_grid`).
    Returns the paths of the videos."""
    import torch

    from latentvid.data.video import to_uint8, write_video
    from latentvid.data.video_log import slug

    out = Path(out)
    single = len(captions) == 1 and out.suffix == ".mp4"
    paths, videos = [], []
    for i, caption in enumerate(captions):
        g = torch.Generator(device=model.device).manual_seed(seed + i)
        video = model.sample([caption], *shape, fps=fps, steps=steps, sampler=sampler, guidance_scale=guidance,
                             eta=eta, generator=g, progress=progress, spacing=spacing)  # (1, 3, T, H, W)
        path = out if single else out / f"{i:02d}_{slug(caption)}.mp4"
        write_video(path, to_uint8(video[0].float().cpu()), fps=fps)
        paths.append(path)
        if grid is not None:
            videos.append(video.cpu())
    if grid is not None:
        from latentvid.evaluation.figures import write_frame_grid

        write_frame_grid(torch.cat(videos), grid)
    return paths
