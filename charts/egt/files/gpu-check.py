"""The chart's GPU check (`helm test`, gpuCheck.enabled): NCCL all-reduces over every GPU of one node.

Run under torchrun, one rank per GPU, in the trainer image with the pod placement, shared memory and
NCCL settings a run's GPU pods get. Each size is all-reduced once and checked (every element must be
the sum of the ranks' values), then timed; rank 0 prints the bus bandwidth (nccl-tests' definition,
2·(n−1)/n · bytes / time). A wrong sum, a failed collective or a hang (the pod's deadline) fails the
test. Without GPUs the same collectives run on CPU with gloo, which is how the project's tests run it.

EGT_CHECK_SIZES_MIB: comma-separated tensor sizes in MiB (default 1,64,1024).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

REPEATS = 5


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    where = f"{world} GPUs ({torch.cuda.get_device_name(device)})" if cuda else f"{world} CPU processes"
    for mib in (int(size) for size in os.environ.get("EGT_CHECK_SIZES_MIB", "1,64,1024").split(",")):
        tensor = torch.full((mib * 2**20 // 4,), float(rank + 1), dtype=torch.float32, device=device)
        dist.all_reduce(tensor)
        expected = world * (world + 1) / 2
        if not bool((tensor == expected).all()):
            found = tensor[0].item()
            raise SystemExit(f"rank {rank}: all_reduce of {mib} MiB gave {found}, expected {expected}")
        seconds = timed(tensor, cuda)
        bus = 2 * (world - 1) / world * tensor.numel() * 4 / seconds
        if rank == 0:
            print(f"all_reduce {mib} MiB over {where}: {seconds * 1e3:.2f} ms, {bus / 1e9:.1f} GB/s")
    dist.barrier()
    if rank == 0:
        print("gpu check passed")
    dist.destroy_process_group()


def timed(tensor: torch.Tensor, cuda: bool) -> float:
    """Mean seconds of one all-reduce of ``tensor`` over REPEATS (its values grow by the world size
    each time: far from float32's range for any node)."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(REPEATS):
        dist.all_reduce(tensor)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / REPEATS


if __name__ == "__main__":
    main()
