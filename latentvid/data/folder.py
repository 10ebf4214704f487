"""Folder datasets: video or image files listed in a CSV / TSV / JSONL index with captions.

WebVid-style data is a folder of mp4 files and a CSV with one row per clip. Column names are
configurable, and the path may be built from several columns::

    VideoFolder("webvid/", index="results_2M_val.csv", caption_column="name",
                path_format="{page_dir}/{videoid}.mp4", key_column="videoid")

Optional columns give a row's frame rate (overrides the file's header) and a ``start`` /
``end`` window in seconds to sample the clip from.

What stops at once (:class:`~latentvid.data.sources.DataError` / ``FileNotFoundError``, naming
the file and column): a missing folder or index, a column that is not in the index, an index
with no rows, and (when the datamodule probes it) an index where nothing decodes. What is
skipped and counted instead: a row whose file is missing or cannot be decoded, a row that is
not valid JSON / has too few CSV fields / lacks a field, a caption that is not valid UTF-8
or not text, a bad number in the fps / start / end columns.

Both classes are map-style datasets as well (``ds[i]`` decodes row i; a bad row is replaced
by the next good one, see :meth:`VideoFolder.__getitem__`) and sources for
:class:`~latentvid.data.stream.SampleStream`, which is how the datamodule reads them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from latentvid.data.clips import ClipSpec
from latentvid.data.sources import DataError, ImageSource, Raw, SampleError, VideoSource, log, mix_seed

_CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass
class Row:
    """One index row: ``path`` absolute, ``error`` set when the row itself is unusable."""

    line: int
    key: str = ""
    path: str = ""
    caption: str = ""
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    error: str | None = None


def _format_fields(path_format: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(path_format) if field]


def _number(value: Any, column: str) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{column} must be a non-negative number, got {value!r}")
    return number


def read_table(
    root: str | os.PathLike,
    index: str,
    path_column: str | None = "path",
    caption_column: str = "caption",
    key_column: str | None = None,
    fps_column: str | None = None,
    start_column: str | None = None,
    end_column: str | None = None,
    path_format: str | None = None,
) -> list[Row]:
    """Parse ``root/index`` (``.csv``, ``.tsv`` or JSON lines) into :class:`Row` s.

    ``path_format`` (e.g. ``"{page_dir}/{videoid}.mp4"``) builds the path from columns instead
    of ``path_column``. Paths are relative to ``root`` (absolute ones are kept). The index
    file and its columns must be right (else ``FileNotFoundError`` / :class:`DataError` naming
    the file and column); a bad *row* is returned with ``error`` set, to be skipped and counted.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    index_path = root / index
    if not index_path.is_file():
        raise FileNotFoundError(f"index file not found: {index_path}")
    roles = {"caption": caption_column, "key": key_column, "fps": fps_column, "start": start_column,
             "end": end_column}
    if path_format is None:
        if not path_column:
            raise DataError(f"{index_path}: give path_column or path_format")
        roles["path"] = path_column
    needed = {c: r for r, c in roles.items() if c} | {f: "path_format" for f in _format_fields(path_format or "")}
    optional = {c for r, c in roles.items() if c and r in ("fps", "start", "end")}  # may be blank / absent per row

    suffix = index_path.suffix.lower()
    if suffix in _CSV_DELIMITERS:
        records = _csv_records(index_path, _CSV_DELIMITERS[suffix], needed)
    elif suffix in _JSONL_SUFFIXES:
        records = _jsonl_records(index_path, needed, optional)
    else:
        raise DataError(f"{index_path}: unknown index format {suffix!r}; use .csv, .tsv or .jsonl")

    rows = []
    for line, record, error in records:
        row = Row(line=line, error=error)
        if error is None:
            try:
                _fill(row, record, roles, path_format, root)
            except (KeyError, ValueError, IndexError) as err:
                row.error = str(err) if not isinstance(err, KeyError) else f"no value for {err}"
        rows.append(row)
    if not rows:
        raise DataError(f"{index_path}: no rows")
    return rows


def _fill(row: Row, record: dict[str, Any], roles: dict[str, str | None], path_format: str | None,
          root: Path) -> None:
    caption = record[roles["caption"]]
    if not isinstance(caption, str):
        raise ValueError(f"caption is not text ({type(caption).__name__})")
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes survive the read as surrogates
        raise ValueError("undecodable caption (not UTF-8)") from None
    rel = path_format.format(**record) if path_format else record[roles["path"]]
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError("empty path")
    row.path = str(root / rel.strip())  # an absolute path stays absolute
    row.caption = caption.strip()
    row.key = str(record[roles["key"]]) if roles["key"] else str(Path(rel.strip()).with_suffix(""))
    row.fps = _number(record.get(roles["fps"]), roles["fps"]) if roles["fps"] else None
    row.start = _number(record.get(roles["start"]), roles["start"]) if roles["start"] else None
    row.end = _number(record.get(roles["end"]), roles["end"]) if roles["end"] else None
    if row.fps == 0:
        raise ValueError(f"{roles['fps']} must be positive")


def _csv_records(path: Path, delimiter: str, needed: dict[str, str]) -> Iterator[tuple[int, dict, str | None]]:
    # surrogateescape: a row with invalid UTF-8 is kept (and rejected alone), not the whole file
    f = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    with f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (the {needed[missing[0]]} column); "
                            f"the columns are {header}")
        records = []
        for record in reader:
            if None in record or any(v is None for v in record.values()):
                records.append((reader.line_num, {}, f"row does not have the header's {len(header)} fields"))
            else:
                records.append((reader.line_num, record, None))
    return iter(records)


def _jsonl_records(path: Path, needed: dict[str, str], optional: set[str]) -> Iterator[tuple[int, dict, str | None]]:
    records = []
    seen: set[str] = set()
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                records.append((line, {}, "undecodable line (not UTF-8)"))
                continue
            except json.JSONDecodeError as err:
                records.append((line, {}, f"invalid JSON ({err.msg})"))
                continue
            if not isinstance(record, dict):
                records.append((line, {}, f"expected a JSON object, got {type(record).__name__}"))
                continue
            seen.update(record)
            absent = [c for c in needed if c not in record and c not in optional]
            records.append((line, record, f"no {absent[0]!r} field" if absent else None))
    never = [c for c in needed if c not in seen]
    if records and never:
        raise DataError(f"{path}: no row has the field {never[0]!r} (the {needed[never[0]]} column); "
                        f"fields seen: {sorted(seen)}")
    return iter(records)


def auto_block_size(num_rows: int) -> int:
    """Rows per unit: 1 for small indexes (every row its own unit, so workers share them
    evenly), growing to 64 for large ones (about 256 units or more)."""
    return max(1, min(64, math.ceil(num_rows / 256)))


class _FolderSource(Dataset):
    """Shared by :class:`VideoFolder` and :class:`ImageFolder`: index, units, map-style access."""

    def __init__(self, root: str, index: str, path_column: str | None, caption_column: str,
                 key_column: str | None, path_format: str | None, block_size: int | None,
                 clip: ClipSpec | None, max_retries: int, **columns: str | None) -> None:
        self.root = str(root)
        self.index = index
        self.rows = read_table(root, index, path_column, caption_column, key_column,
                               path_format=path_format, **columns)
        self.block_size = block_size or auto_block_size(len(self.rows))
        if self.block_size < 1 or max_retries < 0:
            raise ValueError(f"invalid block_size={block_size} / max_retries={max_retries}")
        self.clip = clip
        self.max_retries = max_retries
        self._order: tuple[tuple[int, int], torch.Tensor] | None = None
        # measured shapes by (row, fps, stride): a file's shape does not change between epochs, and
        # rows measured at set-up (bucket estimates) reach forked DataLoader workers for free
        self._shapes: dict[tuple[int, float | None, int], tuple[int, int, int | None]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self) -> str:
        return str(Path(self.root) / self.index)

    # ---- units -----------------------------------------------------------------------------
    def num_units(self) -> int:
        return math.ceil(len(self.rows) / self.block_size)

    def unit_name(self, unit: int) -> str:
        return f"{self.describe()} block {unit}"

    def unit_sizes(self) -> list[int]:
        """Rows per unit (bad rows included: they are only found when decoded)."""
        n, b = len(self.rows), self.block_size
        return [min(b, n - u * b) for u in range(self.num_units())]

    def _epoch_order(self, epoch: int, seed: int) -> torch.Tensor:
        """A permutation of the rows for (epoch, seed), the same in every process."""
        if self._order is None or self._order[0] != (epoch, seed):
            g = torch.Generator().manual_seed(mix_seed(seed, epoch, "rows"))
            self._order = ((epoch, seed), torch.randperm(len(self.rows), generator=g))
        return self._order[1]

    def read_unit(self, unit: int, epoch: int, seed: int, shuffle: bool) -> Iterator[Raw]:
        lo, hi = unit * self.block_size, min(len(self.rows), (unit + 1) * self.block_size)
        indices = self._epoch_order(epoch, seed)[lo:hi].tolist() if shuffle else range(lo, hi)
        for i in indices:
            yield Raw(name=self.rows[i].path or f"{self.describe()}:{self.rows[i].line}", data=i)

    def decode(self, raw: Raw, clip: ClipSpec, generator: torch.Generator | None = None) -> dict[str, Any]:
        row = self.rows[raw.data]
        if row.error is not None:
            raise SampleError(f"{self.describe()}:{row.line}: {row.error}")
        if not os.path.isfile(row.path):
            raise SampleError(f"{row.path}: file not found (listed at {self.describe()}:{row.line})")
        return self._decode_row(row, clip, generator)

    def _decode_row(self, row: Row, clip: ClipSpec, generator: torch.Generator | None) -> dict[str, Any]:
        raise NotImplementedError

    def measure(self, raw: Raw, clip: ClipSpec) -> tuple[int, int, int | None]:
        key = (raw.data, clip.fps, clip.stride)
        if key not in self._shapes:
            row = self.rows[raw.data]
            if row.error is not None:
                raise SampleError(f"{self.describe()}:{row.line}: {row.error}")
            if not os.path.isfile(row.path):
                raise SampleError(f"{row.path}: file not found (listed at {self.describe()}:{row.line})")
            self._shapes[key] = tuple(self._measure_row(row, clip))
        return self._shapes[key]

    def _measure_row(self, row: Row, clip: ClipSpec) -> tuple[int, int, int | None]:
        raise NotImplementedError

    # ---- map-style -------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item for row ``i`` (with ``self.clip``; random starts / crops from torch's global RNG).

        A map-style dataset cannot skip, so a bad row is replaced by the next good one
        (i + 1, i + 2, ... wrapping around), each bad row logged; the item's ``skipped`` says
        how many were passed over. More than ``max_retries`` bad rows in a row raise
        :class:`DataError`.
        """
        if self.clip is None:
            raise ValueError(f"{type(self).__name__}({self.describe()}): set .clip (a ClipSpec) before indexing")
        names = []
        for attempt in range(self.max_retries + 1):
            j = (i + attempt) % len(self.rows)
            raw = Raw(self.rows[j].path, j)
            try:
                item = self.decode(raw, self.clip)
            except (SampleError, FileNotFoundError) as err:
                log.warning("skipping %s", err)
                names.append(str(err))
                continue
            return {**item, "skipped": len(names), "skipped_names": names}
        raise DataError(f"{self.describe()}: rows {i}..{i + self.max_retries} all failed; last: {names[-1]}")


class VideoFolder(_FolderSource, VideoSource):
    """Video files listed in a CSV / TSV / JSONL index (see the module docstring).

    Args:
        root: the folder; paths in the index are relative to it.
        index: the index file inside ``root`` (``.csv``, ``.tsv``, ``.jsonl``).
        path_column: column with the video's path (unless ``path_format``).
        caption_column: column with the caption.
        key_column: column with a unique id (default: the path without its suffix).
        fps_column: optional column with the frame rate (overrides the file's header).
        start_column: optional column with the start of the usable window, in seconds.
        end_column: optional column with its end, in seconds.
        path_format: build the path from columns, e.g. ``"{page_dir}/{videoid}.mp4"``.
        block_size: index rows per unit of work (default: :func:`auto_block_size`).
        clip: the clip spec for map-style access (the datamodule passes its own to streams).
        max_retries: bad rows passed over by ``ds[i]`` before giving up.
    """

    def __init__(self, root: str, index: str = "videos.csv", path_column: str | None = "path",
                 caption_column: str = "caption", key_column: str | None = None, fps_column: str | None = None,
                 start_column: str | None = None, end_column: str | None = None, path_format: str | None = None,
                 block_size: int | None = None, clip: ClipSpec | None = None, max_retries: int = 16) -> None:
        super().__init__(root, index, path_column, caption_column, key_column, path_format, block_size, clip,
                         max_retries, fps_column=fps_column, start_column=start_column, end_column=end_column)

    def _decode_row(self, row: Row, clip: ClipSpec, generator: torch.Generator | None) -> dict[str, Any]:
        return self.video_item(row.path, clip, generator, row.path, row.caption, row.key,
                               window=(row.start, row.end), fps=row.fps)

    def _measure_row(self, row: Row, clip: ClipSpec) -> tuple[int, int, int | None]:
        return self.video_shape(row.path, clip, row.path, window=(row.start, row.end), fps=row.fps)


class ImageFolder(_FolderSource, ImageSource):
    """Image files (anything PIL reads: jpg, png, webp, ...) listed in a CSV / TSV / JSONL index.

    Args:
        root: the folder; paths in the index are relative to it.
        index: the index file inside ``root``.
        path_column: column with the image's path (unless ``path_format``).
        caption_column: column with the caption.
        key_column: column with a unique id (default: the path without its suffix).
        path_format: build the path from columns.
        block_size: index rows per unit of work (default: :func:`auto_block_size`).
        clip: the clip spec for map-style access (size, crop, ``image_mode``).
        max_retries: bad rows passed over by ``ds[i]`` before giving up.
    """

    def __init__(self, root: str, index: str = "images.csv", path_column: str | None = "path",
                 caption_column: str = "caption", key_column: str | None = None, path_format: str | None = None,
                 block_size: int | None = None, clip: ClipSpec | None = None, max_retries: int = 16) -> None:
        super().__init__(root, index, path_column, caption_column, key_column, path_format, block_size, clip,
                         max_retries)

    def _decode_row(self, row: Row, clip: ClipSpec, generator: torch.Generator | None) -> dict[str, Any]:
        return self.image_item(row.path, clip, generator, row.path, row.caption, row.key)

    def _measure_row(self, row: Row, clip: ClipSpec) -> tuple[int, int, int | None]:
        return self.image_shape(row.path, row.path)
