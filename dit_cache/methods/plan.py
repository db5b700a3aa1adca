"""Per-step plans: a static schedule that picks one action for every step (preset ``plan``,
made by `dit_cache.calibrate` and stored in schedule files).

Actions, on a model of U units (blocks, or Latte block pairs):
- ``F``: full; stores what the other actions reuse.
- ``S<k>``: Skip-Cache of depth k: units 0..k-1 and U-k..U-1 run, the input of unit U-k is
  the one stored on the last full step (fused with the fresh output of unit k-1 through the
  model's long skip where it has one).
- ``R<k>``: residual reuse, as diffusers' FirstBlockCache does: units 0..k-1 run, the rest is
  replaced by the residual (output of the last unit minus input of unit k) stored on the last
  full step, added to the fresh input of unit k. ``R0`` runs no block at all (the residual of
  the whole stack, as MagCache / TeaCache reuse it); only the embeddings and the output layer
  run, with the new timestep. Needs one-block units (not Latte's pairs).
- ``A``: FORA reuse: every block runs with its attention and MLP outputs from the last full
  step, its adaLN modulation recomputed.

Every cached action reuses what the last full step stored; the decision is a function of the
step index alone, checked against the timesteps the plan was made for.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..runtime.model_id import config_hash
from ..runtime.registry import register_method
from ..runtime.tracker import CallContext, tensor_bytes
from .base import CacheMethod
from .layer_reuse import LayerReuseMethod

ACTION = re.compile(r"^(F|A|S[1-9][0-9]*|R(0|[1-9][0-9]*))$")
#: how far two timesteps may differ and still be "the same step" (schedulers compute them in fp32)
TIMESTEP_TOLERANCE = 1e-3


def parse_action(action: str) -> tuple[str, int]:
    """``"S2"`` -> ``("S", 2)``; ``"F"`` -> ``("F", 0)``."""
    return action[0], int(action[1:] or 0)


@dataclass(frozen=True)
class StepPlanConfig:
    """One action per step (see the module doc). `timesteps`: the steps the plan was made for;
    a run whose step i has another timestep (another step count or scheduler) is refused.
    `model_class` / `config_hash`: the model it was calibrated on (checked at `patch`).
    `long_skips`: run with long-skip adapters (needed by models trained with them)."""

    plan: tuple[str, ...]
    timesteps: tuple[float, ...] | None = None
    model_class: str | None = None
    config_hash: str | None = None
    scheduler_class: str | None = None
    long_skips: bool = False
    source: str | None = None  # the schedule file it was read from, for messages
    #: actions whose caches full steps keep although the plan does not use them (calibration)
    keep: tuple[str, ...] = ()

    name = "plan"

    @property
    def inserts_adapters(self) -> bool:
        return self.long_skips

    def __post_init__(self):
        if isinstance(self.plan, str) or not isinstance(self.plan, (tuple, list)) or not self.plan:
            raise ValueError(f"plan must be a non-empty list of actions (F, A, S<k>, R<k>), got {self.plan!r}")
        bad = [a for a in self.plan if not isinstance(a, str) or not ACTION.match(a)]
        if bad:
            raise ValueError(f"unknown plan action(s) {bad[:3]}: each step is F, A, S<k> (k >= 1) or R<k> (k >= 0)")
        if self.plan[0] != "F":
            raise ValueError(f"a plan's first step must be F (nothing is stored before it), got {self.plan[0]!r}")
        object.__setattr__(self, "plan", tuple(self.plan))
        object.__setattr__(self, "keep", tuple(self.keep))
        if any(not isinstance(a, str) or not ACTION.match(a) for a in self.keep):
            raise ValueError(f"keep must list plan actions (F, A, S<k>, R<k>), got {self.keep!r}")
        if self.timesteps is not None:
            ts = tuple(self.timesteps)
            if len(ts) != len(self.plan) or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) for t in ts):
                raise ValueError(f"timesteps must be {len(self.plan)} finite numbers, one per plan step")
            object.__setattr__(self, "timesteps", tuple(float(t) for t in ts))
        if not isinstance(self.long_skips, bool):
            raise ValueError(f"long_skips must be True or False, got {self.long_skips!r}")

    def where(self) -> str:
        return f"the schedule {self.source}" if self.source else "this plan"

    def check_step(self, step: int, t: float) -> None:
        """Raise when step `step` at timestep `t` is not a step this plan was made for."""
        n = len(self.plan)
        made_for = f"{n} steps" + (f" (timesteps {_short(self.timesteps)})" if self.timesteps else "")
        if step >= n:
            raise ValueError(f"{self.where()} was made for {made_for}; this run has more. "
                             f"Recalibrate for this step count (ditcache calibrate --steps ...).")
        if self.timesteps is not None and abs(self.timesteps[step] - t) > TIMESTEP_TOLERANCE * max(1.0, abs(t)):
            raise ValueError(
                f"{self.where()} was made for {made_for}; this run's step {step} has t={t:g}, not "
                f"{self.timesteps[step]:g} (another step count or scheduler). Recalibrate for this run "
                "(ditcache calibrate --steps ... --scheduler ...)."
            )

    def check_timesteps(self, timesteps) -> None:
        """Raise unless `timesteps` (a scheduler's, for a whole run) are the plan's."""
        timesteps = [float(t) for t in timesteps]
        if len(timesteps) != len(self.plan):
            raise ValueError(f"{self.where()} was made for {len(self.plan)} steps; this run has {len(timesteps)}. "
                             "Recalibrate for this step count (ditcache calibrate --steps ...).")
        for i, t in enumerate(timesteps):
            self.check_step(i, t)

    def pattern(self, timesteps) -> str:
        """`F` (full) / `c` (cached) per step, for `timesteps` of the run it was made for."""
        timesteps = [float(t) for t in timesteps]
        self.check_timesteps(timesteps)
        return "".join("F" if a == "F" else "c" for a in self.plan)

    def actions(self) -> set[str]:
        """Every action whose cache this plan keeps."""
        return {*self.plan, *self.keep}


def _short(ts) -> str:
    shown = ", ".join(f"{t:g}" for t in ts[:3])
    return f"{shown}, ..., {ts[-1]:g}" if len(ts) > 3 else shown


PRESETS: dict[str, object] = {}  # plans come from calibration, not from names


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
        self.partner = {} if state.lscs is None else {d: j for j, d in state.adapter.pairs(state.model)}
        self.feeds_skip = set(self.partner.values())
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
        if position == 0 and unit - 1 in self.feeds_skip:  # entry input of u = output of u-1
            ctx.skips[unit - 1] = streams[0]
        skipped = (kind == "S" and k <= unit < self.n_units - k) or (kind == "R" and unit >= k)
        if skipped:
            ctx.stats.blocks_skipped += 1
            if kind == "R" and position == 0 and unit == k:
                ctx.scratch["residual_base"] = streams
            if kind == "R" and unit == self.n_units - 1 and position == self.last_position:
                base = ctx.scratch.pop("residual_base")
                return self.io.returned(tuple(b + r for b, r in zip(base, store[f"resid:{k}"])))
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
            if unit in self.partner:
                j = self.partner[unit]
                skip = ctx.skips[j] if torch.is_grad_enabled() else ctx.skips.pop(j)
                streams = (self.state.lscs[str(unit)](streams[0], skip), *streams[1:])
            args, kwargs = self.io.write(args, kwargs, streams)
        output = hook.run(args, kwargs)
        if storing and self.residual_k and unit == self.n_units - 1 and position == self.last_position:
            out = self.io.output_streams(output)
            for r in self.residual_k:
                base = ctx.scratch.pop(f"residual_in:{r}")
                store[f"resid:{r}"] = tuple((o - b).detach() for o, b in zip(out, base))
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
