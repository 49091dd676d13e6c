"""Stage 0, prepare: make the run's inputs addressable and fingerprinted.

It builds the tiny model or synthetic pools when the spec asks for them. External datasets in egt's
own format are validated where they are; every other format (a public benchmark or training set as
published, egt.formats) is converted, streaming, into native records and image files under
``<run>/prepare/data/``. The datasets' digests are part of the stage's identity, so a changed dataset
re-runs every stage that depends on it.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from egt.spec import DatasetSpec
from egt.stages.base import StageContext, StageResult
from egt.stages.progress import bar
from egt.storage.manifest import digest_bytes
from egt.storage.records import read_records, write_records
from egt.storage.store import open_store, split_uri

SYNTHETIC_POOLS = ("sft", "rl", "eval")
log = logging.getLogger(__name__)


def external_digest(uri: str, endpoint_url: str | None) -> str:
    """The dataset file's digest (streamed for files; the ETag for S3): cheap enough for the operator."""
    store, key = split_uri(uri, endpoint_url)
    return store.digest(key)


def dataset_root(dataset: DatasetSpec, endpoint_url: str | None) -> str:
    """The folder a dataset's image references resolve in: its root, else the file's own folder."""
    return dataset.root or split_uri(dataset.uri, endpoint_url)[0].uri_for("")


def dataset_digest(dataset: DatasetSpec, endpoint_url: str | None) -> str:
    """The file's digest and its root's listing (sizes and dates or ETags, not contents): replacing
    an image reruns what depends on the dataset."""
    root = open_store(dataset_root(dataset, endpoint_url), endpoint_url)
    return f"{external_digest(dataset.uri, endpoint_url)}+{root.tree_digest()}"


def model_digest(path: str, endpoint_url: str | None) -> str:
    """Config plus file names: cheap to compute for a 15 GB checkpoint, changes when it is replaced."""
    store = open_store(path, endpoint_url)
    files = store.list("")
    listing = "\n".join(files).encode()
    config = store.read_bytes("config.json") if "config.json" in files else b""
    return digest_bytes(listing + config)


def build_synthetic(ctx: StageContext) -> tuple[dict[str, str], dict[str, int], dict[str, Any]]:
    from egt.data.synthetic import generate_split

    synthetic = ctx.spec.data.synthetic
    local = ctx.workdir / "data"
    outputs, counts, metrics = {}, {}, {}
    sizes = {"sft": synthetic.sft_size, "rl": synthetic.rl_size, "eval": synthetic.eval_size}
    for pool in SYNTHETIC_POOLS:
        noisy = pool != "eval"  # evaluation pairs are clean: a benchmark's labels are its ground truth
        records = generate_split(
            local,
            pool,
            sizes[pool],
            synthetic.seed,
            ambiguous_fraction=synthetic.ambiguous_fraction if noisy else 0.0,
            flipped_fraction=synthetic.flipped_fraction if noisy else 0.0,
            image_size=synthetic.image_size,
        )
        write_records(open_store(str(local)), f"{pool}.jsonl", records)
        outputs[pool] = f"data/{pool}.jsonl"
        counts[f"{pool}_pairs"] = len(records)
        kinds = Counter(r["truth_kind"] for r in records)
        metrics[f"{pool}_truth_kinds"] = dict(kinds)
    ctx.store.upload_dir(local, ctx.key("data"))
    return outputs, counts, metrics


def run(ctx: StageContext) -> StageResult:
    result = StageResult()
    if ctx.spec.model.tiny is not None:
        from egt.models.tiny import build_tiny_model

        tiny = ctx.spec.model.tiny
        local = build_tiny_model(Path(ctx.workdir) / "model", tiny.seed, tiny.hidden_size, tiny.num_layers)
        ctx.store.upload_dir(local, ctx.key("model"))
        result.outputs["model"] = "model"
    if ctx.spec.data.synthetic is not None:
        outputs, counts, metrics = build_synthetic(ctx)
        result.outputs.update(outputs)
        result.counts.update(counts)
        result.metrics.update(metrics)
    else:
        prepare_external(ctx, result)
    return result


def prepare_external(ctx: StageContext, result: StageResult) -> None:
    # Imported here: the operator imports this module for the digests alone (egt.stages.fingerprints).
    from egt.formats import convert
    from egt.formats.common import MediaRoot
    from egt.stages.data import check_native

    endpoint = ctx.spec.store.endpoint_url
    local = ctx.workdir / "data"
    local.mkdir(parents=True, exist_ok=True)
    datasets = {}
    for name, dataset in ctx.spec.data.datasets().items():
        about = {"uri": dataset.uri, "format": dataset.format, "digest": dataset_digest(dataset, endpoint)}
        if dataset.format == "egt":
            # Checked here, before any GPU time: every field, and every image opened once inside
            # the dataset's root; the stages read these records, their images as absolute URIs.
            store, key = split_uri(dataset.uri, endpoint)
            media = MediaRoot(dataset_root(dataset, endpoint), endpoint)
            text_only = name == "scalar_extra"  # Skywork-VL's second phase adds text-only pairs
            records = check_native(read_records(store, key), dataset.uri, media, text_only)
            write_records(open_store(str(local)), f"{name}.jsonl", records)
            result.outputs[name] = f"data/{name}.jsonl"
            pairs = len(records)
            # Diagnostics columns of one's own data, counted as for synthetic data (published
            # formats carry none).
            kinds = Counter(str(r["truth_kind"]) for r in records if r.get("truth_kind") is not None)
            if kinds:
                result.metrics[f"{name}_truth_kinds"] = dict(kinds)
        else:
            with bar(None, f"prepare {name} ({dataset.format})", ctx.progress, unit="row") as progress:
                converted = convert(
                    dataset, name, local, ctx.workdir / "sources", endpoint, progress.update, log.warning
                )
            result.outputs[name] = f"data/{converted.records}"
            about.update(converted.summary())
            pairs = converted.pairs
        result.counts[f"{name}_pairs"] = pairs
        datasets[name] = about
    if result.outputs:
        ctx.store.upload_dir(local, ctx.key("data"))
    result.metrics["datasets"] = datasets
