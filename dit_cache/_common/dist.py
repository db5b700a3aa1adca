"""This process's place in a `torchrun` job, and the few collectives the tooling needs.

Every collective is a no-op when the process runs alone, so callers never branch on it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False  # this context initialised the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world_size

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        if self.enabled:
            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(t.data, 0)

    @torch.no_grad()
    def check_same(self, module: torch.nn.Module) -> None:
        """Raise if the ranks' parameters differ (a per-parameter float64 checksum, all-gathered)."""
        if not self.enabled:
            return
        sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in module.parameters()])
        gathered = [torch.empty_like(sums) for _ in range(self.world_size)]
        dist.all_gather(gathered, sums)
        if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
            raise RuntimeError("the processes' model weights diverged during distributed training")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device_type: str) -> DistContext:
    """Use an initialised process group, or start one when launched by torchrun (WORLD_SIZE > 1):
    gloo on CPU, nccl on CUDA (after selecting this rank's GPU: nccl collectives send from the
    current device)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistContext()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        owns = True
    world = dist.get_world_size()
    return DistContext(
        rank=dist.get_rank(), world_size=world, local_rank=local_rank,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))), owns_group=owns,
    )
