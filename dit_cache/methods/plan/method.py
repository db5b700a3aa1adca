"""The hooks of per-step plans (see config.py for the actions and the step decision)."""
from __future__ import annotations

from ...runtime.model_id import config_hash
from ...runtime.registry import register_method
from ...runtime.tracker import CallContext, tensor_bytes
from ..base import CacheMethod
from ..layer_reuse import LayerReuseMethod
from .config import StepPlanConfig, parse_action


@register_method(StepPlanConfig)
class StepPlan(LayerReuseMethod):
    @classmethod
    def resolve_config(cls, config, adapter, model):
        units = adapter.units(model)
        n = len(units)
        if config.model_class is not None and config.model_class != type(model).__name__:
            raise ValueError(f"{config.where()} was made for a {config.model_class}, not a {type(model).__name__}; "
                             "calibrate one for this model (dit_cache.calibrate / ditcache calibrate)")
        if config.config_hash is not None:
            if config.config_hash != config_hash(model):
                raise ValueError(f"{config.where()} was made for another {type(model).__name__} configuration "
                                 f"(config hash {config.config_hash}, this model's {config_hash(model)}); "
                                 "calibrate one for this model")
        for action in config.actions():
            kind, k = parse_action(action)
            if kind == "S" and k > adapter.max_shallow(model):
                raise ValueError(f"plan action {action} is too deep for this model ({n} units): Skip-Cache "
                                 f"depth must be <= {adapter.max_shallow(model)}")
            if kind == "R" and k >= n:
                raise ValueError(f"plan action {action} keeps all {n} units fresh: it must be < {n}")
            if kind == "R" and any(len(u) > 1 for u in units):
                raise ValueError(f"plan action {action} (residual reuse) needs one-block units; "
                                 f"{type(model).__name__}'s units are block pairs: use S<k> or A")
        return config

    def install(self) -> None:
        state, plan = self.state, self.config.actions()
        self.io = state.adapter.block_io
        units = state.adapter.units(state.model)
        self.n_units, self.last_position = len(units), len(units[-1]) - 1
        self.deep_k = sorted({parse_action(a)[1] for a in plan if a[0] == "S"})
        self.residual_k = sorted({parse_action(a)[1] for a in plan if a[0] == "R"})
        self.wire_long_skips()
        if "A" in plan:
            super().install()  # block hooks + attention / MLP hooks
        else:
            CacheMethod.install(self)

    # -- the step decision -------------------------------------------------------------------
    def decide(self, timesteps: list[float]) -> bool:
        step = len(timesteps) - 1
        self.config.check_step(step, timesteps[-1])
        return self.config.plan[step] == "F"

    def begin_call(self, ctx: CallContext) -> None:
        action = ctx.scratch.get("action")  # preset by calibration probes
        if action is None:
            action = self.config.plan[ctx.step] if ctx.tracked and not ctx.full else "F"
        if action != "F" and not self._has_cache(ctx, action):
            action = "F"  # a branch with nothing stored yet must compute
            ctx.full = True
            ctx.stats.count("forced_full_calls")
        ctx.scratch["action"] = action
        ctx.scratch["parsed_action"] = parse_action(action)

    def _has_cache(self, ctx: CallContext, action: str) -> bool:
        store = ctx.caches.get(ctx.branch)
        if not store:
            return False
        kind, k = parse_action(action)
        return kind == "A" or (f"deep:{k}" if kind == "S" else f"resid:{k}") in store

    # -- layer reuse (action A) --------------------------------------------------------------
    def reuses(self, site, ctx: CallContext) -> bool:
        return ctx.scratch.get("action") == "A"

    def stores(self, site, ctx: CallContext) -> bool:
        return ctx.scratch.get("action") == "F"

    # -- blocks ------------------------------------------------------------------------------
    def block_forward(self, hook, ctx: CallContext, args: tuple, kwargs: dict):
        unit, position = hook.where
        kind, k = ctx.scratch.get("parsed_action", ("F", 0))
        store = ctx.caches.setdefault(ctx.branch, {}) if ctx.tracked else None
        storing = kind == "F" and store is not None and not ctx.replay
        streams = self.io.read(args, kwargs)  # image stream first: (B, L, D)
        if position == 0:
            self.remember_skip(ctx, unit, streams)
        skipped = (kind == "S" and k <= unit < self.n_units - k) or (kind == "R" and unit >= k)
        if skipped:
            ctx.stats.blocks_skipped += 1
            if kind == "R" and position == 0 and unit == k:
                ctx.scratch["residual_base"] = streams
            if kind == "R" and unit == self.n_units - 1 and position == self.last_position:
                base = ctx.scratch.pop("residual_base")
                return self.io.returned(tuple(None if r is None else b + r for b, r in zip(base, store[f"resid:{k}"])))
            return self.io.returned(streams)
        if position == 0:
            if storing:
                for d in self.deep_k:
                    if unit == self.n_units - d:
                        store[f"deep:{d}"] = tuple(s.detach() for s in streams)
                if unit in self.residual_k:
                    ctx.scratch[f"residual_in:{unit}"] = streams
            if kind == "S" and unit == self.n_units - k:
                streams = store[f"deep:{k}"]
            streams = self.fuse_skip(ctx, unit, streams)
            args, kwargs = self.io.write(args, kwargs, streams)
        output = hook.run(args, kwargs)
        if storing and self.residual_k and unit == self.n_units - 1 and position == self.last_position:
            out = self.io.output_streams(output)
            for r in self.residual_k:
                base = ctx.scratch.pop(f"residual_in:{r}")
                # a stream the last block no longer returns (SD3's context_pre_only text) has no residual
                store[f"resid:{r}"] = tuple(None if o is None else (o - b).detach() for o, b in zip(out, base))
        return output

    def check_scheduler(self, scheduler, timesteps: bool = True) -> None:
        """A pipeline set its scheduler's timesteps: refuse a run this plan was not made for
        before any model call."""
        cls = type(scheduler).__name__
        if self.config.scheduler_class is not None and cls != self.config.scheduler_class:
            raise ValueError(f"{self.config.where()} was made for {self.config.scheduler_class}, not {cls}; "
                             "recalibrate with this scheduler (ditcache calibrate --scheduler ...)")
        if timesteps:
            self.config.check_timesteps(scheduler.timesteps)

    def describe_cache(self) -> dict:
        caches = self.state.tracker.live_caches()
        return {
            "plan": " ".join(self.config.plan),
            "actions": sorted(self.config.actions()),
            "branches": len(caches),
            "cached_bytes": tensor_bytes(caches),
        }
