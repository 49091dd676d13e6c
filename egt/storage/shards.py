"""Sharded, resumable processing and position-based partitioning of record pools.

A long stage (annotating thousands of samples with a teacher) processes its records in shards and writes
each finished shard as ``<prefix>/shard-NNNNN.jsonl``. Writes are atomic, so a shard is complete iff its
file exists; a re-run after a crash or preemption reads finished shards back and computes only the rest.

A shard file does not record what produced it: the stage runner (egt/stages/base.py) keeps shards only
while the stage's config and inputs are unchanged (``attempt.json``) and clears them otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from egt.storage.records import dumps_jsonl, loads_jsonl
from egt.storage.store import ArtifactStore, check_prefix

Record = dict[str, Any]


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """Half-open [start, end) ranges covering range(n), all of shard_size except possibly the last."""
    if n < 0 or shard_size < 1:
        raise ValueError(f"need n >= 0 and shard_size >= 1, got n={n} shard_size={shard_size}")
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def shard_key(prefix: str, index: int) -> str:
    prefix = check_prefix(prefix)
    name = f"shard-{index:05d}.jsonl"
    return f"{prefix}/{name}" if prefix else name


def process_in_shards(
    store: ArtifactStore,
    prefix: str,
    records: list[Record],
    shard_size: int,
    process: Callable[[list[Record]], list[Record]],
    progress: Callable[[int], None] | None = None,
) -> list[Record]:
    """Apply ``process`` shard by shard, persisting each result; return all outputs in order.

    ``progress`` gets the number of input records each shard covered (finished earlier or now), which is
    what ``tqdm.update`` expects.
    """
    outputs: list[Record] = []
    for index, (start, end) in enumerate(shard_ranges(len(records), shard_size)):
        key = shard_key(prefix, index)
        try:
            shard = loads_jsonl(store.read_bytes(key), store.uri_for(key))
        except FileNotFoundError:
            shard = process(records[start:end])
            store.write_bytes(key, dumps_jsonl(shard))
        outputs.extend(shard)
        if progress is not None:
            progress(end - start)
    return outputs


def partition(records: list[Record], shard_index: int, num_shards: int) -> list[Record]:
    """The shard_index-th of num_shards contiguous slices of records; sizes differ by at most one.

    Deterministic by position, so every node of an Indexed Job (shard_index = JOB_COMPLETION_INDEX) gets a
    disjoint slice and together they cover the pool in order.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    n = len(records)
    return records[shard_index * n // num_shards : (shard_index + 1) * n // num_shards]
