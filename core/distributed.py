"""Multi-process dissection with torch.distributed (torchrun), gloo on CPU, nccl on GPU.

Each rank dissects a contiguous shard of the samples. After pass 1 every rank
gathers all ranks' level statistics and merges them in rank order, so every rank
derives the same levels; after pass 2 rank 0 gathers and merges the counts and
writes the result. Statistics merge exactly (see :mod:`gdx.stats`), so the result
equals a single-process run's.

    torchrun --nproc_per_node=2 -m gdx.cli run --gen scene --seg scene --samples 10000
    # several machines: torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:29500 ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, samples: int) -> tuple[int, int]:
        """The contiguous ``[start, stop)`` of samples this rank owns."""
        start = samples * self.rank // self.size
        stop = samples * (self.rank + 1) // self.size
        return start, stop


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_world(device: str | None = None) -> World:
    """Join the process group torchrun set up (gloo on CPU, nccl with CUDA)."""
    if not launched_by_torchrun():
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Share the machine's cores instead of oversubscribing them.
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return World(dist.get_rank(), dist.get_world_size())


def gather_states(world: World, state: dict[str, torch.Tensor], *, to_all: bool) -> list[dict[str, Any]]:
    """All ranks' state dicts in rank order (on every rank, or on rank 0 only)."""
    if world.size == 1:
        return [state]
    import torch.distributed as dist

    cpu_state = {k: v.detach().cpu() for k, v in state.items()}
    if to_all:
        out: list[Any] = [None] * world.size
        dist.all_gather_object(out, cpu_state)
        return out
    gathered: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(cpu_state, gathered, dst=0)
    return gathered or []


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
