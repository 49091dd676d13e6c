"""Sharded processing resumes where it stopped; partitions cover a pool exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from egt.storage.shards import partition, process_in_shards, shard_key, shard_ranges
from egt.storage.store import ArtifactStore, FileStore

RECORDS = [{"i": i} for i in range(10)]


def test_shard_ranges() -> None:
    assert shard_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert shard_ranges(4, 2) == [(0, 2), (2, 4)]
    assert shard_ranges(0, 3) == []
    with pytest.raises(ValueError, match="shard_size=0"):
        shard_ranges(5, 0)


def test_shard_key() -> None:
    assert shard_key("run/annotate/shards", 3) == "run/annotate/shards/shard-00003.jsonl"
    assert shard_key("", 0) == "shard-00000.jsonl"


def test_resume_recomputes_only_unfinished_shards(artifact_store: ArtifactStore) -> None:
    calls: list[int] = []
    crash = {"armed": True}

    def process(shard: list[dict]) -> list[dict]:
        first = shard[0]["i"]
        calls.append(first // 2)
        if first // 2 == 2 and crash["armed"]:
            crash["armed"] = False
            raise RuntimeError("preempted")
        return [{"i": r["i"], "square": r["i"] ** 2} for r in shard]

    with pytest.raises(RuntimeError, match="preempted"):
        process_in_shards(artifact_store, "run/annotate/shards", RECORDS, 2, process)
    assert calls == [0, 1, 2]
    assert artifact_store.list("run/annotate/shards") == [
        "run/annotate/shards/shard-00000.jsonl",
        "run/annotate/shards/shard-00001.jsonl",
    ]

    calls.clear()
    progress: list[int] = []
    out = process_in_shards(artifact_store, "run/annotate/shards", RECORDS, 2, process, progress.append)
    assert calls == [2, 3, 4]
    assert progress == [2, 2, 2, 2, 2]
    assert out == [{"i": i, "square": i * i} for i in range(10)]

    calls.clear()
    assert process_in_shards(artifact_store, "run/annotate/shards", RECORDS, 2, process) == out
    assert calls == []

    artifact_store.delete_prefix("run/annotate/shards")
    assert process_in_shards(artifact_store, "run/annotate/shards", RECORDS, 2, process) == out
    assert calls == [0, 1, 2, 3, 4]


def test_shard_outputs_may_differ_in_length(tmp_path: Path) -> None:
    """A shard whose records were all filtered out is still finished (an empty file)."""
    store = FileStore(tmp_path)
    calls = []

    def keep_even(shard: list[dict]) -> list[dict]:
        calls.append(len(shard))
        return [r for r in shard if r["i"] % 2 == 0 and r["i"] < 4]

    first = process_in_shards(store, "s", RECORDS, 3, keep_even)
    assert first == [{"i": 0}, {"i": 2}]
    assert process_in_shards(store, "s", RECORDS, 3, keep_even) == first
    assert calls == [3, 3, 3, 1]


def test_partition_covers_the_pool_in_order() -> None:
    for n in [0, 1, 7, 10]:
        pool = [{"i": i} for i in range(n)]
        for num_shards in [1, 3, 4, 12]:
            parts = [partition(pool, k, num_shards) for k in range(num_shards)]
            assert [r for part in parts for r in part] == pool
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("index", "num_shards", "message"),
    [(3, 3, r"\[0, 3\), got 3"), (-1, 2, r"\[0, 2\), got -1"), (0, 0, "num_shards must be >= 1, got 0")],
)
def test_partition_validates(index: int, num_shards: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition(RECORDS, index, num_shards)
