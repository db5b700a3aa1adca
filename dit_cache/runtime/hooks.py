"""diffusers `ModelHook`s installed per instance: one on the model (step tracking) and one
dispatch hook per hooked submodule (a block, or an attention/MLP site), which hands the call
to the active cache method. Nothing is patched at class level."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

if TYPE_CHECKING:
    from .patch_state import PatchState

#: Every hook name dit-cache registers (diffusers' registries are keyed by name).
STEP_HOOK = "dit_cache.step"
BLOCK_HOOK = "dit_cache.block"
LAYER_HOOK = "dit_cache.layer"


def _model_hidden_states(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("hidden_states")
    return x if isinstance(x, torch.Tensor) else None


class StepHook(ModelHook):
    """Places every call of the model in a generation/step/branch before the blocks run."""

    def __init__(self, state: "PatchState"):
        super().__init__()
        self.state = state

    def new_forward(self, module: nn.Module, *args, **kwargs):
        state = self.state
        x = _model_hidden_states(args, kwargs)
        signature = (tuple(x.shape), x.dtype, x.device) if x is not None else None
        t = state.adapter.timestep(module, args, kwargs)
        ctx = state.tracker.begin(t, signature, module.training, state.method.decide)
        state.method.begin_call(ctx)
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            state.tracker.abort()  # an interrupted generation must not poison the next one
            raise
        state.tracker.end()
        return output


class DispatchHook(ModelHook):
    """Hands one submodule call to the method entry `entry` (``method.<entry>(hook, ctx, args,
    kwargs)``), which may run it (`hook.run`), substitute its inputs or return something else.

    `where` tells the method which submodule this is: ``(unit, position)`` for a block, the
    `Site` for an attention/MLP submodule. `counts_blocks` makes `run` count executed blocks."""

    def __init__(self, state: "PatchState", entry: str, where: Any, counts_blocks: bool = False):
        super().__init__()
        self.state, self.where, self.counts_blocks = state, where, counts_blocks
        self._entry = getattr(state.method, entry)

    def new_forward(self, module: nn.Module, *args, **kwargs):
        ctx = self.state.tracker.ctx
        if ctx is None:  # called outside a forward of the patched model
            return self.fn_ref.original_forward(*args, **kwargs)
        return self._entry(self, ctx, args, kwargs)

    def run(self, args: tuple, kwargs: dict):
        if self.counts_blocks:
            self.state.tracker.stats.block_calls += 1
        return self.fn_ref.original_forward(*args, **kwargs)


class HookSet:
    """Hooks this patch registered, so they can be removed exactly, leaving no residue
    (registries and instance `forward` attributes we created are deleted too)."""

    def __init__(self):
        self._entries: list[tuple[nn.Module, str, bool, bool]] = []

    def add(self, module: nn.Module, hook: ModelHook, name: str) -> None:
        had_registry = hasattr(module, "_diffusers_hook")
        had_forward_attr = "forward" in module.__dict__
        registry = HookRegistry.check_if_exists_or_initialize(module)
        registry.register_hook(hook, name)
        self._entries.append((module, name, had_registry, had_forward_attr))

    def remove_all(self) -> None:
        while self._entries:
            module, name, had_registry, had_forward_attr = self._entries.pop()
            registry = module._diffusers_hook
            registry.remove_hook(name, recurse=False)
            if not had_registry and not registry.hooks:
                del module._diffusers_hook
            if not had_forward_attr and "forward" in module.__dict__ and not registry.hooks:
                del module.__dict__["forward"]
