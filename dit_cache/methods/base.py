"""Base class of a cache method (the hook side).

A method gets a `PatchState` (adapter, tracker, hooks); it decides per step whether the step
is full and implements what a block hook does. It registers itself for its config type with
`@register_method(ConfigClass)`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..runtime.hooks import BLOCK_HOOK, DispatchHook
from ..runtime.tracker import CallContext

if TYPE_CHECKING:
    from ..runtime.patch_state import PatchState


class CacheMethod:
    def __init__(self, state: "PatchState", config):
        self.state, self.config = state, config

    # Resolve backbone defaults and check the config against the model; may raise.
    @classmethod
    def resolve_config(cls, config, adapter, model):
        return config

    def install(self) -> None:
        """One dispatch hook per block, calling `block_forward`."""
        units = self.state.adapter.units(self.state.model)
        for u, blocks in enumerate(units):
            for position, block in enumerate(blocks):
                hook = DispatchHook(self.state, "block_forward", (u, position), counts_blocks=True)
                self.state.hooks.add(block, hook, BLOCK_HOOK)

    def decide(self, timesteps: list[float]) -> bool:
        """Whether the step at the end of `timesteps` (this generation's so far) is full:
        a function of the timesteps only, never of the data."""
        return True

    def begin_call(self, ctx: CallContext) -> None:
        pass

    def block_forward(self, hook: DispatchHook, ctx: CallContext, args: tuple, kwargs: dict):
        return hook.run(args, kwargs)

    def describe_cache(self) -> dict:
        return {}

    # -- the long-skip adapters dit-cache inserted (methods that skip blocks wire them) --------
    def wire_long_skips(self) -> None:
        """Which deep unit fuses which shallow unit's output (none when the model's long skips
        are native: the model wires those itself)."""
        state = self.state
        self.partner = {} if state.lscs is None else {d: j for j, d in state.adapter.pairs(state.model)}
        self.feeds_skip = set(self.partner.values())

    def remember_skip(self, ctx: CallContext, unit: int, streams: tuple) -> None:
        """At a unit's entry: its input is the output of unit-1, which a long skip may carry."""
        if unit - 1 in self.feeds_skip:
            ctx.skips[unit - 1] = streams[0]

    def fuse_skip(self, ctx: CallContext, unit: int, streams: tuple) -> tuple:
        """A deep unit's entry streams with its long skip fused into the image stream."""
        if unit not in self.partner:
            return streams
        j = self.partner[unit]
        skip = ctx.skips[j] if torch.is_grad_enabled() else ctx.skips.pop(j)  # kept for a replay
        return (self.state.lscs[str(unit)](streams[0], skip), *streams[1:])
