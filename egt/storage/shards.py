"""Sharded, resumable processing and position-based partitioning of record pools.

A long stage (annotating thousands of samples with a teacher) processes its records in shards and writes
each finished shard as ``<prefix>/shard-NNNNN.jsonl``. Writes are atomic, so a shard is complete iff its
file exists; a re-run after a crash or preemption reads finished shards back and computes only the rest.

A shard file does not record what produced it: the stage runner (egt/stages/base.py) keeps shards only
while the stage's config and inputs are unchanged (``attempt.json``) and clears them otherwise. Settings
that change speed only (the shard size) are not part of that identity, so a finished shard is reused
only when it holds exactly the records (by id, in order) that the current partition gives its index;
and whatever was reused or computed, the outputs must cover every input once, or the stage fails.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from egt.storage.records import dumps_jsonl, loads_jsonl
from egt.storage.store import ArtifactStore, check_prefix

Record = dict[str, Any]
log = logging.getLogger(__name__)


class IncompleteOutputError(RuntimeError):
    """A stage's outputs do not cover its inputs exactly once: never written as a finished stage."""


def require_same_ids(inputs: list[Record], outputs: list[Record], what: str) -> None:
    """Fail unless ``outputs`` are the ``inputs`` by id, in order, each once, naming what differs."""
    expected, got = [r["id"] for r in inputs], [r["id"] for r in outputs]
    if expected == got:
        return
    missing = [i for i in expected if i not in set(got)]
    unexpected = [i for i in got if i not in set(expected)]
    repeated = [i for i, n in Counter(got).items() if n > 1]
    details = [
        f"{label} {len(ids)} ({', '.join(map(repr, ids[:3]))}{', …' if len(ids) > 3 else ''})"
        for label, ids in (("missing", missing), ("unexpected", unexpected), ("repeated", repeated))
        if ids
    ]
    raise IncompleteOutputError(
        f"{what}: {len(got)} output records for {len(expected)} inputs"
        + (f": {'; '.join(details)}" if details else " (in another order)")
    )


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
    unfinished: Callable[[Record], bool] | None = None,
) -> list[Record]:
    """Apply ``process`` shard by shard, persisting each result; return all outputs in order, one per
    input record (same id, same order), or raise :class:`IncompleteOutputError`.

    A stored shard is reused when it holds exactly its slice's ids; otherwise (written under another
    shard size) it is computed again. Records of a reused shard for which ``unfinished`` is true (a
    request that failed for good last time) are processed again and the shard rewritten.
    ``progress`` gets the number of input records each shard covered (finished earlier or now), which
    is what ``tqdm.update`` expects.
    """
    outputs: list[Record] = []
    for index, (start, end) in enumerate(shard_ranges(len(records), shard_size)):
        key, inputs = shard_key(prefix, index), records[start:end]
        shard = _stored_shard(store, key, inputs)
        if shard is None:
            shard = process(inputs)
            require_same_ids(inputs, shard, f"{store.uri_for(key)}: processing")
            store.write_bytes(key, dumps_jsonl(shard))
        elif unfinished is not None and any(unfinished(r) for r in shard):
            again = [k for k, r in enumerate(shard) if unfinished(r)]
            log.info("%s: retrying %d unfinished records", store.uri_for(key), len(again))
            redone = process([inputs[k] for k in again])
            require_same_ids([inputs[k] for k in again], redone, f"{store.uri_for(key)}: retrying")
            for k, record in zip(again, redone, strict=True):
                shard[k] = record
            store.write_bytes(key, dumps_jsonl(shard))
        outputs.extend(shard)
        if progress is not None:
            progress(end - start)
    require_same_ids(records, outputs, f"{store.uri_for(prefix)}: shards")
    return outputs


def _stored_shard(store: ArtifactStore, key: str, inputs: list[Record]) -> list[Record] | None:
    """The finished shard at ``key`` if it holds exactly ``inputs`` (by id, in order), else None."""
    try:
        shard = loads_jsonl(store.read_bytes(key), store.uri_for(key))
    except FileNotFoundError:
        return None
    if [r.get("id") for r in shard] != [r["id"] for r in inputs]:
        log.info("%s holds other records (an earlier shard size): computing it again", store.uri_for(key))
        return None
    return shard


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
