"""The order in which `dit_cache.finetune` visits the samples, split over the processes."""
from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from .._common.dist import DistContext


class BatchOrder:
    """Shuffled sample order per epoch from `DistributedSampler` (seed + epoch), batched per rank;
    its whole state is (epoch, batches consumed in the epoch)."""

    def __init__(self, n: int, per_rank: int, ctx: DistContext, seed: int):
        self.sampler = DistributedSampler(
            range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.per_rank = per_rank
        self.steps_per_epoch = len(self.sampler) // per_rank
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the data has {n} samples, fewer than one global batch ({per_rank * ctx.world_size}); "
                "lower batch_size or add data"
            )
        self.epoch, self.pos, self._indices = 0, 0, None

    def _materialise(self):
        self.sampler.set_epoch(self.epoch)
        self._indices = torch.tensor(list(iter(self.sampler)), dtype=torch.long)

    def next(self) -> torch.Tensor:
        if self._indices is None:
            self._materialise()
        if self.pos >= self.steps_per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
            self._materialise()
        b = self._indices[self.pos * self.per_rank : (self.pos + 1) * self.per_rank]
        self.pos += 1
        return b

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.sampler.seed}

    def load_state_dict(self, s: dict):
        self.epoch, self.pos = int(s["epoch"]), int(s["pos"])
        self._materialise()
