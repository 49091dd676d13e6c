"""A stage's earlier result stays until the new attempt starts replacing it.

When a stage runs again with another config or other inputs, its earlier manifest and outputs are
still the finished result of the earlier identity: a new attempt that fails (a NaN at step 2, a
teacher outage) must not cost them, so reverting the change gets them back without recomputing.
The new attempt sees the store through :class:`ReplacingStore`: its first write to any of the
earlier outputs first deletes the earlier manifest and all those outputs together, so a manifest
never names outputs that are half replaced. Everything else (shards, checkpoints) is cleared at the
start of the attempt, as before.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from egt.storage.manifest import Manifest, manifest_key
from egt.storage.store import ArtifactStore

log = logging.getLogger(__name__)


def earlier_outputs(manifest: Manifest | None, run: str, unit: str) -> list[str]:
    """Store keys (files or prefixes) of the earlier result's outputs kept under the unit's prefix;
    outputs reused from another run's prefix are that run's and are never touched."""
    if manifest is None or manifest.prefix not in (None, f"{run}/{unit}"):
        return []
    return [manifest.output_key(run, name) for name in manifest.outputs]


def remove_output(store: ArtifactStore, key: str) -> None:
    """Delete an output: one object, or a folder of them (a model)."""
    if store.exists(key):
        store.delete(key)
    else:
        store.delete_prefix(key)


class ReplacingStore:
    """The store for a new attempt while an earlier result is kept (module docstring); every other
    call goes to the store unchanged."""

    def __init__(self, store: ArtifactStore, run: str, unit: str, outputs: list[str]) -> None:
        self._store, self._manifest = store, manifest_key(run, unit)
        self._outputs = outputs
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _replacing(self, key: str) -> None:
        key = key.rstrip("/")
        touches = any(
            key == out or key.startswith(f"{out}/") or out.startswith(f"{key}/") for out in self._outputs
        )
        if not touches:
            return
        with self._lock:
            if not self._outputs:
                return
            log.info("replacing the earlier result of %s", self._store.uri_for(self._manifest))
            self._store.delete(self._manifest)
            for out in self._outputs:
                remove_output(self._store, out)
            self._outputs = []

    def write_bytes(self, key: str, data: bytes) -> None:
        self._replacing(key)
        self._store.write_bytes(key, data)

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, obj: Any) -> None:
        self._replacing(key)
        self._store.write_json(key, obj)

    def create(self, key: str, data: bytes) -> bool:
        self._replacing(key)
        return self._store.create(key, data)

    def upload_dir(self, local_dir: Path, prefix: str) -> None:
        self._replacing(prefix)
        self._store.upload_dir(local_dir, prefix)

    def delete(self, key: str) -> None:
        self._replacing(key)
        self._store.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self._replacing(prefix)
        self._store.delete_prefix(prefix)
