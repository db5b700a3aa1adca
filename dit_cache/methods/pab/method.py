"""PAB's hooks (see config.py for the method and its step decision)."""
from __future__ import annotations

import dataclasses

from ...adapters import Site
from ...runtime.registry import register_method
from ...runtime.tracker import CallContext
from ..layer_reuse import LayerReuseMethod, find_sites
from .config import PAB_MLP_BLOCKS, PAB_MLP_SKIP, PAB_MLP_TIMESTEPS, PABConfig, PABPlan


@register_method(PABConfig)
class PAB(LayerReuseMethod):
    @classmethod
    def resolve_config(cls, config: PABConfig, adapter, model) -> PABConfig:
        """Turn off the kinds the model lacks (so patterns and stats describe what runs) and
        fill the MLP defaults; `mlp_blocks` must name a block the model has."""
        sites = find_sites(model, adapter)
        config = config.for_kinds({site.kind for site, _ in sites})
        changes: dict = {}
        if config.mlp:
            n_blocks = 1 + max(site.block for site, _ in sites if site.kind == "mlp")
            requested = config.mlp_blocks if config.mlp_blocks is not None else PAB_MLP_BLOCKS
            blocks = tuple(b for b in requested if b < n_blocks)
            if not blocks:
                raise ValueError(
                    f"mlp_blocks={requested} names no block of this {type(model).__name__} "
                    f"(it has {n_blocks} blocks per stack)"
                )
            changes["mlp_blocks"] = blocks
            if config.mlp_timesteps is None:
                changes["mlp_timesteps"] = PAB_MLP_TIMESTEPS
            if config.mlp_skip is None:
                changes["mlp_skip"] = PAB_MLP_SKIP
        return dataclasses.replace(config, **changes) if changes else config

    def install(self) -> None:
        self._mlp_blocks = frozenset(self.config.mlp_blocks_used)
        super().install()

    def decide(self, timesteps: list[float]) -> bool:
        return self.config.plan_step(timesteps).full

    def begin_call(self, ctx: CallContext) -> None:
        # every branch of the step follows the step's plan (recomputed: decide ran once)
        ctx.scratch["plan"] = self.config.plan_step(ctx.gen.timesteps) if ctx.tracked else PABPlan()

    def _broadcastable(self, site: Site) -> bool:
        if site.kind == "mlp":
            return self.config.mlp and site.block in self._mlp_blocks
        rng = getattr(self.config, f"{site.kind}_range")
        return rng is not None and rng > 1

    def stores(self, site: Site, ctx: CallContext) -> bool:
        # Attention that can broadcast: every computed output, like diffusers (one per layer).
        # MLP: only on an anchor step and the steps that reuse it.
        if site.kind == "mlp" and ctx.scratch["plan"].mlp is None:
            return False
        return self._broadcastable(site)

    def reuses(self, site: Site, ctx: CallContext) -> bool:
        plan = ctx.scratch["plan"]
        if site.kind == "mlp":
            return plan.mlp == "reuse" and self._broadcastable(site)
        return site.kind in plan.broadcast

    def describe_cache(self) -> dict:
        last = self.state.tracker.last
        plan = self.config.plan_step(last.timesteps) if last is not None and last.timesteps else PABPlan()
        return {**super().describe_cache(), "broadcast_now": sorted(plan.broadcast), "mlp_now": plan.mlp}
