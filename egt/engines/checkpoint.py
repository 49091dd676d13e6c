"""Resumable DeepSpeed checkpoints in the artifact store (the SFT ranks and the RL learners).

A checkpoint is DeepSpeed's own (module weights from rank 0, the optimizer state sharded per rank)
plus the trainer's position (``client``: the step, and whatever the trainer needs to continue the
same data order) and rank 0's RNG state (DeepSpeed keeps client state in rank 0's file; every rank
restores it), under ``<prefix>/step-N/``. ``latest.json`` is written
after every rank has uploaded, so a reader never sees a checkpoint with a shard missing. Only the
newest is kept: the final model is saved separately.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from egt.engines.distributed import World, barrier
from egt.storage.store import ArtifactStore

LATEST = "latest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


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


def _tag(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(
    engine,
    store: ArtifactStore,
    prefix: str,
    step: int,
    client: dict[str, Any],
    local_dir: Path,
    world: World,
) -> str:
    """DeepSpeed's checkpoint of ``step`` under ``<prefix>/step-N/``; returns that key prefix.

    Every rank must call this. Each writes its own files into a directory of its own and uploads
    them; after a barrier rank 0 points ``latest.json`` at the step, then drops older steps.
    """
    tag = _tag(step)
    own = Path(local_dir) / f"rank-{world.rank}"
    state = {"client": {"step": step, **client}, "rng": rng_state()}
    engine.save_checkpoint(str(own), tag=tag, client_state=state, save_latest=False)
    store.upload_dir(own / tag, f"{prefix}/{tag}")
    shutil.rmtree(own / tag, ignore_errors=True)
    barrier()
    if world.is_main:
        store.write_json(f"{prefix}/{LATEST}", {"tag": tag, "step": step, "world_size": world.world_size})
        # Only older steps: nothing newer can exist yet (every rank is past this step's barrier).
        old = {key.split("/")[0] for key in (k[len(prefix) + 1 :] for k in store.list(prefix))}
        for name in sorted(old):
            match = _STEP_DIR.match(name)
            if match and int(match.group(1)) < step:
                store.delete_prefix(f"{prefix}/{name}/")
    return f"{prefix}/{tag}"


def load_checkpoint(
    engine, store: ArtifactStore, prefix: str, local_dir: Path, world: World
) -> dict[str, Any] | None:
    """Restore the newest checkpoint into ``engine`` and this rank's RNG; returns its ``client`` dict.

    None when there is none yet. Every rank must call this. The first process of each node
    downloads the step into a directory named after it, which the node's processes then load from
    (DeepSpeed reads its own rank's optimizer shard only).
    """
    if not store.exists(f"{prefix}/{LATEST}"):
        return None
    latest = store.read_json(f"{prefix}/{LATEST}")
    if latest["world_size"] != world.world_size:
        raise ValueError(
            f"checkpoint {store.uri_for(prefix)}/{latest['tag']} was written by {latest['world_size']} "
            f"processes; this run has {world.world_size}. ZeRO shards its optimizer state per process: "
            "resume with the same number of processes, or delete the checkpoints to start over"
        )
    tag = latest["tag"]
    node_dir = Path(local_dir) / f"resume-{world.rank - world.local_rank}"  # the node's first rank
    if world.local_rank == 0:
        shutil.rmtree(node_dir, ignore_errors=True)
        store.download_dir(f"{prefix}/{tag}", node_dir / tag)
    barrier()
    path, state = engine.load_checkpoint(
        str(node_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {store.uri_for(prefix)}/{tag}")
    barrier()
    if world.local_rank == 0:
        shutil.rmtree(node_dir, ignore_errors=True)
    restore_rng(state["rng"])
    return state["client"]
