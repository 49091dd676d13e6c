"""Where a stage finds its model and datasets, and how it opens their images.

Datasets reference images by paths relative to the dataset file (or by absolute URIs). When a stage
reads a pool it rewrites every reference to an absolute URI, so records can move between stages,
files and nodes and still point at their images.
"""

from __future__ import annotations

from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

from egt.formats.common import DatasetError, MediaRoot
from egt.stages.base import StageContext
from egt.storage.records import read_records
from egt.storage.store import local_folder, split_uri

REQUIRED_FIELDS = ("id", "images", "query", "response_1", "response_2", "label")


def is_absolute_ref(ref: str) -> bool:
    return ref.startswith(("s3://", "file://", "/"))


def absolutize_images(records: list[dict], base_uri: str) -> list[dict]:
    """Records whose image references are absolute URIs (relative ones resolved against base_uri)."""
    base = base_uri.rstrip("/")
    return [
        {**r, "images": [ref if is_absolute_ref(ref) else f"{base}/{ref}" for ref in r["images"]]}
        for r in records
    ]


MAX_LISTED = 20  # bad records named in one error; the rest are counted


def record_problems(record: Any) -> list[str]:
    """What is wrong with one native record's fields (nothing about its images' contents)."""
    if not isinstance(record, dict):
        return [f"not a JSON object but {type(record).__name__}"]
    problems = [f"lacks {name}" for name in REQUIRED_FIELDS if name not in record]
    if "id" in record and (isinstance(record["id"], bool) or not isinstance(record["id"], str | int)):
        problems.append(f"id must be a string or integer, got {record['id']!r}")
    if "label" in record and (isinstance(record["label"], bool) or record["label"] not in (1, 2)):
        problems.append(f"label is {record['label']!r}; expected 1 or 2")
    for name in ("query", "response_1", "response_2"):
        if name in record and not isinstance(record[name], str):
            problems.append(f"{name} must be a string, got {type(record[name]).__name__}")
    images = record.get("images")
    if "images" in record:
        if not isinstance(images, list):
            problems.append(f"images must be a list of references, got {type(images).__name__}")
        else:
            problems += [
                f"image reference {ref!r} is not a non-empty string"
                for ref in images
                if not isinstance(ref, str) or not ref
            ]
    return problems


def raise_problems(source: str, problems: list[str], total: int) -> None:
    """One error naming every bad record (up to MAX_LISTED, the rest counted)."""
    if not problems:
        return
    listed = "\n".join(f"  - {problem}" for problem in problems[:MAX_LISTED])
    more = f"\n  … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DatasetError(f"{source}: {len(problems)} problem(s) in {total} records:\n{listed}{more}")


def field_problems(records: list[dict]) -> list[tuple[int, str]]:
    """(row, problem) for every bad field of every record, duplicate ids included."""
    problems, seen = [], set()
    for row, record in enumerate(records, start=1):
        identified = isinstance(record, dict) and "id" in record
        where = f"row {row}" + (f" (id {record['id']!r})" if identified else "")
        problems += [(row, f"{where}: {problem}") for problem in record_problems(record)]
        if identified and isinstance(record["id"], str | int):
            if record["id"] in seen:
                problems.append((row, f"{where}: duplicate id"))
            seen.add(record["id"])
    return problems


def validate_records(records: list[dict], source: str) -> None:
    """Fail naming every bad record and field, before any work is spent on a bad dataset."""
    if not records:
        raise DatasetError(f"{source}: the dataset is empty")
    raise_problems(source, [problem for _, problem in field_problems(records)], len(records))


def check_native(records: list[dict], source: str, media: MediaRoot, text_only: bool = False) -> list[dict]:
    """A native dataset's records with every image reference resolved inside ``media``'s root to an
    absolute URI, each image opened once (it exists and decodes, within PIL's decompression-bomb
    limit); every bad record of the dataset, fields and images, named in one error. Only a
    ``text_only`` pool (the scalar stage's extra pairs) may have records without images."""
    if not records:
        raise DatasetError(f"{source}: the dataset is empty")
    problems, checked = field_problems(records), []
    for row, record in enumerate(records, start=1):
        refs = record.get("images") if isinstance(record, dict) else None
        if not isinstance(refs, list):
            continue  # already named among the field problems
        where = f"row {row} (id {record.get('id')!r})"
        if not refs and not text_only:
            problems.append((row, f"{where}: no images (a multimodal judge's pair needs at least one)"))
        uris = []
        for ref in refs:
            if not isinstance(ref, str) or not ref:
                continue
            try:
                uris.append(media.image(ref, where))
            except DatasetError as error:
                problems.append((row, str(error)))
        checked.append({**record, "images": uris})
    raise_problems(source, [problem for _, problem in sorted(problems, key=lambda p: p[0])], len(records))
    return checked


def pool_uri(ctx: StageContext, pool: str) -> str:
    """URI of a dataset in native records: prepare's output for synthetic or converted data, else the file."""
    if pool in ctx.upstream("prepare").outputs:
        return ctx.store.uri_for(ctx.upstream_output("prepare", pool))
    return ctx.spec.data.datasets()[pool].uri


def eval_sets(ctx: StageContext) -> list[str]:
    return ["eval"] if ctx.spec.data.synthetic is not None else sorted(ctx.spec.data.eval)


def eval_format(ctx: StageContext, name: str) -> str:
    """The published format of an evaluation set (``egt`` for synthetic data): which scoring applies."""
    return "egt" if ctx.spec.data.synthetic is not None else ctx.spec.data.eval[name].format


def load_pool(ctx: StageContext, pool: str) -> list[dict]:
    """Read a dataset with absolute image references."""
    uri = pool_uri(ctx, pool)
    store, key = split_uri(uri, ctx.spec.store.endpoint_url)
    records = read_records(store, key)
    validate_records(records, uri)
    return absolutize_images(records, store.uri_for(""))


def model_dir(ctx: StageContext, stage: str) -> Path:
    """Local folder of the model a stage produced ("prepare" gives the base model)."""
    if stage == "prepare" and ctx.spec.model.path is not None:
        return local_folder(ctx.spec.model.path, ctx.spec.store.endpoint_url)
    return ctx.store.local_path(ctx.upstream_output(stage, "model"))


class ImageLoader:
    """Opens image references (paths, file:// and s3:// URIs) as RGB images, caching recent ones."""

    def __init__(self, endpoint_url: str | None = None, cache_size: int = 4096) -> None:
        self.endpoint_url = endpoint_url
        self._open = lru_cache(maxsize=cache_size)(self._open_uncached)

    def __call__(self, refs: list[str]) -> list[Image.Image]:
        return [self._open(ref) for ref in refs]

    def _open_uncached(self, ref: str) -> Image.Image:
        if ref.startswith("s3://"):
            store, key = split_uri(ref, self.endpoint_url)
            data = store.read_bytes(key)
        else:
            data = Path(ref.removeprefix("file://")).read_bytes()
        image = Image.open(BytesIO(data))
        return image.convert("RGB")
