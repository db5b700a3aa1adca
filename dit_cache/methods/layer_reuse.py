"""Shared machinery of the layer-reuse methods (FORA, PAB): per-instance hooks on the
attention and MLP submodules of every block that either run the submodule (and store its
output) or hand back the output stored for this CFG branch.

Only the submodule call is replaced: the block itself still runs, so the adaLN modulation
(shift/scale/gate), residual adds, Hunyuan-DiT's native long-skip fusion and Latte's reshapes
are recomputed every step. The stored value is the submodule's output, i.e. *before* the
block applies its gate.

Stored outputs live in ``state.tracker.caches[branch]`` (a dict keyed by the submodule's
qualified name), so a new generation, `dit_cache.reset`, an aborted forward or a training call
drops them. Untracked calls (train mode, per-sample timesteps) always compute and store nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers.hooks import ModelHook
from torch import nn

from .base import CacheMethod
from ..runtime.tracker import CallContext

if TYPE_CHECKING:
    from ..adapters import BackboneAdapter
    from ..runtime.patch_state import PatchState

KINDS = ("spatial", "temporal", "cross", "mlp")


@dataclass(frozen=True)
class Site:
    """One hooked submodule."""

    name: str  # qualified name in the model, e.g. "temporal_transformer_blocks.2.attn1"
    kind: str  # "spatial" | "temporal" (self-attention), "cross" (attention), "mlp"
    block: int  # index of its block within its stack (Latte: spatial and temporal stacks)

    @property
    def group(self) -> str:
        return "mlp" if self.kind == "mlp" else "attn"


def find_sites(model: nn.Module, adapter: "BackboneAdapter") -> list[tuple[Site, nn.Module]]:
    """The attention (`attn1`, `attn2`) and MLP (`ff`) submodules of every block of the model.

    An attention module with ``is_cross_attention`` is "cross"; other attention is "temporal"
    when its block's name contains "temporal" (Latte's `temporal_transformer_blocks`), else
    "spatial"."""
    names = {id(m): n for n, m in model.named_modules()}
    sites: list[tuple[Site, nn.Module]] = []
    for index, blocks in enumerate(adapter.units(model)):
        for block in blocks:
            stack = "temporal" if "temporal" in names[id(block)] else "spatial"
            for attr in ("attn1", "attn2"):
                attn = getattr(block, attr, None)
                if isinstance(attn, nn.Module):
                    kind = "cross" if getattr(attn, "is_cross_attention", False) else stack
                    sites.append((Site(names[id(attn)], kind, index), attn))
            ff = getattr(block, "ff", None)
            if isinstance(ff, nn.Module):
                sites.append((Site(names[id(ff)], "mlp", index), ff))
    if not sites:
        raise ValueError(
            f"{type(model).__name__}: its blocks have no `attn1`/`attn2`/`ff` submodules, which "
            "FORA and PAB reuse; this backbone is not supported by these methods"
        )
    return sites


class LayerHook(ModelHook):
    """Hands one attention/MLP call to the method, which runs it or returns a stored output."""

    def __init__(self, state: "PatchState", site: Site):
        super().__init__()
        self.state, self.site = state, site

    def new_forward(self, module: nn.Module, *args, **kwargs):
        ctx = self.state.tracker.ctx
        if ctx is None:  # called outside a forward of the patched model
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.state.method.layer_forward(self, ctx, args, kwargs)

    def run(self, args: tuple, kwargs: dict):
        return self.fn_ref.original_forward(*args, **kwargs)


def _detach(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detach(o) for o in output)
    return output


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class LayerReuseMethod(CacheMethod):
    """Base of FORA and PAB: subclasses say, per step, which sites reuse (`reuses`).

    Counters (in `dit_cache.stats`): ``attn_computed``, ``attn_reused``, ``mlp_computed``,
    ``mlp_reused``, per attention kind ``{spatial,temporal,cross}_attn_{computed,reused}``, and
    ``reuse_missed`` (a site that should have reused but had nothing stored for this CFG
    branch yet, so it computed)."""

    hook_name = "dit_cache.layer"

    def install(self) -> None:
        state = self.state
        self.sites = [(s, m) for s, m in find_sites(state.model, state.adapter) if self.wants(s)]
        self._occurrence: dict[str, int] = {}
        super().install()  # block hooks: step bookkeeping and block_calls, blocks always run
        for site, module in self.sites:
            state.hooks.add(module, LayerHook(state, site), self.hook_name)

    def begin_call(self, ctx: CallContext) -> None:
        self._occurrence.clear()

    def wants(self, site: Site) -> bool:
        """Whether to hook this site at all (a site that never reuses needs no hook)."""
        return True

    def reuses(self, site: Site, ctx: CallContext) -> bool:
        """Whether the site hands back its stored output on this call (if it has one)."""
        raise NotImplementedError

    def stores(self, site: Site, ctx: CallContext) -> bool:
        """Whether a computed output is kept for later calls of this CFG branch."""
        return True

    def layer_forward(self, hook: LayerHook, ctx: CallContext, args: tuple, kwargs: dict):
        site = hook.site
        stats = self.state.tracker.stats
        # A submodule called more than once per forward (e.g. chunked feed-forward) keeps one
        # stored output per call.
        n = self._occurrence.get(site.name, 0)
        self._occurrence[site.name] = n + 1
        key = site.name if n == 0 else f"{site.name}#{n}"
        label = site.kind if site.kind == "mlp" else f"{site.kind}_attn"
        store = None
        if ctx.tracked:
            store = self.state.tracker.caches.setdefault(ctx.branch, {})
            if self.reuses(site, ctx):
                if key in store:
                    stats.count(f"{site.group}_reused")
                    if site.group == "attn":
                        stats.count(f"{label}_reused")
                    return store[key]
                stats.count("reuse_missed")
        output = hook.run(args, kwargs)
        stats.count(f"{site.group}_computed")
        if site.group == "attn":
            stats.count(f"{label}_computed")
        if store is not None and self.stores(site, ctx):
            store[key] = _detach(output)
        return output

    def describe_cache(self) -> dict:
        caches = self.state.tracker.caches
        sites: dict[str, int] = {}
        for site, _ in self.sites:
            sites[site.kind] = sites.get(site.kind, 0) + 1
        return {
            "cache_point": "outputs of attention and MLP submodules (before the adaLN gate)",
            "sites": sites,
            "branches": len(caches),
            "stored_outputs": sum(len(c) for c in caches.values()),
            "cached_bytes": _nbytes(caches),
        }
