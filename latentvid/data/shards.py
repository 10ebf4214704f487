"""webdataset tar shards: video-text and image-text sources, and a shard writer.

A shard is a tar file whose members are grouped into samples by their name before the first
dot (the webdataset convention, as video2dataset / img2dataset write them)::

    000123.mp4   000123.txt   000123.json          # a video sample: media + caption
    000124.jpg   000124.txt                        # an image sample

The caption is ``key.txt`` (UTF-8), else the ``caption_key`` field of ``key.json``. Shards are
named by a local path, a list, a brace pattern (``data/shard-{000000..000127}.tar``), a glob
(``data/*.tar``), ``::``-joined patterns, or any URL webdataset opens (``http(s)://``,
``pipe:CMD``, ``gs://``) or fsspec does (``s3://``, ``hf://``, ``file://``, ...).

Reading goes through webdataset's tar iteration (``tar_file_expander`` + ``group_by_keys``);
splitting across ranks / workers, shuffling and resampling are done by
:class:`~latentvid.data.stream.SampleStream` with every other source. A shard that cannot be
opened, or breaks off part-way, counts as one skipped sample (its earlier samples are kept);
a sample without media or caption, or whose media does not decode, is skipped and counted.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from latentvid.data.clips import ClipSpec
from latentvid.data.sources import ImageSource, Raw, SampleError, VideoSource
from latentvid.files import new_file_mode

VIDEO_EXTENSIONS: tuple[str, ...] = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


# --------------------------------------------------------------------------------------------
# shard lists and opening
# --------------------------------------------------------------------------------------------


def _local_path(url: str) -> str | None:
    """The file path of a local shard (plain path or ``file://``), None for anything else."""
    parsed = urlparse(url)
    if parsed.scheme == "":
        return url
    if parsed.scheme == "file":
        return parsed.path
    if len(parsed.scheme) == 1:  # a Windows drive letter
        return url
    return None


def expand_shards(urls: str | Iterable[str]) -> list[str]:
    """Shard URLs from a pattern or list: ``::`` separated, brace-expanded (webdataset's rules),
    and local globs (``*``, ``?``) expanded in sorted order."""
    from webdataset.shardlists import expand_urls

    patterns = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for pattern in patterns:
        for url in expand_urls(str(pattern)):
            path = _local_path(url)
            if path is not None and any(ch in path for ch in "*?["):
                out.extend(sorted(glob.glob(os.path.expanduser(path))))
            else:
                out.append(url)
    return out


def open_shard(url: str) -> Any:
    """A binary stream over a shard: local files directly, webdataset's openers for the schemes
    it knows (``pipe:``, ``http(s)``, ``gs``, ...), fsspec for the rest (``s3``, ``hf``, ``memory``...)."""
    path = _local_path(url)
    if path is not None:
        return open(os.path.expanduser(path), "rb")
    from webdataset.gopen import gopen, gopen_schemes

    if urlparse(url).scheme in gopen_schemes:
        return gopen(url, "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def count_samples(path: str, extensions: tuple[str, ...]) -> int:
    """Keys of the tar at ``path`` with a member of one of ``extensions`` (webdataset's grouping:
    the key is the member name up to the first dot of its file name); 0 for an unreadable tar."""
    keys = set()
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                folder, _, name = member.name.rpartition("/")
                key, dot, ext = name.partition(".")
                if dot and member.isfile() and ext.lower() in extensions:
                    keys.add(f"{folder}/{key}")
    except (OSError, tarfile.TarError):
        return 0
    return len(keys)


def iter_shard(url: str, errors: list[str]) -> Iterator[dict[str, Any]]:
    """Samples of one shard as dicts ``{"__key__", "__url__", ext: bytes, ...}``; problems
    (unreadable tar, duplicate names) are appended to ``errors`` and iteration goes on."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def handler(exn: Exception) -> bool:
        errors.append(f"{type(exn).__name__}: {str(exn.args[0] if exn.args else exn)[:160]}")
        return True  # keep going: later members / shards may be fine

    stream = open_shard(url)
    try:
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        yield from group_by_keys(files, handler=handler)
    finally:
        stream.close()


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


class _ShardSource:
    """Shared by :class:`VideoShards` and :class:`ImageShards`."""

    extensions: tuple[str, ...] = ()

    def __init__(self, urls: str | list[str], caption_key: str = "caption", shuffle_buffer: int = 256,
                 extensions: list[str] | None = None) -> None:
        self.pattern = urls
        self.urls = expand_shards(urls)
        if not self.urls:
            raise FileNotFoundError(f"no shards match {urls!r}")
        missing = [u for u in self.urls if _local_path(u) is not None and not os.path.isfile(_local_path(u))]
        if missing:
            raise FileNotFoundError(f"shard not found: {missing[0]} ({len(missing)} of the {len(self.urls)} "
                                    f"shards of {urls!r} are missing)")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.caption_key = caption_key
        self.shuffle_buffer = shuffle_buffer
        if extensions is not None:
            self.extensions = tuple(e.lower().lstrip(".") for e in extensions)

    def describe(self) -> str:
        pattern = self.pattern if isinstance(self.pattern, str) else f"{len(self.urls)} shards"
        return f"{type(self).__name__}({pattern})"

    def num_units(self) -> int:
        return len(self.urls)

    def unit_name(self, unit: int) -> str:
        return self.urls[unit]

    def unit_sizes(self) -> list[int] | None:
        """Samples with a media member in each shard, from the tar headers (no member is read);
        None when a shard is not a local file."""
        paths = [_local_path(u) for u in self.urls]
        if any(p is None for p in paths):
            return None
        return [count_samples(os.path.expanduser(p), self.extensions) for p in paths]

    def read_unit(self, unit: int, epoch: int, seed: int, shuffle: bool) -> Iterator[Raw]:
        url = self.urls[unit]
        errors: list[str] = []
        count = 0
        try:
            for sample in iter_shard(url, errors):
                count += 1
                yield Raw(name=f"{url}:{sample['__key__']}", data=sample)
        except (OSError, ValueError) as err:  # cannot open (missing, permission, bad URL)
            errors.append(f"{type(err).__name__}: {str(err)[:160]}")
        if errors:
            raise SampleError(f"{url}: read error after {count} samples of the shard ({errors[0]})")

    def _media_and_caption(self, raw: Raw) -> tuple[str, bytes, str]:
        sample = raw.data
        ext = next((e for e in self.extensions if e in sample), None)
        if ext is None:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise SampleError(f"{raw.name}: no {'/'.join(self.extensions)} member (has: {', '.join(present)})")
        if "txt" in sample:
            try:
                caption = bytes(sample["txt"]).decode("utf-8")
            except UnicodeDecodeError:
                raise SampleError(f"{raw.name}: undecodable caption in .txt (not UTF-8)") from None
        elif "json" in sample:
            try:
                meta = json.loads(bytes(sample["json"]).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise SampleError(f"{raw.name}: unreadable .json ({type(err).__name__})") from None
            caption = meta.get(self.caption_key) if isinstance(meta, dict) else None
            if not isinstance(caption, str):
                raise SampleError(f"{raw.name}: .json has no text field {self.caption_key!r}")
        else:
            raise SampleError(f"{raw.name}: no caption (.txt or .json member)")
        return ext, sample[ext], caption.strip()


class VideoShards(_ShardSource, VideoSource):
    """Video-text webdataset shards (``key.mp4|webm|mkv|mov|avi`` + ``key.txt`` or ``key.json``).

    Args:
        urls: shard pattern(s): path, brace pattern, glob, URL, or a list of them.
        caption_key: field of ``key.json`` holding the caption when there is no ``key.txt``.
        shuffle_buffer: samples held in each worker's shuffle buffer (0 = shard order). Shards
            are also shuffled per epoch.
        extensions: media members to look for, in order (default: mp4 webm mkv mov avi m4v).
    """

    extensions = VIDEO_EXTENSIONS

    def __init__(self, urls: str | list[str], caption_key: str = "caption", shuffle_buffer: int = 256,
                 extensions: list[str] | None = None) -> None:
        super().__init__(urls, caption_key, shuffle_buffer, extensions)

    def decode(self, raw: Raw, clip: ClipSpec, generator: torch.Generator | None = None) -> dict[str, Any]:
        _, media, caption = self._media_and_caption(raw)
        return self.video_item(media, clip, generator, raw.name, caption, raw.data["__key__"])

    def measure(self, raw: Raw, clip: ClipSpec) -> tuple[int, int, int | None]:
        _, media, _ = self._media_and_caption(raw)
        return self.video_shape(media, clip, raw.name)


class ImageShards(_ShardSource, ImageSource):
    """Image-text webdataset shards (``key.jpg|jpeg|png|webp`` + ``key.txt`` or ``key.json``).

    Args:
        urls: shard pattern(s): path, brace pattern, glob, URL, or a list of them.
        caption_key: field of ``key.json`` holding the caption when there is no ``key.txt``.
        shuffle_buffer: samples held in each worker's shuffle buffer (0 = shard order).
        extensions: media members to look for, in order (default: jpg jpeg png webp).
    """

    extensions = IMAGE_EXTENSIONS

    def __init__(self, urls: str | list[str], caption_key: str = "caption", shuffle_buffer: int = 1000,
                 extensions: list[str] | None = None) -> None:
        super().__init__(urls, caption_key, shuffle_buffer, extensions)

    def decode(self, raw: Raw, clip: ClipSpec, generator: torch.Generator | None = None) -> dict[str, Any]:
        _, media, caption = self._media_and_caption(raw)
        return self.image_item(media, clip, generator, raw.name, caption, raw.data["__key__"])

    def measure(self, raw: Raw, clip: ClipSpec) -> tuple[int, int, int | None]:
        _, media, _ = self._media_and_caption(raw)
        return self.image_shape(media, raw.name)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


class ShardWriter:
    """Write samples into numbered tar shards, each written to a temporary file and renamed
    into place when complete (a crash never leaves a half-written shard under a shard name).

    ``pattern`` is a %-format with one integer, e.g. ``out/shard-%06d.tar``. A sample is a
    dict ``{"__key__": str, ext: bytes | str | dict}`` (str is UTF-8 encoded, dict JSON).

        with ShardWriter("out/shard-%06d.tar", samples_per_shard=100) as writer:
            writer.write({"__key__": "000001", "mp4": data, "txt": "a caption"})
        writer.paths  # the shards written
    """

    def __init__(self, pattern: str, samples_per_shard: int = 1000) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        try:
            pattern % 0
        except TypeError:
            raise ValueError(f"shard pattern {pattern!r} needs one integer field, e.g. 'shard-%06d.tar'") from None
        self.pattern = pattern
        self.samples_per_shard = samples_per_shard
        self.paths: list[str] = []
        self.count = 0
        self._writer: Any = None
        self._tmp: str | None = None
        self._in_shard = 0

    def _open(self) -> None:
        from webdataset import TarWriter

        path = Path(self.pattern % len(self.paths))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self._file = os.fdopen(fd, "wb")
        self._writer = TarWriter(self._file, encoder=False, mtime=0.0)
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        path = self.pattern % len(self.paths)
        os.chmod(self._tmp, new_file_mode())  # not mkstemp's private 0o600: shards are shared data
        os.replace(self._tmp, path)
        self.paths.append(path)
        self._writer = self._tmp = None

    def write(self, sample: dict[str, Any]) -> None:
        """Add one sample (starting a new shard when the current one is full)."""
        if "__key__" not in sample or "." in str(sample["__key__"]):
            raise ValueError(f"sample needs a '__key__' without dots, got {sample.get('__key__')!r}")
        encoded: dict[str, Any] = {"__key__": str(sample["__key__"])}
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            if isinstance(value, str):
                value = value.encode("utf-8")
            elif isinstance(value, dict):
                value = json.dumps(value, ensure_ascii=False).encode("utf-8")
            elif isinstance(value, (bytearray, memoryview)):
                value = bytes(value)
            if not isinstance(value, bytes):
                raise ValueError(f"sample {sample['__key__']!r}: .{ext} must be bytes, str or dict")
            encoded[ext] = value
        if self._writer is None:
            self._open()
        self._writer.write(encoded)
        self._in_shard += 1
        self.count += 1
        if self._in_shard >= self.samples_per_shard:
            self._close_shard()

    def close(self) -> list[str]:
        """Finish the last shard; returns the paths written."""
        self._close_shard()
        return self.paths

    def abort(self) -> None:
        """Drop the shard in progress (its temporary file)."""
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            os.remove(self._tmp)
            self._writer = self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _shard_key(key: str, taken: set[str]) -> str:
    """A webdataset-safe key (no dots: the key ends at the first dot of a member name), unique."""
    safe = re.sub(r"[^A-Za-z0-9_\-]", "_", key) or "sample"
    candidate, n = safe, 1
    while candidate in taken:
        candidate, n = f"{safe}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _check_media(path: str, kind: str) -> None:
    """Raise if ``path`` cannot be decoded (first frame of a video, or the whole image)."""
    if kind == "video":
        from latentvid.data.readers import read_video_frames

        read_video_frames(path, [0])
    else:
        from PIL import Image

        with Image.open(path) as img:
            img.convert("RGB")


def folder_to_shards(folder: Any, pattern: str, samples_per_shard: int = 1000, check: bool = True,
                     progress: bool = True) -> dict[str, Any]:
    """Write the rows of a :class:`~latentvid.data.folder.VideoFolder` / ``ImageFolder`` as shards.

    Each sample is ``key.<ext>`` (the file's bytes, its own extension) + ``key.txt`` (caption) +
    ``key.json`` (``caption``, ``key``, ``path`` relative to the folder, and ``fps`` / ``start`` /
    ``end`` when the index has them). Rows that are bad, whose file is missing or (with
    ``check``) does not decode are left out and reported.

    Returns ``{"paths": [...], "num_samples": n, "skipped": [(name, reason), ...]}``.
    """
    from tqdm import tqdm

    kind = folder.kind
    taken: set[str] = set()
    skipped: list[tuple[str, str]] = []
    with ShardWriter(pattern, samples_per_shard) as writer:
        for row in tqdm(folder.rows, desc=f"shards <- {folder.describe()}", unit=kind, disable=not progress):
            name = row.path or f"{folder.describe()}:{row.line}"
            if row.error is not None:
                skipped.append((f"{folder.describe()}:{row.line}", row.error))
                continue
            if not os.path.isfile(row.path):
                skipped.append((name, "file not found"))
                continue
            if check:
                try:
                    _check_media(row.path, kind)
                except Exception as err:  # any reason it does not decode
                    skipped.append((name, f"does not decode ({type(err).__name__}: {str(err)[:120]})"))
                    continue
            ext = Path(row.path).suffix.lower().lstrip(".") or ("mp4" if kind == "video" else "jpg")
            meta = {"caption": row.caption, "key": row.key,
                    "path": os.path.relpath(row.path, folder.root)}
            meta.update({k: v for k, v in (("fps", row.fps), ("start", row.start), ("end", row.end)) if v is not None})
            with open(row.path, "rb") as f:
                writer.write({"__key__": _shard_key(row.key, taken), ext: f.read(), "txt": row.caption,
                              "json": meta})
    return {"paths": writer.paths, "num_samples": writer.count, "skipped": skipped}


__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "ImageShards", "ShardWriter", "VideoShards",
           "expand_shards", "folder_to_shards", "iter_shard", "open_shard"]
