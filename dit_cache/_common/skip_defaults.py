"""Skip-Cache's per-backbone defaults (each adapter sets one), torch-free so the command line
can resolve a preset without importing torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SkipCacheDefaults:
    """Per-backbone Skip-Cache defaults from the Skip-DiT reference."""

    interval: int = 2
    shallow: int = 1  # units computed at each end on a cached step, on a reference-depth model
    start: float = 1000.0  # every step with t >= start is full
    close: float = 50.0  # every step after one with t <= close is full
    reference_units: int = 28  # depth (units) of the reference model `shallow` was set for

    def shallow_for(self, n_units: int) -> int:
        """`shallow` scaled to a model of `n_units` units (the same share of its depth runs on a
        cached step, at least one unit): DiT-XL's 4 of 28 blocks is 1 of 8."""
        return max(1, round(self.shallow * n_units / self.reference_units))
