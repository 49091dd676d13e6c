"""Sharded processing resumes where it stopped; partitions cover a pool exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from egt.storage.shards import (
    IncompleteOutputError,
    partition,
    process_in_shards,
    require_same_ids,
    shard_key,
    shard_ranges,
)
from egt.storage.store import ArtifactStore, FileStore

RECORDS = [{"id": f"r{i}", "i": i} for i in range(10)]


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
        return [{"id": r["id"], "i": r["i"], "square": r["i"] ** 2} for r in shard]

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
    assert out == [{"id": f"r{i}", "i": i, "square": i * i} for i in range(10)]

    calls.clear()
    assert process_in_shards(artifact_store, "run/annotate/shards", RECORDS, 2, process) == out
    assert calls == []

    artifact_store.delete_prefix("run/annotate/shards")
    assert process_in_shards(artifact_store, "run/annotate/shards", RECORDS, 2, process) == out
    assert calls == [0, 1, 2, 3, 4]


def test_a_shard_written_under_another_shard_size_is_computed_again(tmp_path: Path) -> None:
    """Interrupted with shards of 4 after the first, resumed with shards of 8: shard 0 on disk holds
    records 0-3, but shard 0 is now records 0-7. Reused by index it lost four records; by id it is
    computed again and every record comes out once."""
    store, calls = FileStore(tmp_path), []

    def process(shard: list[dict]) -> list[dict]:
        calls.append([r["i"] for r in shard])
        return [{**r, "done": True} for r in shard]

    process_in_shards(store, "s", RECORDS[:4], 4, process)  # the first shard of the first attempt
    calls.clear()
    out = process_in_shards(store, "s", RECORDS, 8, process)
    assert [r["id"] for r in out] == [r["id"] for r in RECORDS]
    assert calls == [list(range(8)), [8, 9]]
    calls.clear()
    assert process_in_shards(store, "s", RECORDS, 8, process) == out and calls == []


def test_outputs_must_cover_every_input_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(IncompleteOutputError, match=r"shard-00000.jsonl: processing: 1 output records for 3"):
        process_in_shards(store, "s", RECORDS, 3, lambda shard: shard[:1])
    assert not store.exists(shard_key("s", 0))  # nothing is written for a shard that dropped records
    with pytest.raises(IncompleteOutputError, match=r"missing 1 \('r2'\); unexpected 1 \('x'\)"):
        require_same_ids(RECORDS[:3], [*RECORDS[:2], {"id": "x"}], "merge")
    with pytest.raises(IncompleteOutputError, match=r"4 output records for 3 inputs: repeated 1 \('r0'\)"):
        require_same_ids(RECORDS[:3], [*RECORDS[:3], RECORDS[0]], "merge")
    with pytest.raises(IncompleteOutputError, match="in another order"):
        require_same_ids(RECORDS[:2], RECORDS[1::-1], "merge")


def test_unfinished_records_of_a_stored_shard_are_processed_again(tmp_path: Path) -> None:
    """A teacher outage: the records whose requests failed are asked again, the others are kept."""
    store, calls, down = FileStore(tmp_path), [], {"r1", "r4"}

    def process(shard: list[dict]) -> list[dict]:
        calls.append([r["id"] for r in shard])
        return [{**r, "error": r["id"] in down} for r in shard]

    first = process_in_shards(store, "s", RECORDS, 3, process, unfinished=lambda r: r["error"])
    assert [r["id"] for r in first if r["error"]] == ["r1", "r4"]
    down.clear()
    calls.clear()
    again = process_in_shards(store, "s", RECORDS, 3, process, unfinished=lambda r: r["error"])
    assert calls == [["r1"], ["r4"]] and not any(r["error"] for r in again)
    assert [r["id"] for r in again] == [r["id"] for r in RECORDS]


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
