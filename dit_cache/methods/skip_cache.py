"""Skip-Cache: the `skip-dit` method.

Full step: every unit runs; the input of unit U-k (before its long-skip fusion) is stored per
CFG branch. Cached step: units 0..k-1 run (their outputs still feed the long skips), units
k..U-k-1 are skipped (their hooks hand the input straight through, at no compute), the input
of unit U-k is the stored value, fused with the fresh output of unit k-1, and U-k..U-1 run.
"""
from __future__ import annotations

import torch

from ..adapters import block_hidden_states, with_hidden_states
from ..runtime.hooks import BlockHook
from .base import CacheMethod
from ..registry import register_method
from ..schedules import SkipCacheConfig
from ..runtime.tracker import CallContext


@register_method(SkipCacheConfig)
class SkipCache(CacheMethod):
    @classmethod
    def resolve_config(cls, config, adapter, model):
        return config.resolve(adapter.defaults, adapter.max_shallow(model))

    def install(self) -> None:
        state = self.state
        self.n_units = len(state.adapter.units(state.model))
        self.k = self.config.shallow
        self.cache_unit = self.n_units - self.k
        # deep unit -> shallow unit whose output it fuses (only where dit-cache inserted LSCs;
        # native skips are wired by the model itself)
        self.partner = {} if state.lscs is None else {d: j for j, d in state.adapter.pairs(state.model)}
        self.feeds_skip = set(self.partner.values())
        super().install()

    def decide(self, step: int, t: float, t_prev: float | None) -> bool:
        return self.config.is_full(step, t, t_prev)

    def begin_call(self, ctx: CallContext) -> None:
        if not ctx.full and ctx.branch not in self.state.tracker.caches:
            ctx.full = True  # a branch with nothing stored yet must compute
            self.state.tracker.stats.count("forced_full_calls")

    def _skipped(self, ctx: CallContext, unit: int) -> bool:
        return not ctx.full and self.k <= unit < self.cache_unit

    def block_forward(self, hook: BlockHook, ctx: CallContext, args: tuple, kwargs: dict):
        unit = hook.unit
        x = block_hidden_states(args, kwargs)  # (B, L, D)
        if hook.position != 0:  # Latte temporal block: no fusion, skipped with its pair
            if self._skipped(ctx, unit):
                self.state.tracker.stats.blocks_skipped += 1
                return x
            return hook.run(args, kwargs)

        if unit - 1 in self.feeds_skip:  # the entry input of unit u is the output of unit u-1
            ctx.skips[unit - 1] = x
        if self._skipped(ctx, unit):
            self.state.tracker.stats.blocks_skipped += 1
            return x
        caches = self.state.tracker.caches
        if unit == self.cache_unit:
            if ctx.full:
                if ctx.tracked:
                    caches[ctx.branch] = x.detach()
            else:
                x = caches[ctx.branch]
        if unit in self.partner:
            j = self.partner[unit]
            skip = ctx.skips[j] if torch.is_grad_enabled() else ctx.skips.pop(j)
            x = self.state.lscs[str(unit)](x, skip)
        args, kwargs = with_hidden_states(args, kwargs, x)
        return hook.run(args, kwargs)

    def describe_cache(self) -> dict:
        caches = self.state.tracker.caches
        return {
            "cache_point": f"input of unit {self.cache_unit}",
            "units_run_on_cached_step": [*range(self.k), *range(self.cache_unit, self.n_units)],
            "branches": len(caches),
            "cached_bytes": sum(t.numel() * t.element_size() for t in caches.values()),
        }
