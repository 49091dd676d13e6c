"""Datasets as lists of plain dicts, stored as JSON Lines or Parquet (chosen by the key's extension).

JSON Lines is what people grep and diff; Parquet is what large pools and analysis want. Both hold the same
record schema. Non-finite floats round-trip in both: Parquet stores IEEE doubles, and Python's json writes
the non-standard literals ``Infinity`` / ``NaN``, which ``json.loads`` accepts but strict parsers (``jq``,
JavaScript's ``JSON.parse``) reject. That is deliberate: entropies and losses can be infinite,
and a sentinel string would silently change a column's type.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

from egt.storage.store import ArtifactStore

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow (~40 MiB resident) is imported where Parquet is read or written: the operator imports this
# module through the stage fingerprints and reads only JSON manifests.

FORMATS = (".jsonl", ".parquet")


def dumps_jsonl(records: list[dict[str, Any]]) -> bytes:
    """One compact JSON object per line, UTF-8, newline-terminated."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def loads_jsonl(data: bytes | str, source: str = "<jsonl>") -> list[dict[str, Any]]:
    """Parse JSON Lines (blank lines skipped); errors name the source and the 1-based line number."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
        if not isinstance(record, dict):
            raise ValueError(f"{source}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _format(key: str) -> str:
    for ext in FORMATS:
        if key.endswith(ext):
            return ext
    raise ValueError(f"cannot tell the record format of {key!r}: expected one of {', '.join(FORMATS)}")


def _to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Columns are the union of all records' keys, in first-seen order.

    pa.Table.from_pylist takes the columns from the first record only and would drop later keys; a key
    missing from some records becomes null there (and reads back as None).
    """
    import pyarrow as pa

    names = list(dict.fromkeys(name for r in records for name in r))
    return pa.table({name: pa.array([r.get(name) for r in records]) for name in names})


def read_records(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    """Read a dataset written by write_records (or by hand, for JSON Lines)."""
    fmt = _format(key)
    data = store.read_bytes(key)
    if fmt == ".jsonl":
        return loads_jsonl(data, store.uri_for(key))
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pylist()


def write_records(store: ArtifactStore, key: str, records: list[dict[str, Any]]) -> None:
    """Write a dataset atomically, as JSON Lines or Parquet by the key's extension."""
    if _format(key) == ".jsonl":
        store.write_bytes(key, dumps_jsonl(records))
        return
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(_to_table(records), buffer)
    store.write_bytes(key, buffer.getvalue())
