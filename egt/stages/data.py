"""Where a stage finds its model and datasets, and how it opens their images.

Datasets reference images by paths relative to the dataset file (or by absolute URIs). When a stage
reads a pool it rewrites every reference to an absolute URI, so records can move between stages,
files and nodes and still point at their images.
"""

from __future__ import annotations

from functools import lru_cache
from io import BytesIO
from pathlib import Path

from PIL import Image

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


def validate_records(records: list[dict], source: str) -> None:
    """Fail with the record and field at fault, before any work is spent on a bad dataset."""
    if not records:
        raise ValueError(f"{source}: the dataset is empty")
    seen: set[str] = set()
    for line, record in enumerate(records, start=1):
        missing = [name for name in REQUIRED_FIELDS if name not in record]
        if missing:
            raise ValueError(f"{source}: record {line} lacks {', '.join(missing)}")
        if record["label"] not in (1, 2):
            raise ValueError(
                f"{source}: record {record['id']!r} has label {record['label']!r}; expected 1 or 2"
            )
        if not isinstance(record["images"], list):
            raise ValueError(f"{source}: record {record['id']!r}: images must be a list of references")
        if record["id"] in seen:
            raise ValueError(f"{source}: duplicate id {record['id']!r}")
        seen.add(record["id"])


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
