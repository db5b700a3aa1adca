"""Skip-Cache, the method of Skip-DiT (presets `skip-dit`, `skip-dit-N`).

Full step: every unit runs; the input streams of unit U-k (before its long-skip fusion) are
stored per CFG branch. Cached step: units 0..k-1 run (their outputs still feed the long skips),
units k..U-k-1 are skipped (their hooks hand the input straight through, at no compute), the
input of unit U-k is the stored value, fused with the fresh output of unit k-1, and U-k..U-1 run.
Long skips carry the image stream; other streams (a joint block's text tokens) are cached and
passed through with it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..adapters import SkipCacheDefaults
from ..runtime.hooks import DispatchHook
from ..runtime.registry import register_method
from ..runtime.tracker import CallContext, tensor_bytes
from .base import CacheMethod
from .validation import check_int, check_timestep


@dataclass(frozen=True)
class SkipCacheConfig:
    """On cached steps only the first and last `shallow` units run and the input of unit
    U-shallow comes from the last full step. `None` = backbone default.

    A step i with timestep t is FULL when ``i % interval == 0``, or ``t >= start``, or the
    previous step had ``t <= close`` (so the closing steps are all full); otherwise cached.
    """

    interval: int | None = None
    shallow: int | None = None
    start: float | None = None
    close: float | None = None

    name = "skip-dit"
    inserts_adapters = True

    def __post_init__(self):
        check_int("interval", self.interval)
        check_int("shallow", self.shallow)
        check_timestep("start", self.start)
        check_timestep("close", self.close)
        if self.start is not None and self.close is not None and self.start <= self.close:
            raise ValueError(
                f"empty caching window: start={self.start} must be greater than close={self.close} "
                "(steps with t >= start and steps after t <= close are always full)"
            )

    def resolve(self, defaults: SkipCacheDefaults, max_shallow: int, n_units: int) -> "SkipCacheConfig":
        """Fill `None` fields from the backbone defaults and check `shallow` fits the model."""
        if max_shallow < 1:
            raise ValueError(
                "Skip-Cache needs at least 3 units (blocks, or Latte block pairs) so that a cached "
                "step skips something; this model has too few"
            )
        shallow = self.shallow
        if shallow is None:  # the reference k, scaled to this model's depth
            shallow = min(defaults.shallow_for(n_units), max_shallow)
        elif shallow > max_shallow:
            raise ValueError(
                f"shallow={shallow} is too deep for this model: with k shallow units computed at each "
                f"end, k must be <= {max_shallow} so a cached step still skips at least one unit"
            )
        return dataclasses.replace(
            self,
            interval=self.interval if self.interval is not None else defaults.interval,
            shallow=shallow,
            start=float(self.start if self.start is not None else defaults.start),
            close=float(self.close if self.close is not None else defaults.close),
        )

    def is_full(self, step: int, t: float, t_prev: float | None) -> bool:
        return step % self.interval == 0 or t >= self.start or (t_prev is not None and t_prev <= self.close)

    def pattern(self, timesteps) -> str:
        """`F`/`c` string for a sequence of timesteps (e.g. `scheduler.timesteps`)."""
        out, t_prev = [], None
        for i, t in enumerate(float(t) for t in timesteps):
            out.append("F" if self.is_full(i, t, t_prev) else "c")
            t_prev = t
        return "".join(out)


PRESETS = {"skip-dit": SkipCacheConfig(), **{f"skip-dit-{n}": SkipCacheConfig(interval=n) for n in range(2, 7)}}


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
        self.partner = {} if state.lscs is None else {d: j for j, d in state.adapter.pairs(state.model)}
        self.feeds_skip = set(self.partner.values())
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

        if unit - 1 in self.feeds_skip:  # the entry input of unit u is the output of unit u-1
            ctx.skips[unit - 1] = streams[0]
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
        if unit in self.partner:
            j = self.partner[unit]
            skip = ctx.skips[j] if torch.is_grad_enabled() else ctx.skips.pop(j)
            streams = (self.state.lscs[str(unit)](streams[0], skip), *streams[1:])
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
