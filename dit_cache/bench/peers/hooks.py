"""What every peer shares: diffusers hooks installed on the runner's transformer for one run
and removed without a trace (`PeerHooks`), the cache context diffusers' stateful caches need on
a model that is no `CacheMixin`, and option checks."""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ...methods.validation import check_window
from ...runtime.registry import get_adapter
from ..applied import Applied
from ..errors import BenchInputError, PeerUnavailable
from ..specs import MethodSpec


class PeerHooks(Applied):
    """diffusers hooks installed on the transformer and its submodules; removal deletes every
    hook, registry and instance `forward` attribute this run created.

    With ``needs_context`` (diffusers' FirstBlockCache, TaylorSeer, MagCache key their state
    on a cache context), every transformer call runs inside ``CacheMixin.cache_context(model,
    name)`` (unbound: DiT and Hunyuan-DiT are no `CacheMixin`), which neither the DiT, Latte
    nor Hunyuan-DiT pipeline opens; the batched CFG call is one context, ``cond_uncond``."""

    needs_context = False

    def __init__(self, spec: MethodSpec, runner):
        super().__init__(spec)
        self.runner = runner
        self.model: nn.Module = runner.transformer
        self._before = {id(m): _hook_state(m) for m in self.model.modules()}
        self.current_t: float = 1000.0
        self._context = None
        self._handles = [self.model.register_forward_pre_hook(self._track_timestep, with_kwargs=True)]
        try:
            with quiet_diffusers():
                self.install()
            if self.needs_context:
                self._handles += [
                    self.model.register_forward_pre_hook(self._open_context),
                    self.model.register_forward_hook(self._close_context, always_call=True),
                ]
            self.invalidate_registries()
        except BaseException as err:
            self.remove()
            if isinstance(err, (BenchInputError, PeerUnavailable)) or not isinstance(err, Exception):
                raise
            # the peer library refused this model: an n/a row with its reason
            raise PeerUnavailable(f"{type(err).__name__}: {err}".splitlines()[0][:200]) from err

    def _track_timestep(self, module, args, kwargs):
        t = get_adapter(module).timestep(module, args, kwargs)
        if isinstance(t, torch.Tensor):
            t = t.reshape(-1)[0]
        if t is not None:
            self.current_t = float(t)

    def callback(self) -> float:
        return self.current_t

    @property
    def context_name(self) -> str:
        return "cond_uncond" if self.runner.cfg else "cond"

    def _open_context(self, module, args):
        from diffusers.models.cache_utils import CacheMixin

        self._close_context(module, args, None)
        self._context = CacheMixin.cache_context(self.model, self.context_name)
        self._context.__enter__()

    def _close_context(self, module, args, output):
        context, self._context = self._context, None
        if context is not None:
            context.__exit__(None, None, None)

    def invalidate_registries(self) -> None:
        """diffusers caches each registry's list of child registries; hooks added or removed
        below the transformer make it stale (`cache_context` would miss the new hooks)."""
        registry = self.model.__dict__.get("_diffusers_hook")
        if registry is None and self.needs_context:
            from diffusers.hooks import HookRegistry

            registry = HookRegistry.check_if_exists_or_initialize(self.model)
        if registry is not None:
            registry.invalidate_child_registries_cache()

    def install(self) -> None:
        raise NotImplementedError

    def before_generation(self) -> None:
        # diffusers' stateful hooks only restart when reset; every generation starts fresh here.
        for module in self.model.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is not None:
                registry.reset_stateful_hooks(recurse=False)

    def remove(self) -> None:
        self._close_context(self.model, (), None)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module in self.model.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None:
                continue
            had_registry, had_forward, had_hooks = self._before.get(id(module), (False, False, ()))
            for name in [n for n in registry.hooks if n not in had_hooks]:
                registry.remove_hook(name, recurse=False)
            if not had_registry and not registry.hooks:
                del module._diffusers_hook
                if not had_forward and "forward" in module.__dict__:
                    del module.__dict__["forward"]
        if "_diffusers_hook" in self.model.__dict__:
            self.model._diffusers_hook.invalidate_child_registries_cache()


def _hook_state(module: nn.Module) -> tuple[bool, bool, tuple[str, ...]]:
    registry = module.__dict__.get("_diffusers_hook")
    return registry is not None, "forward" in module.__dict__, tuple(registry.hooks) if registry else ()


class quiet_diffusers:
    """diffusers' experimental-feature warnings would break the progress display."""

    def __enter__(self):
        self.logger = logging.getLogger("diffusers")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def timestep_window(value, name: str) -> tuple[float, float]:
    if value is None:
        raise BenchInputError(f"{name} must be LOW/HIGH (e.g. 100/800), got none")
    try:
        return check_window(name, value)
    except ValueError as err:
        raise BenchInputError(str(err)) from None


def window_text(window: tuple[float, float]) -> str:
    return "/".join(f"{v:g}" for v in window)


def check_options(spec: MethodSpec, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise BenchInputError(
            f"unknown option(s) {', '.join(unknown)} for {spec.name}; valid: {', '.join(allowed)}"
        )


def number(spec: MethodSpec, key: str, default, *, minimum: float = 0, integer: bool = False, optional: bool = False):
    """Option `key` of `spec` (or `default`) as a number >= `minimum` (an int if `integer`;
    None allowed if `optional`); BenchInputError otherwise."""
    value = spec.options.get(key, default)
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= minimum
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        raise BenchInputError(f"{spec.name}: {key} must be {kind} >= {minimum:g}, got {value!r}")
    return int(value) if integer else float(value)


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's top-level lists of transformer blocks (``transformer_blocks``, ``blocks``,
    Latte's ``temporal_transformer_blocks``...)."""
    return [(n, c) for n, c in model.named_children() if isinstance(c, nn.ModuleList) and len(c) and n.endswith("blocks")]


def check_tail_returns_every_stream(model: nn.Module, method: str) -> None:
    """PeerUnavailable when the last block returns None for a stream (SD3's context_pre_only
    block): FirstBlockCache's tail hook subtracts that stream's input (diffusers 0.42 fails)."""
    last = block_lists(model)[-1][1][-1]
    if getattr(last, "context_pre_only", False):
        raise PeerUnavailable(
            f"diffusers' {method} takes the residual of both streams of the last block, whose text stream "
            f"is None here ({type(last).__name__} with context_pre_only): it fails in diffusers itself"
        )


def check_block_chain(model: nn.Module, method: str) -> None:
    """PeerUnavailable unless diffusers' block-chain caches (FirstBlockCache, MagCache) can run:
    block lists that run one after another (they hook every listed block as one chain, head to
    tail), of classes in diffusers' TransformerBlockRegistry (they read the output layout from
    there)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    from ...runtime.registry import get_adapter

    lists = block_lists(model)
    chained = [id(b) for _, blocks in lists for b in blocks]
    executed = [id(b) for unit in get_adapter(model).units(model) for b in unit]
    if len(lists) > 1 and chained != executed:  # FLUX's dual-then-single lists run one after another
        names = " and ".join(n for n, _ in lists)
        raise PeerUnavailable(
            f"{method} chains {names} head to tail, but this model interleaves them (different tensor layouts)"
        )
    for _, blocks in lists:
        try:
            TransformerBlockRegistry.get(type(blocks[0]))
        except ValueError:
            raise PeerUnavailable(
                f"{type(blocks[0]).__name__} is not in diffusers' TransformerBlockRegistry, which {method} needs"
            ) from None
