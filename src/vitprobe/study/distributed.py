"""torch.distributed glue: one code path for 1 process and for ``torchrun`` jobs.

``torchrun --nproc_per_node=K -m vitprobe run ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`init` joins the group (NCCL on
CUDA, gloo on CPU). Every collective here is a no-op in a single process, so the
study code never branches on the world size except to shard work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device: str = "cpu", timeout_s: float = 1800.0) -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)  # NCCL object collectives use the current device
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return World(rank=rank, size=size, local_rank=local_rank)


def device_for(world: World, device: str) -> str:
    """``cuda`` under torchrun means this process's GPU: ``cuda:LOCAL_RANK``."""
    if device == "cuda" and world.distributed:
        return f"cuda:{world.local_rank}"
    return device


def finish(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(world: World, values: list[int]) -> list[int]:
    """Element-wise sum over ranks (flags > 0 mean: some rank wants to stop/checkpoint)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.cpu()]


def gather_to_main(world: World, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
    if not world.distributed:
        return [obj]
    out: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(world: World, obj: Any) -> Any:
    if not world.distributed:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
