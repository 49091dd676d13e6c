"""Artifact storage: one store interface over local directories and S3, stage manifests, sharded resume."""

from egt.storage.manifest import (
    Manifest,
    config_hash,
    digest_bytes,
    is_up_to_date,
    manifest_digest,
    manifest_key,
    read_manifest,
    write_manifest,
)
from egt.storage.records import dumps_jsonl, loads_jsonl, read_records, write_records
from egt.storage.shards import partition, process_in_shards, shard_ranges
from egt.storage.store import ArtifactStore, FileStore, S3Store, open_store

__all__ = [
    "ArtifactStore",
    "FileStore",
    "Manifest",
    "S3Store",
    "config_hash",
    "digest_bytes",
    "dumps_jsonl",
    "is_up_to_date",
    "loads_jsonl",
    "manifest_digest",
    "manifest_key",
    "open_store",
    "partition",
    "process_in_shards",
    "read_manifest",
    "read_records",
    "shard_ranges",
    "write_manifest",
    "write_records",
]
