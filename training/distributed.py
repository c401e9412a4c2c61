"""Small helpers for multi-process training launched by torchrun (DDP).

    rank, world_size, local_rank = init_distributed()   # (0, 1, 0) without torchrun
    ...
    hyps = gather_dict(hyps)   # every rank's hypotheses, merged, on every rank
    if is_main():
        save(...)
    cleanup()

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; every helper is a no-op
(or the identity) when no process group is initialised, so single-process code calls them alike.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group torchrun describes; returns (rank, world_size, local_rank).

    Only when WORLD_SIZE > 1; the backend is ``nccl`` on CUDA (each process on GPU LOCAL_RANK),
    else ``gloo``, unless given.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        device = None
        if backend == "nccl":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method="env://", device_id=device)
    return dist.get_rank(), dist.get_world_size(), local_rank


def is_main() -> bool:
    """True on rank 0, and without a process group."""
    return not initialized() or dist.get_rank() == 0


def barrier() -> None:
    if initialized():
        dist.barrier()


def gather_dict(d: dict) -> dict:
    """The union of every rank's ``d`` (later ranks win on equal keys), on every rank."""
    if not initialized():
        return dict(d)
    parts: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, d)
    return {key: value for part in parts for key, value in part.items()}


def cleanup() -> None:
    if initialized():
        dist.destroy_process_group()
