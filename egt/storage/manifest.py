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
    # Inputs whose work failed for good within the stage's error budget (a teacher's unanswered
    # requests): the stage finished, but is not up to date, so the next run retries exactly those.
    unfinished: int = 0
    # Summary numbers for people and dashboards; non-finite floats become None (JSON has no Infinity).
    metrics: dict[str, Any] = {}
    started_at: str  # ISO 8601
    finished_at: str  # ISO 8601
    egt_version: str = Field(default_factory=_egt_version)
    # Store prefix holding the outputs: ``<run>/<stage>`` of the run that computed them. Another run
    # whose stage has the same identity reuses them by copying this manifest verbatim (:func:`reuse`).
    # None in manifests written before outputs could be shared: the run's own prefix.
    prefix: str | None = None

    def output_key(self, run: str, name: str) -> str:
        """The store key of output ``name``, wherever the run that computed it keeps it."""
        if name not in self.outputs:
            raise KeyError(f"stage {self.stage} has no output {name!r}; it has {sorted(self.outputs)}")
        return f"{self.prefix or f'{run}/{self.stage}'}/{self.outputs[name]}"

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


def _has_identity(manifest: Manifest | None, config_hash: str, inputs: dict[str, str]) -> bool:
    """The manifest is of a finished stage with this identity and no work left to retry."""
    return (
        manifest is not None
        and manifest.config_hash == config_hash
        and manifest.inputs == inputs
        and manifest.unfinished == 0
    )


def _manifest_at(store: ArtifactStore, prefix: str) -> tuple[bytes, Manifest] | None:
    try:
        data = store.read_bytes(f"{prefix}/{MANIFEST_NAME}")
    except FileNotFoundError:
        return None
    return data, Manifest.model_validate_json(data)


def is_up_to_date(
    store: ArtifactStore, run: str, stage: str, config_hash: str, inputs: dict[str, str]
) -> bool:
    """True iff the stage finished with exactly this config and exactly these inputs.

    A stage reused from another run is up to date only while that run's stage still has the same
    identity: rerunning it with other settings replaces the outputs this manifest points at.
    """
    manifest = read_manifest(store, run, stage)
    if not _has_identity(manifest, config_hash, inputs):
        return False
    if manifest.prefix in (None, f"{run}/{stage}"):
        return True
    owner = _manifest_at(store, manifest.prefix)
    return owner is not None and _has_identity(owner[1], config_hash, inputs)


# Where finished stages are found by identity, for reuse across runs. Run names are DNS labels, so
# no run's artifacts can be under it.
SHARED_INDEX = "_shared"


def identity_key(stage: str, config_hash: str, inputs: dict[str, str]) -> str:
    identity = json.dumps({"config_hash": config_hash, "inputs": inputs}, sort_keys=True)
    return f"{SHARED_INDEX}/{stage}/{digest_bytes(identity.encode()).removeprefix('sha256:')}.json"


def register(store: ArtifactStore, manifest: Manifest) -> None:
    """Make a finished stage findable by its identity (the last run to compute it wins)."""
    key = identity_key(manifest.stage, manifest.config_hash, manifest.inputs)
    store.write_json(key, {"prefix": manifest.prefix})


def reuse(
    store: ArtifactStore, run: str, stage: str, config_hash: str, inputs: dict[str, str]
) -> Manifest | None:
    """Take over another run's finished stage of the same identity: its manifest, copied verbatim.

    The outputs stay where they are (a 15 GB model is referenced, not copied); the copy's bytes equal
    the original's, so every downstream stage's identity is the same as in the other run and can be
    reused in turn. None when no run holds this identity any more.
    """
    key = identity_key(stage, config_hash, inputs)
    if not store.exists(key):
        return None
    prefix = store.read_json(key)["prefix"]
    if prefix is None or prefix == f"{run}/{stage}":
        return None
    found = _manifest_at(store, prefix)
    if found is None or not _has_identity(found[1], config_hash, inputs) or found[1].prefix != prefix:
        return None
    store.write_bytes(manifest_key(run, stage), found[0])
    return found[1]
