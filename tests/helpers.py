"""Shared test utilities: independent counting of real block executions and references."""
from __future__ import annotations

import torch

from dit_cache.runtime.registry import get_adapter


class ExecutionCounter:
    """Counts blocks that really execute by hooking a submodule *inside* each block (its
    self-attention): a block whose call is skipped never reaches it. Independent of
    dit-cache's own counters."""

    def __init__(self, model: torch.nn.Module):
        self.count = 0
        self.per_unit: dict[int, int] = {}
        self._handles = []
        for u, blocks in enumerate(get_adapter(model).units(model)):
            for block in blocks:
                self._handles.append(block.attn1.register_forward_pre_hook(self._hook(u)))

    def _hook(self, unit: int):
        def hook(module, args):
            self.count += 1
            self.per_unit[unit] = self.per_unit.get(unit, 0) + 1

        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


def blocks_per_unit(model) -> int:
    return len(get_adapter(model).units(model)[0])


def expected_block_calls(model, pattern: str, calls_per_step: int, shallow: int) -> int:
    """Blocks a Skip-Cache run must execute for a given F/c pattern."""
    units = len(get_adapter(model).units(model))
    per_unit = blocks_per_unit(model)
    full = pattern.count("F") * units * per_unit
    cached = pattern.count("c") * 2 * shallow * per_unit
    return (full + cached) * calls_per_step


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
