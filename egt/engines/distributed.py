"""Data-parallel processes: who this process is, its process group, and the torchrun line of a node.

torchrun starts one process per accelerator of a node and tells each who it is through the
environment: ``RANK`` (0 … world size − 1 over all nodes), ``WORLD_SIZE``, ``LOCAL_RANK`` (its
accelerator on the node), ``MASTER_ADDR`` / ``MASTER_PORT`` (where rank 0 listens). Without
torchrun (``egt run --local``, a one-process container) the process is rank 0 of a world of 1.

On Kubernetes a multi-node stage is an Indexed Job (``completionMode: Indexed``, one pod per node)
with a headless Service (``clusterIP: None``, ``publishNotReadyAddresses: true``) named in the pod
template's ``subdomain``, so pod ``i`` resolves as ``<job>-<i>.<service>``. Every pod runs the same
command, built by :func:`torchrun_command`::

    torchrun --nnodes=N --node-rank=$(JOB_COMPLETION_INDEX) --nproc-per-node=GPUS
             --master-addr=<job>-0.<service> --master-port=29500 -m jobs.sft --spec run.yaml

``$(JOB_COMPLETION_INDEX)`` is Kubernetes' own expansion of a container environment variable in
``command`` / ``args`` (no shell involved): the Job controller sets that variable to the pod's
index, so pod ``i`` is node ``i`` and pod 0 hosts rank 0 and the rendezvous. torchrun's default
static rendezvous then gives node ``i`` the ranks ``i·GPUS … i·GPUS + GPUS − 1``.

This module imports torch only inside the functions that need it: :func:`world` is cheap enough
for code that runs without torch (the stage wrapper deciding who writes the manifest).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

# Kubernetes expands $(VAR) in a container's command and args from the container's environment.
NODE_RANK_FROM_JOB_INDEX = "$(JOB_COMPLETION_INDEX)"
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world(env: Mapping[str, str] | None = None) -> World:
    """This process's place among the data-parallel processes, from torchrun's environment."""
    env = os.environ if env is None else env

    def number(name: str, default: int) -> int:
        value = env.get(name, "")
        if value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"${name}={value!r} is not an integer") from None

    found = World(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))
    if found.world_size < 1 or not 0 <= found.rank < found.world_size or found.local_rank < 0:
        raise ValueError(
            f"inconsistent torchrun environment: RANK={found.rank} WORLD_SIZE={found.world_size} "
            f"LOCAL_RANK={found.local_rank}"
        )
    return found


def is_main() -> bool:
    return world().is_main


def init_process_group(current: World, device: str) -> None:
    """Join the process group: gloo on CPU, nccl on CUDA. Idempotent.

    A world of 1 gets an in-process group (no port, no rendezvous): DeepSpeed always wants a
    process group, and it reads ``LOCAL_RANK`` from the environment, so a run without torchrun gets
    torchrun's variables for a world of 1 set here (only where they are absent).
    """
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(current.local_rank)
    for name, value in (
        ("RANK", current.rank),
        ("WORLD_SIZE", current.world_size),
        ("LOCAL_RANK", current.local_rank),
    ):
        os.environ.setdefault(name, str(value))
    if dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if current.world_size == 1:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        # env:// — MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE from torchrun.
        dist.init_process_group(backend, rank=current.rank, world_size=current.world_size)


@contextmanager
def process_group(current: World, device: str) -> Iterator[None]:
    """The process group for a block; a multi-process one is torn down after it, by every rank.

    Leaving gloo's connections to interpreter shutdown can abort a process after its work is done
    ("terminate called without an active exception"; seen once in about a dozen 2-process launches), which
    torchrun reports as a failed launch. After an error nothing is torn down: the process is
    about to fail anyway, and a barrier could wait forever on a rank that died. A world of 1 keeps
    its in-process group (no peers, no connections) for later stages in the same process.
    """
    import torch.distributed as dist

    init_process_group(current, device)
    yield
    if current.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(value: float) -> float:
    """The sum of ``value`` over all processes (the value itself outside a process group).

    Reduced in float64, on the device the backend reduces on (CUDA for nccl, CPU for gloo).
    """
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def rank_micro_batches(
    count: int, current: World, micro_batch_size: int, slots: int | None = None
) -> list[list[int]]:
    """This rank's positions of a ``count``-long batch, in micro-batches, the same number on every rank.

    Rank ``r`` takes every ``world_size``-th position from ``r``. Every rank gets ``slots``
    micro-batches (default: the most any rank needs), the tail of them empty where its share ran
    out: forward and backward passes are collective under ZeRO (gradient reductions, ZeRO-3's
    parameter gathers), so a rank with nothing left runs a padding pass that contributes nothing.
    """
    share = list(range(current.rank, count, current.world_size))
    batches = [share[start : start + micro_batch_size] for start in range(0, len(share), micro_batch_size)]
    most = math.ceil(count / current.world_size)  # rank 0's share, the largest
    needed = slots if slots is not None else math.ceil(most / micro_batch_size)
    if len(batches) > needed:
        raise ValueError(f"{len(batches)} micro-batches of this rank do not fit in {needed} slots")
    return batches + [[] for _ in range(needed - len(batches))]


def torchrun_command(
    nodes: int,
    gpus_per_node: int,
    master_addr: str,
    port: int,
    spec_path: str,
    *,
    node_rank: str | int = NODE_RANK_FROM_JOB_INDEX,
    module: str = "jobs.sft",
) -> list[str]:
    """The command every node of an Indexed Job runs (module docstring).

    ``node_rank`` defaults to the pod's completion index; pass a number to run a node by hand.
    """
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"torchrun needs ≥ 1 node and ≥ 1 process per node, got {nodes} × {gpus_per_node}")
    if not 0 < port < 65536:
        raise ValueError(f"master port {port} is not a TCP port")
    if isinstance(node_rank, int) and not 0 <= node_rank < nodes:
        raise ValueError(f"node rank {node_rank} is not in 0 … {nodes - 1}")
    return [
        "torchrun",
        f"--nnodes={nodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={gpus_per_node}",
        f"--master-addr={master_addr}",
        f"--master-port={port}",
        "--max-restarts=0",
        "-m",
        module,
        "--spec",
        str(spec_path),
    ]
