"""What every dataset reader shares: streamed rows, errors that name the row, media inside a root.

Readers never hold a whole file: JSON Lines go line by line, a JSON list element by element, Parquet
a few rows at a time (a VL-RewardBench row carries its image), and embedded images are written out as
they are read. Every error names the file, the 1-based row number, the row's id when it has one and
the field at fault.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from egt.storage.store import ArtifactStore, check_key, open_store

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_CHUNK = 1 << 20
# Parquet rows per read: a VL-RewardBench row holds its image, so a few rows keep memory flat.
PARQUET_BATCH_ROWS = 16


class DatasetError(ValueError):
    """A dataset row that cannot be converted; the message names file, row, id and field."""


def at(source: str, number: int, row_id: Any = None) -> str:
    """Where a row is, for messages: ``file: row 12 (id 'x')``."""
    return f"{source}: row {number}" + (f" (id {row_id!r})" if row_id is not None else "")


def field_value(row: dict, name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """The row's field ``name``, which must be present, not null and of ``kind``."""
    if name not in row or row[name] is None:
        raise DatasetError(f"{where}: field {name!r} is missing")
    value = row[name]
    if not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DatasetError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value


def iter_jsonl(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{source}: row {number}: invalid JSON: {e.msg} (column {e.colno})") from e
            if not isinstance(row, dict):
                raise DatasetError(
                    f"{source}: row {number}: expected a JSON object, got {type(row).__name__}"
                )
            yield number, row


def iter_json_list(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    """(element number, object) per element of a top-level JSON list, read a chunk at a time.

    An element that fails to parse is retried with more text until the file ends, so the buffer holds
    one element and one chunk, whatever the file's size.
    """
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as f:
        buffer, pos, eof = f.read(_CHUNK), 0, False

        def more() -> bool:
            nonlocal buffer, pos, eof
            chunk = "" if eof else f.read(_CHUNK)
            eof = not chunk
            buffer, pos = buffer[pos:] + chunk, 0
            return bool(chunk)

        def skip(chars: str) -> str:
            """The next character that is not in chars ('' at the end of the file)."""
            nonlocal pos
            while True:
                while pos < len(buffer) and buffer[pos] in chars:
                    pos += 1
                if pos < len(buffer) or not more():
                    return buffer[pos] if pos < len(buffer) else ""

        if skip(" \t\r\n\ufeff") != "[":
            raise DatasetError(f"{source}: expected a JSON list of objects")
        pos += 1
        number = 0
        while True:
            nxt = skip(" \t\r\n")
            if nxt == "]":
                return
            if number and nxt != ",":
                raise DatasetError(f"{source}: after element {number}: expected ',' or ']'")
            if number:
                pos += 1
                skip(" \t\r\n")
            number += 1
            while True:
                try:
                    row, end = decoder.raw_decode(buffer, pos)
                    break
                except json.JSONDecodeError as e:
                    if not more():
                        raise DatasetError(f"{source}: row {number}: invalid JSON: {e.msg}") from e
            pos = end
            if not isinstance(row, dict):
                raise DatasetError(
                    f"{source}: row {number}: expected a JSON object, got {type(row).__name__}"
                )
            yield number, row


def iter_parquet(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    """(row number, row) a few rows at a time.

    pyarrow's default read-ahead (``pre_buffer``) keeps the column chunks it fetched for the life of
    the reader: converting a 2 GB VL-RewardBench-format file grew by the file's size
    (bench/import.py). A buffered stream without it holds about one batch.
    """
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_CHUNK)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise DatasetError(f"{source}: not a readable Parquet file: {e}") from e
    number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def iter_rows(path: Path, source: str) -> Iterator[tuple[int, dict]]:
    """Rows of a JSON Lines, JSON list or Parquet file, by the file's extension."""
    if source.endswith(".parquet"):
        return iter_parquet(path, source)
    if source.endswith(".jsonl"):
        return iter_jsonl(path, source)
    if source.endswith(".json"):
        return iter_json_list(path, source)
    raise DatasetError(f"{source}: cannot tell the file's format: expected .jsonl, .json or .parquet")


def check_image(data: bytes, where: str) -> str:
    """Decode the image fully (a truncated file fails only then); its format's file extension."""
    try:
        with Image.open(BytesIO(data)) as image:
            pixels = image.width * image.height
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                raise DatasetError(
                    f"{where}: {image.width}×{image.height} pixels is over PIL's decompression-bomb "
                    f"limit of {Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS)"
                )
            image.load()
            kind = (image.format or "").lower()
    except DatasetError:
        raise
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError …)
        raise DatasetError(f"{where}: the image does not decode: {e}") from e
    return {"jpeg": "jpg", "": "img"}.get(kind, kind)


class MediaRoot:
    """Resolves a dataset's relative image and frame paths inside one folder, and nowhere else.

    A published path that is absolute, a URI, or climbs out with ``..`` is refused: a dataset names
    files, it does not get the pipeline's filesystem and credentials. ``strip_prefix`` drops the
    authors' own folder from absolute paths first (R1-Reward-RL ships paths on its authors' servers).
    """

    def __init__(self, root: str, endpoint_url: str | None = None, strip_prefix: str | None = None) -> None:
        self.store: ArtifactStore = open_store(root, endpoint_url)
        self.strip_prefix = strip_prefix

    def key(self, ref: Any, where: str) -> str:
        if not isinstance(ref, str) or not ref:
            raise DatasetError(f"{where}: media path must be a non-empty string, got {ref!r}")
        path = ref
        if self.strip_prefix and path.startswith(self.strip_prefix):
            path = path[len(self.strip_prefix) :].lstrip("/")
        if "://" in path or path.startswith(("/", "~")) or ".." in PurePosixPath(path).parts:
            raise DatasetError(
                f"{where}: media path {ref!r} is absolute or leaves the data root {self.store.uri}; "
                "dataset paths resolve only inside the root (set the dataset's root to widen it, or "
                "strip_prefix to drop a published folder)"
            )
        parts = [p for p in PurePosixPath(path).parts if p != "."]
        return check_key("/".join(parts))

    def image(self, ref: Any, where: str) -> str:
        """The URI of a checked image file (it exists and decodes)."""
        key = self.key(ref, where)
        try:
            data = self.store.read_bytes(key)
        except FileNotFoundError:
            raise DatasetError(f"{where}: image {ref!r} not found under {self.store.uri}") from None
        check_image(data, f"{where}: image {ref!r}")
        return self.store.uri_for(key)

    def frames(self, ref: Any, count: int, where: str) -> list[str]:
        """URIs of ``count`` frames sampled uniformly from a folder of frames, in name order."""
        prefix = self.key(ref, where)
        names = [k for k in self.store.list(prefix) if k.lower().endswith(IMAGE_SUFFIXES)]
        if not names:
            raise DatasetError(f"{where}: video frame folder {ref!r} under {self.store.uri} has no images")
        return [self.image(key, where) for key in uniform_sample(names, count)]


def uniform_sample(items: list, count: int) -> list:
    """``count`` items spread evenly from first to last (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def preferred_position(seed: int, index: int) -> int:
    """Where the preferred response goes (1 or 2) in the index-th chosen/rejected row.

    Each consecutive pair of rows gets one of each position, in an order drawn from the seed: the
    positions are balanced to within one row at every point of the file, so a model cannot learn
    "always 1", and the assignment is reproducible without reading the file twice.
    """
    first = 1 if random.Random(f"{seed}:{index // 2}").random() < 0.5 else 2
    return first if index % 2 == 0 else 3 - first


@dataclass
class Source:
    """One dataset being converted: where its rows are and where its media go."""

    path: Path  # a local copy of the file
    name: str  # the file's URI, for messages
    media: MediaRoot
    images_dir: Path  # where embedded images are written
    images_ref: str  # images_dir as a reference relative to the converted records file
    video_frames: int = 8
    position_seed: int = 0
    warnings: list[str] = field(default_factory=list)
    warn: Callable[[str], None] = print

    def note(self, message: str) -> None:
        self.warnings.append(message)
        self.warn(message)

    def write_image(self, data: bytes, stem: str, where: str) -> str:
        """Write an embedded image as it is (no re-encoding); its reference from the records file."""
        ext = check_image(data, where)
        name = f"{stem}.{ext}"
        (self.images_dir / name).write_bytes(data)
        return f"{self.images_ref}/{name}"


def file_stem(row_id: str, number: int) -> str:
    """A file name for a row's media: the id made path-safe, with the row number to keep it unique."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in row_id)[:80]
    return f"{number:06d}-{safe}"
