"""The stage contract: outputs first, then ``<run>/<stage>/manifest.json`` last.

Because the manifest is written last (and atomically), its presence means the stage finished and every
output it names is in place. A downstream stage names an input by the digest of the upstream manifest's
bytes, so re-running an upstream stage with any change (config, inputs, outputs, counts) changes every
downstream input digest, and :func:`is_up_to_date` tells a stage whether it can be skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import to_jsonable_python

from egt.storage.store import ArtifactStore

MANIFEST_NAME = "manifest.json"


def _egt_version() -> str:
    try:
        return version("egt")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class Manifest(BaseModel):
    """What a finished stage produced, from what, and how it went."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    config_hash: str
    inputs: dict[str, str] = {}  # input name → digest (usually an upstream manifest_digest)
    outputs: dict[str, str] = {}  # output name → store key
    counts: dict[str, int] = {}
    # Summary numbers for people and dashboards; non-finite floats become None (JSON has no Infinity).
    metrics: dict[str, Any] = {}
    started_at: str  # ISO 8601
    finished_at: str  # ISO 8601
    egt_version: str = Field(default_factory=_egt_version)

    @field_validator("metrics")
    @classmethod
    def _finite(cls, metrics: dict[str, Any]) -> dict[str, Any]:
        return _finite_or_none(metrics)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return to_jsonable_python(value)  # paths, dates, enums, dataclasses


def config_hash(config: Any) -> str:
    """Digest of canonical JSON (sorted keys, no whitespace): equal configs hash equal across processes."""
    canonical = json.dumps(config, default=_jsonable, sort_keys=True, separators=(",", ":"))
    return digest_bytes(canonical.encode("utf-8"))


def manifest_key(run: str, stage: str) -> str:
    if not run or not stage:
        raise ValueError(f"run and stage must be non-empty, got run={run!r} stage={stage!r}")
    return f"{run}/{stage}/{MANIFEST_NAME}"


def read_manifest(store: ArtifactStore, run: str, stage: str) -> Manifest | None:
    """The stage's manifest, or None if the stage has not finished (no manifest yet)."""
    key = manifest_key(run, stage)
    try:
        data = store.read_bytes(key)
    except FileNotFoundError:
        return None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        raise ValueError(f"invalid manifest {store.uri_for(key)}: {e}") from e


def write_manifest(store: ArtifactStore, run: str, stage: str, manifest: Manifest) -> None:
    """Write the manifest; call it only after every output is written."""
    if manifest.stage != stage:
        raise ValueError(f"manifest is for stage {manifest.stage!r}, not {stage!r}")
    store.write_bytes(manifest_key(run, stage), manifest.model_dump_json(indent=2).encode("utf-8") + b"\n")


def manifest_digest(store: ArtifactStore, run: str, stage: str) -> str:
    """Digest of the manifest file's bytes: how a downstream stage names this stage as an input."""
    return digest_bytes(store.read_bytes(manifest_key(run, stage)))


def is_up_to_date(
    store: ArtifactStore, run: str, stage: str, config_hash: str, inputs: dict[str, str]
) -> bool:
    """True iff the stage finished with exactly this config and exactly these inputs."""
    manifest = read_manifest(store, run, stage)
    return manifest is not None and manifest.config_hash == config_hash and manifest.inputs == inputs
