"""Pyramid Attention Broadcast (PAB): the `pab` / `pab-236` / `pab-347` / `pab-469` presets.

Decision (per step, from the step index and the timestep only; see `PABConfig`): attention of
kind k is broadcast on step i at timestep t iff ``i % k_range != 0`` and ``low < t < high``;
otherwise it is computed and stored. This is the rule of diffusers'
`apply_pyramid_attention_broadcast` (and of VideoSys) for a pipeline that calls the model once
per step (batched CFG, as the DiT, Latte and Hunyuan-DiT pipelines do), so on those pipelines
the outputs and the numbers of skipped attention calls are identical. The kinds are told apart
by structure (temporal = attention in Latte's temporal blocks; cross = ``is_cross_attention``),
not by name patterns, so Latte's temporal layers get the temporal range.

Where diffusers' PAB differs (documented in the README, tested in tests/test_pab.py):

- diffusers counts *calls* per attention layer, dit-cache counts *denoising steps*. With
  sequential CFG (two model calls per step) diffusers' range is in calls, and its single stored
  output per layer is shared by both branches, so the unconditional branch reuses the
  conditional branch's attention. dit-cache keeps one store per CFG branch and decides per step.
- diffusers' counter only restarts when the hooks are reset (`reset_stateful_hooks`). The Latte
  pipeline does that at the end of every call (CacheMixin); the DiT and Hunyuan-DiT pipelines do
  not, so on them the second generation continues the first one's count and broadcasts on
  different steps. dit-cache starts every generation at step 0.
- diffusers also broadcasts in train mode; dit-cache always computes in train mode.
- MLP broadcast (VideoSys; ``mlp=True``) has no diffusers counterpart.
"""
from __future__ import annotations

import dataclasses

from .layer_reuse import LayerReuseMethod, Site, find_sites
from ..registry import register_method
from ..schedules import PAB_KINDS, PAB_MLP_BLOCKS, PAB_MLP_SKIP, PAB_MLP_TIMESTEPS, PABConfig, PABPlan
from ..runtime.tracker import CallContext


@register_method(PABConfig)
class PAB(LayerReuseMethod):
    hook_name = "dit_cache.pab"

    @classmethod
    def resolve_config(cls, config: PABConfig, adapter, model) -> PABConfig:
        """Turn off the kinds the model lacks (so patterns and stats describe what runs) and
        fill the MLP defaults; `mlp_blocks` must name a block the model has."""
        sites = find_sites(model, adapter)
        kinds = {site.kind for site, _ in sites}
        changes: dict = {f"{k}_range": None for k in PAB_KINDS if k not in kinds}
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
        self._history: list[float] = []
        self._plan = PABPlan()
        self._mlp_blocks = frozenset(self.config.mlp_blocks_used)
        super().install()

    def decide(self, step: int, t: float, t_prev: float | None) -> bool:
        if step == 0:
            self._history = []
        self._history.append(t)
        self._plan = self.config.plan_step(self._history)
        return self._plan.full

    def _broadcastable(self, site: Site) -> bool:
        if site.kind == "mlp":
            return self.config.mlp and site.block in self._mlp_blocks
        rng = getattr(self.config, f"{site.kind}_range")
        return rng is not None and rng > 1

    def stores(self, site: Site, ctx: CallContext) -> bool:
        # Attention that can broadcast: every computed output, like diffusers (one per layer).
        # MLP: only on an anchor step and the steps that reuse it.
        if site.kind == "mlp" and self._plan.mlp is None:
            return False
        return self._broadcastable(site)

    def reuses(self, site: Site, ctx: CallContext) -> bool:
        if site.kind == "mlp":
            return self._plan.mlp == "reuse" and self._broadcastable(site)
        return site.kind in self._plan.broadcast

    def describe_cache(self) -> dict:
        return {
            **super().describe_cache(),
            "broadcast_now": sorted(self._plan.broadcast),
            "mlp_now": self._plan.mlp,
        }
