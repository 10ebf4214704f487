"""What an evaluation reads: prompts, folders of generated videos, real clips, and batches of them.

Generated videos are named as :func:`latentvid.evaluation.sampling.write_samples` writes them
(``00_a_red_circle_moving_left.mp4``) or listed in a ``captions.jsonl``; real clips come from a
folder or a JSONL index. Videos are float (3, T, H, W) in [-1, 1] once read, batches (B, 3, T, H, W).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay lazy, so the tools' --help and input errors are quick
    import torch

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


class EvalError(Exception):
    """A problem with the inputs; the tools print it as one line, without a traceback."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a KeyError's without its quotes)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def caption_from_filename(name: str) -> str:
    """``00_a_red_circle_moving_left.mp4`` -> ``"a red circle moving left"`` (the samples' naming:
    leading number groups dropped, underscores to spaces)."""
    stem = Path(name).stem
    caption = re.sub(r"^(\d+(_|$))+", "", stem).replace("_", " ").strip()
    if not caption:
        raise EvalError(f"cannot read a caption from the file name {name!r}; add a captions.jsonl")
    return caption


def read_prompts(path: str) -> list[str]:
    """Non-empty, stripped lines of a prompts file."""
    file = Path(path)
    if not file.is_file():
        raise EvalError(f"prompts file not found: {path}")
    lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise EvalError(f"prompts file {path} has no captions")
    return lines


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a JSONL index (paths resolved against its folder), checked by ``read_index``."""
    from latentvid.data.datasets import read_index

    try:
        rows = read_index(path.parent, path.name, required=required)
    except (ValueError, FileNotFoundError) as err:
        raise EvalError(str(err)) from err
    return [{**row, "path": Path(row["path"])} for row in rows]


def list_generated(folder: str) -> list[tuple[Path, str]]:
    """``(path, caption)`` of the videos in ``folder``: the rows of its captions.jsonl
    (``{"path", "caption"}``, paths relative to the folder) if present, else every video file,
    sorted, with the caption read from its name."""
    root = Path(folder)
    if not root.is_dir():
        raise EvalError(f"--generated folder not found: {folder}")
    index = root / "captions.jsonl"
    if index.is_file():
        return [(row["path"], str(row["caption"])) for row in read_jsonl(index, ("path", "caption"))]
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise EvalError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
    return [(f, caption_from_filename(f.name)) for f in files]


def list_real(source: str) -> list[Path]:
    """Real video files from a folder (sorted) or a JSONL index (its ``path`` entries, relative to it)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
        if not files:
            raise EvalError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in --real folder {source}")
        return files
    if path.is_file():
        return [row["path"] for row in read_jsonl(path, ("path",))]
    raise EvalError(f"--real not found: {source} (a folder of videos or a JSONL index)")


def pair_by_name(generated: list[Path], real: list[Path]) -> dict[Path, Path]:
    """Map each generated video to the real one with the same file stem; every generated
    video needs a partner (extra real videos are ignored)."""
    by_stem: dict[str, Path] = {}
    for f in real:
        if f.stem in by_stem:
            raise EvalError(f"two real videos share the name {f.stem!r}: {by_stem[f.stem]} and {f}")
        by_stem[f.stem] = f
    missing = [g.name for g in generated if g.stem not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise EvalError(f"psnr/ssim pair videos by file name: {len(missing)} generated video(s) have no "
                        f"real counterpart with the same name: {shown}")
    return {g: by_stem[g.stem] for g in generated}


def read_checked(path: Path) -> torch.Tensor:
    """A video file as float (3, T, H, W) in [-1, 1]; errors name the file."""
    from latentvid.data.video import read_video

    try:
        return read_video(path)
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(str(err)) from err


def real_with_captions(source: str) -> list[tuple[Path, str]]:
    """``(path, caption)`` of the --real clips; captions from a JSONL index, else empty."""
    path = Path(source)
    if path.is_file():
        return [(row["path"], str(row.get("caption", ""))) for row in read_jsonl(path, ("path",))]
    return [(f, "") for f in list_real(source)]


@dataclass
class Batch:
    """Generated videos ``(B, 3, T, H, W)`` in [-1, 1] with their captions, names and seeds."""

    videos: torch.Tensor
    captions: list[str]
    names: list[str]
    paths: list[Path | None]
    seeds: list[int | None] = field(default_factory=list)


def read_batches(items: list[tuple[Path, str]], batch_size: int, desc: str) -> Iterator[Batch]:
    """Decode the listed ``(path, caption)`` videos in batches of up to ``batch_size`` equal-shaped clips."""
    import torch
    from tqdm import tqdm

    pending: list[tuple[Path, str, torch.Tensor]] = []

    def flush() -> Batch:
        batch = Batch(torch.stack([v for _, _, v in pending]), [c for _, c, _ in pending],
                      [p.name for p, _, _ in pending], [p for p, _, _ in pending], [None] * len(pending))
        pending.clear()
        return batch

    for path, caption in tqdm(items, desc=desc, unit="video"):
        video = read_checked(path)  # (3, T, H, W)
        if pending and (len(pending) == batch_size or pending[0][2].shape != video.shape):
            yield flush()
        pending.append((path, caption, video))
    if pending:
        yield flush()
