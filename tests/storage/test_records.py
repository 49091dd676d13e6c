"""JSON Lines and Parquet datasets round-trip the same records, on both stores."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from egt.storage.records import dumps_jsonl, loads_jsonl, read_records, write_records
from egt.storage.store import ArtifactStore, FileStore

RECORDS = [
    {
        "id": "s-0",
        "images": ["img/a.png", "img/b.png"],
        "question": "Which one is larger? 大きい",
        "entropy": float("inf"),
        "score": 1,
        "meta": {"source": "synthetic", "tags": ["x"]},
    },
    {
        "id": "s-1",
        "images": [],
        "question": "none",
        "entropy": -float("inf"),
        "score": 0,
        "meta": {"source": "real", "tags": []},
    },
    {"id": "s-2", "images": ["img/c.png"], "question": "", "entropy": 0.25, "score": 3, "meta": None},
]


@pytest.mark.parametrize("key", ["pool/data.jsonl", "pool/data.parquet"])
def test_round_trip(artifact_store: ArtifactStore, key: str) -> None:
    write_records(artifact_store, key, RECORDS)
    assert read_records(artifact_store, key) == RECORDS


@pytest.mark.parametrize("key", ["empty.jsonl", "empty.parquet"])
def test_empty_dataset(tmp_path: Path, key: str) -> None:
    store = FileStore(tmp_path)
    write_records(store, key, [])
    assert read_records(store, key) == []


def test_nan_round_trips(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    for key in ["n.jsonl", "n.parquet"]:
        write_records(store, key, [{"x": float("nan")}])
        assert math.isnan(read_records(store, key)[0]["x"])


def test_parquet_keeps_keys_missing_from_the_first_record(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    write_records(store, "d.parquet", [{"a": 1}, {"a": 2, "b": ["x"]}])
    assert read_records(store, "d.parquet") == [{"a": 1, "b": None}, {"a": 2, "b": ["x"]}]


def test_jsonl_writes_infinity_literal() -> None:
    assert dumps_jsonl([{"e": float("inf")}]) == b'{"e": Infinity}\n'
    assert loads_jsonl(b'{"e": Infinity}\n\n{"e": -Infinity}\n') == [{"e": math.inf}, {"e": -math.inf}]


def test_bad_json_error_names_key_and_line(artifact_store: ArtifactStore) -> None:
    artifact_store.write_bytes("bad.jsonl", b'{"a": 1}\n{"a": 2}\n{"a": \n')
    uri = artifact_store.uri_for("bad.jsonl")
    with pytest.raises(ValueError, match=re.escape(f"{uri}:3: invalid JSON")):
        read_records(artifact_store, "bad.jsonl")


def test_non_object_line_rejected() -> None:
    with pytest.raises(ValueError, match=r"pool\.jsonl:2: expected a JSON object, got list"):
        loads_jsonl('{"a": 1}\n[1, 2]\n', "pool.jsonl")


def test_unknown_extension_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.csv.*\.jsonl, \.parquet"):
        write_records(FileStore(tmp_path), "data.csv", RECORDS)
