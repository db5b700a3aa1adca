"""diffusers `ModelHook`s installed per instance: one on the model (step tracking) and one
dispatch hook per hooked submodule (a block, or an attention/MLP site), which hands the call
to the active cache method. Nothing is patched at class level."""
from __future__ import annotations

import inspect
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
NORM_HOOK = "dit_cache.norm"


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
        t = state.adapter.timestep(module, args, kwargs)
        ctx = state.tracker.begin(t, x, module.training, state.method.decide)
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
        tracker = self.state.tracker
        ctx = tracker.ctx
        if ctx is None:  # called outside a forward of the patched model
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.counts_blocks and ctx.tracked and torch.is_grad_enabled():
            x = self.state.adapter.block_io.read(args, kwargs)[0]
            checkpointing = bool(getattr(self.state.model, "gradient_checkpointing", False))
            ctx = tracker.context_of_block_call(x, ctx, remember=checkpointing)
            if ctx.replay:
                with tracker.replaying(ctx):
                    return self._entry(self, ctx, args, kwargs)
        return self._entry(self, ctx, args, kwargs)

    def run(self, args: tuple, kwargs: dict):
        ctx = self.state.tracker.ctx
        if self.counts_blocks and ctx is not None:
            ctx.stats.block_calls += 1  # a recomputation in backward counts into a throwaway
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
        accelerate = module.__dict__.get("forward")
        if _is_accelerate_wrapper(module, accelerate):
            # Offloading (accelerate / enable_model_cpu_offload) is installed: go inside its
            # wrapper, which calls `module._old_forward`. diffusers removes and re-adds those
            # wrappers after every pipeline call, restoring `forward` from `_old_forward`; a
            # registry wrapped around them would be dropped then, one inside them is kept.
            module.__dict__["forward"] = module.__dict__["_old_forward"]
            try:
                registry.register_hook(hook, name)
            finally:
                module.__dict__["_old_forward"] = module.__dict__["forward"]
                module.__dict__["forward"] = accelerate
        else:
            registry.register_hook(hook, name)
        self._entries.append((module, name, had_registry, had_forward_attr))

    def owned_attributes(self) -> list[object]:
        """The registries and instance `forward`s this patch created (a deep copy of the model
        must not copy them: they are bound to this instance). Raises when a hooked module also
        carries hooks of someone else, which could not be told apart."""
        owned = []
        ours = {name for _, name, _, _ in self._entries}
        for module, _, _, had_forward_attr in self._entries:
            registry = module.__dict__.get("_diffusers_hook")
            foreign = sorted(set(registry.hooks) - ours) if registry is not None else []
            if had_forward_attr or foreign:
                raise RuntimeError(
                    f"cannot deep-copy this patched model: {type(module).__name__} also carries other hooks "
                    f"({', '.join(foreign) or 'a forward wrapper'}). Unpatch it, copy it, then patch the "
                    "original and the copy"
                )
            owned += [registry, module.__dict__.get("forward")]
        return [o for o in owned if o is not None]

    def remove_all(self) -> None:
        while self._entries:
            module, name, had_registry, had_forward_attr = self._entries.pop()
            registry = module._diffusers_hook
            outer = module.__dict__.get("forward")
            accelerate_outside = _is_accelerate_wrapper(module, outer)
            registry.remove_hook(name, recurse=False)
            if accelerate_outside and module.__dict__.get("forward") is not outer:
                # accelerate (cpu / model offload) wrapped the forward after dit-cache did, and the
                # registry just replaced that wrapper: put it back around what remains
                module.__dict__["_old_forward"] = module.__dict__["forward"]
                module.__dict__["forward"] = outer
            if not had_registry and not registry.hooks:
                del module._diffusers_hook
            if not (had_forward_attr or accelerate_outside) and "forward" in module.__dict__ and not registry.hooks:
                del module.__dict__["forward"]


def _is_accelerate_wrapper(module: nn.Module, forward) -> bool:
    """Whether `forward` is the wrapper `accelerate.hooks.add_hook_to_module` installs (it keeps
    the wrapped forward in `module._old_forward` and calls it from there)."""
    func = getattr(forward, "func", None)
    return "_old_forward" in module.__dict__ and getattr(func, "__qualname__", "").startswith("add_hook_to_module")


class SchedulerWatch:
    """A pipeline calls `scheduler.set_timesteps` once at the start of every generation: this
    instance-level wrapper of it (nothing on the class) tells the tracker that the next model
    call starts a new generation, which makes generations exact even when a run was
    interrupted outside the model (e.g. in `scheduler.step`) and rerun on the same latents."""

    def __init__(self, scheduler, tracker, check=None):
        """`check(scheduler)`, if given, runs after every `set_timesteps` and may refuse the run."""
        self.scheduler, self.tracker, self.active, self.check = scheduler, tracker, True, check
        self.had_attr = "set_timesteps" in scheduler.__dict__
        self.inner = scheduler.set_timesteps
        scheduler.set_timesteps = self

    @property
    def __signature__(self):
        # pipelines ask `inspect.signature(scheduler.set_timesteps)` whether it takes sigmas (FLUX)
        return inspect.signature(self.inner)

    def __call__(self, *args, **kwargs):
        if self.active:
            self.tracker.start_new_generation()
        result = self.inner(*args, **kwargs)
        if self.active and self.check is not None:
            self.check(self.scheduler)
        return result

    def __deepcopy__(self, memo):
        # a copy of the scheduler is not watched: hand it its plain method back
        copy_of_scheduler = memo.get(id(self.scheduler))
        return type(self.scheduler).set_timesteps.__get__(copy_of_scheduler) if copy_of_scheduler is not None else self.inner

    def remove(self) -> None:
        self.active = False
        if self.scheduler.__dict__.get("set_timesteps") is self:
            if self.had_attr:
                self.scheduler.set_timesteps = self.inner
            else:
                del self.scheduler.__dict__["set_timesteps"]
        # else another wrapper was installed over this one: stay in its chain, inactive
