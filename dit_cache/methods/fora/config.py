"""FORA (Fast-Forward caching): the `fora` / `fora-N` presets.

Refresh steps (``step % interval == 0``, the first step included) run every block normally and
store the outputs of its attention and MLP submodules (`attn1`, `attn2`, `ff`: before the
adaLN gate). On the ``interval - 1`` following steps every block still runs, but those
submodules hand back the stored outputs, while the modulation (shift/scale/gate, computed from
the new timestep), the residual adds and everything outside the submodules are recomputed.

- DiT-XL: self-attention + MLP of every block.
- Latte: self-attention + MLP of every temporal block; self-, cross-attention + MLP of every
  spatial block.
- Hunyuan-DiT: self-, cross-attention + MLP of every block; the native long-skip fusion at the
  entry of the deep blocks runs every step on the fresh hidden states.

Each CFG branch of a sequential-CFG loop keeps its own stored outputs; a branch that has nothing
stored yet computes (counted as ``reuse_missed``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..validation import check_required_int


@dataclass(frozen=True)
class FORAConfig:
    """FORA (Fast-Forward caching): on refresh steps (``step % interval == 0``, so the first
    step too) every block computes and stores the outputs of its attention and MLP submodules
    (before the adaLN gate); on the ``interval - 1`` following steps each block reuses them
    while its modulation (shift/scale/gate) is recomputed from the new timestep."""

    interval: int = 3

    name = "fora"
    inserts_adapters = False

    def __post_init__(self):
        check_required_int("interval", self.interval)

    def is_full(self, step: int, t: float, t_prev: float | None) -> bool:
        return step % self.interval == 0

    def pattern(self, timesteps) -> str:
        """`F` (refresh) / `c` (reuse) string for a sequence of timesteps."""
        return "".join("F" if i % self.interval == 0 else "c" for i, _ in enumerate(timesteps))


# refresh every N steps (the reference uses N=3)
PRESETS = {"fora": FORAConfig(), **{f"fora-{n}": FORAConfig(interval=n) for n in range(2, 8)}}
