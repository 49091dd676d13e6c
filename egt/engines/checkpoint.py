"""Resumable training checkpoints in the artifact store.

A checkpoint is one torch file (model, optimizer, RNG states, and whatever position the trainer
needs: the step, the curriculum index) plus ``latest.json`` written after it, so a reader never
sees a half-uploaded checkpoint. Only the newest is kept: the final model is saved separately.
"""

from __future__ import annotations

import io
import random
from typing import Any

import torch

from egt.storage.store import ArtifactStore

LATEST = "latest.json"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    store: ArtifactStore,
    prefix: str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
) -> str:
    """Upload the checkpoint of ``step``, then point ``latest.json`` at it, then drop older ones."""
    buffer = io.BytesIO()
    payload = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "extra": extra,
    }
    torch.save(payload, buffer)
    key = f"{prefix}/step-{step:07d}.pt"
    store.write_bytes(key, buffer.getvalue())
    previous = store.read_json(f"{prefix}/{LATEST}")["key"] if store.exists(f"{prefix}/{LATEST}") else None
    store.write_json(f"{prefix}/{LATEST}", {"key": key, "step": step})
    if previous and previous != key and store.exists(previous):
        store.delete(previous)
    return key


def load_latest(store: ArtifactStore, prefix: str) -> dict[str, Any] | None:
    """The newest checkpoint under ``prefix``, or None when there is none yet."""
    if not store.exists(f"{prefix}/{LATEST}"):
        return None
    key = store.read_json(f"{prefix}/{LATEST}")["key"]
    return torch.load(io.BytesIO(store.read_bytes(key)), map_location="cpu", weights_only=False)


def resume(payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    restore_rng(payload["rng"])
