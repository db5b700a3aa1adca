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

from .layer_reuse import LayerReuseMethod, Site
from ..registry import register_method
from ..schedules import FORAConfig
from ..runtime.tracker import CallContext


@register_method(FORAConfig)
class FORA(LayerReuseMethod):
    hook_name = "dit_cache.fora"

    def decide(self, step: int, t: float, t_prev: float | None) -> bool:
        return self.config.is_full(step, t, t_prev)

    def reuses(self, site: Site, ctx: CallContext) -> bool:
        return not ctx.full

    def describe_cache(self) -> dict:
        return {**super().describe_cache(), "refresh_every": self.config.interval}
