"""Base class of a cache method and the `none` method.

A method gets a `PatchState` (adapter, tracker, hooks); it decides per step whether the step
is full and implements what a block hook does. Register it for its config type."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..runtime.hooks import BLOCK_HOOK, BlockHook
from ..registry import register_method
from ..schedules import NoCacheConfig
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
        units = self.state.adapter.units(self.state.model)
        for u, blocks in enumerate(units):
            for position, block in enumerate(blocks):
                self.state.hooks.add(block, BlockHook(self.state, u, position), BLOCK_HOOK)

    def decide(self, step: int, t: float, t_prev: float | None) -> bool:
        return True

    def begin_call(self, ctx: CallContext) -> None:
        pass

    def block_forward(self, hook: BlockHook, ctx: CallContext, args: tuple, kwargs: dict):
        return hook.run(args, kwargs)

    def describe_cache(self) -> dict:
        return {}


@register_method(NoCacheConfig)
class NoCache(CacheMethod):
    """Tracks steps and counts blocks; never caches."""
