"""Skip-Cache's hooks (see config.py for the method and its step decision)."""
from __future__ import annotations

import torch

from ...runtime.hooks import DispatchHook
from ...runtime.registry import register_method
from ...runtime.tracker import CallContext, tensor_bytes
from ..base import CacheMethod
from .config import SkipCacheConfig


@register_method(SkipCacheConfig)
class SkipCache(CacheMethod):
    @classmethod
    def resolve_config(cls, config, adapter, model):
        return config.resolve(adapter.defaults, adapter.max_shallow(model), len(adapter.units(model)))

    def install(self) -> None:
        state = self.state
        self.io = state.adapter.block_io
        self.n_units = len(state.adapter.units(state.model))
        self.k = self.config.shallow
        self.cache_unit = self.n_units - self.k
        # deep unit -> shallow unit whose output it fuses (only where dit-cache inserted LSCs;
        # native skips are wired by the model itself)
        self.wire_long_skips()
        super().install()

    def decide(self, timesteps: list[float]) -> bool:
        return self.config.is_full(len(timesteps) - 1, timesteps[-1], timesteps[-2] if len(timesteps) > 1 else None)

    def begin_call(self, ctx: CallContext) -> None:
        if not ctx.full and ctx.branch not in ctx.caches:
            ctx.full = True  # a branch with nothing stored yet must compute
            ctx.stats.count("forced_full_calls")

    def _skipped(self, ctx: CallContext, unit: int) -> bool:
        return not ctx.full and self.k <= unit < self.cache_unit

    def block_forward(self, hook: DispatchHook, ctx: CallContext, args: tuple, kwargs: dict):
        unit, position = hook.where
        streams = self.io.read(args, kwargs)  # image stream first: (B, L, D)
        if position != 0:  # Latte temporal block: no fusion, skipped with its pair
            if self._skipped(ctx, unit):
                ctx.stats.blocks_skipped += 1
                return self.io.returned(streams)
            return hook.run(args, kwargs)

        self.remember_skip(ctx, unit, streams)
        if self._skipped(ctx, unit):
            ctx.stats.blocks_skipped += 1
            return self.io.returned(streams)
        caches = ctx.caches
        if unit == self.cache_unit:
            if ctx.full:
                if ctx.tracked and not ctx.replay:
                    caches[ctx.branch] = tuple(s.detach() for s in streams)
            elif ctx.replay:  # a recomputation in backward: what its forward used
                streams = ctx.scratch["deep_input"]
            else:
                streams = caches[ctx.branch]
                if torch.is_grad_enabled():
                    ctx.scratch["deep_input"] = streams
        streams = self.fuse_skip(ctx, unit, streams)
        args, kwargs = self.io.write(args, kwargs, streams)
        return hook.run(args, kwargs)

    def describe_cache(self) -> dict:
        caches = self.state.tracker.live_caches()
        return {
            "cache_point": f"input of unit {self.cache_unit}",
            "units_run_on_cached_step": [*range(self.k), *range(self.cache_unit, self.n_units)],
            "branches": len(caches),
            "cached_bytes": tensor_bytes(caches),
        }
