"""Shared machinery of the layer-reuse methods (FORA, PAB): per-instance hooks on the
attention and MLP submodules of every block that either run the submodule (and store its
output) or hand back the output stored for this CFG branch.

Only the submodule call is replaced: the block itself still runs, so the adaLN modulation
(shift/scale/gate), residual adds, Hunyuan-DiT's native long-skip fusion and Latte's reshapes
are recomputed every step. The stored value is the submodule's output, i.e. *before* the
block applies its gate. The one exception: the normalization that only a reusing site reads
(the site's `norm`, from the adapter's `input_norm`) hands back a one-token view of its input
instead of normalizing it, since nothing reads its output on that call (the block's modulation
of it then runs on one token too); FLOP counters see neither norms nor modulations, but on a
small model they are most of a reuse step's wall time.

Stored outputs live in the generation's ``caches[branch]`` (a dict keyed by the submodule's
qualified name), so a new generation, `dit_cache.reset`, an aborted forward or a training call
drops them. Untracked calls (train mode, per-sample timesteps) always compute and store nothing.
"""
from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch import nn

from ..adapters import Site
from ..runtime.hooks import LAYER_HOOK, NORM_HOOK, DispatchHook
from ..runtime.tracker import CallContext, tensor_bytes
from .base import CacheMethod


def find_sites(model: nn.Module, adapter) -> list[tuple[Site, nn.Module]]:
    """The backbone's reuse sites, with a clear error when it has none."""
    sites = adapter.reuse_sites(model)
    if not sites:
        raise ValueError(
            f"{type(model).__name__}: its blocks have no attention / MLP submodules that FORA and "
            "PAB can reuse (its adapter's reuse_sites() found none); this backbone is not "
            "supported by these methods"
        )
    return sites


def _remember(ctx: CallContext, site: Site, stored) -> None:
    """The stored object this call of `site` handed back or stored (None: neither), for the
    fused sites that read it later in the same forward."""
    ctx.scratch.setdefault("site_values", {})[site.name] = stored if isinstance(stored, torch.Tensor) else None


def _one_token(x: torch.Tensor) -> torch.Tensor:
    """What a skipped norm hands back: a view of its input's first token, (B, ..., D) ->
    (B, 1, ..., 1, D). Nothing reads it (the site it feeds hands back its stored output), but the
    block still modulates it (`x * (1 + scale) + shift`); on one token that costs nothing, where
    the full input cost two passes over the hidden states per site."""
    if x.ndim < 3:
        return x
    return x[(slice(None), *(slice(0, 1),) * (x.ndim - 2))]


def _detach(output):
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detach(o) for o in output)
    return output


class LayerReuseMethod(CacheMethod):
    """Base of FORA and PAB: subclasses say, per step, which sites reuse (`reuses`).

    Counters (in `dit_cache.stats`): ``attn_computed``, ``attn_reused``, ``mlp_computed``,
    ``mlp_reused``, per attention kind ``{spatial,temporal,cross}_attn_{computed,reused}``,
    ``fused_computed`` / ``fused_reused`` (sites with `reads`, e.g. FLUX's single-block
    `proj_out`), and ``reuse_missed`` (a site that should have reused but had nothing stored for
    this CFG branch yet, so it computed)."""

    def install(self) -> None:
        state = self.state
        every_site = find_sites(state.model, state.adapter)
        wanted = {s.name for s, _ in every_site if not s.reads and self.wants(s)}
        # a fused site follows the sites it reads: hooked when they all are
        self.sites = [(s, m) for s, m in every_site if (set(s.reads) <= wanted if s.reads else s.name in wanted)]
        super().install()  # block hooks: step bookkeeping and block_calls, blocks always run
        modules = dict(state.model.named_modules())
        readers = Counter(site.norm for site, _ in every_site if site.norm is not None)
        for site, module in self.sites:
            state.hooks.add(module, DispatchHook(state, "layer_forward", site), LAYER_HOOK)
            if site.norm is not None and readers[site.norm] == 1:  # a shared norm always runs
                state.hooks.add(modules[site.norm], DispatchHook(state, "norm_forward", site), NORM_HOOK)

    def wants(self, site: Site) -> bool:
        """Whether to hook this site at all (a site that never reuses needs no hook)."""
        return True

    def reuses(self, site: Site, ctx: CallContext) -> bool:
        """Whether the site hands back its stored output on this call (if it has one)."""
        raise NotImplementedError

    def stores(self, site: Site, ctx: CallContext) -> bool:
        """Whether a computed output is kept for later calls of this CFG branch."""
        return True

    @staticmethod
    def _key(site: Site, ctx: CallContext, count: bool) -> str:
        # A submodule called more than once per forward (e.g. a block run twice) keeps one
        # stored output per call.
        occurrence = ctx.scratch.setdefault("count:occurrence", {})
        n = occurrence.get(site.name, 0)
        if count:
            occurrence[site.name] = n + 1
        return site.name if n == 0 else f"{site.name}#{n}"

    def norm_forward(self, hook: DispatchHook, ctx: CallContext, args: tuple, kwargs: dict):
        """The normalization only `site` reads: not computed when the site is about to hand
        back its stored output (under autograd it always runs: backward replays the block)."""
        site = hook.where
        skipped = ctx.scratch.setdefault("norm_skipped", set())  # sites whose last norm call was skipped
        if ctx.tracked and not ctx.replay and not torch.is_grad_enabled() and self.reuses(site, ctx):
            store = ctx.caches.get(ctx.branch)
            if store is not None and store.get(self._key(site, ctx, count=False)) is not None:
                skipped.add(site.name)
                ctx.stats.count("norms_skipped")
                return _one_token(args[0] if args else next(iter(kwargs.values())))
        skipped.discard(site.name)
        return hook.run(args, kwargs)

    def layer_forward(self, hook: DispatchHook, ctx: CallContext, args: tuple, kwargs: dict):
        site = hook.where
        if site.reads:
            return self._fused_forward(hook, site, ctx, args, kwargs)
        return self._site_forward(hook, site, ctx, args, kwargs)

    def _site_forward(self, hook: DispatchHook, site: Site, ctx: CallContext, args: tuple, kwargs: dict):
        stats = ctx.stats
        key = self._key(site, ctx, count=True)
        label = site.kind if site.kind == "mlp" else f"{site.kind}_attn"
        store = None
        if ctx.tracked:
            store = ctx.caches.setdefault(ctx.branch, {})
            if self.reuses(site, ctx):
                # a recomputation in backward reuses what its forward reused, even if later
                # steps have refreshed the store since
                used = ctx.scratch.setdefault("reused", {})
                value = used.get(key) if ctx.replay else store.get(key)
                if value is not None:
                    stats.count(f"{site.group}_reused")
                    if site.group == "attn":
                        stats.count(f"{label}_reused")
                    if torch.is_grad_enabled() and not ctx.replay:
                        used[key] = value
                    _remember(ctx, site, value)
                    return value
                stats.count("reuse_missed")
        if site.name in ctx.scratch.get("norm_skipped", ()):
            raise RuntimeError(f"dit-cache: {site.name} lost its stored output after its input norm was skipped; "
                               "its input is not normalized. Please report this with the model's class.")
        output = hook.run(args, kwargs)
        stats.count(f"{site.group}_computed")
        if site.group == "attn":
            stats.count(f"{label}_computed")
        if store is not None and not ctx.replay and self.stores(site, ctx):
            store[key] = _detach(output)
            _remember(ctx, site, store[key])
        else:
            _remember(ctx, site, None)  # an output nothing stored: a fused reader must compute
        return output

    def _fused_forward(self, hook: DispatchHook, site: Site, ctx: CallContext, args: tuple, kwargs: dict):
        """A site whose output is a function of the outputs of `site.reads` alone: reused when
        each of them handed back, on this call, the stored object it was computed from."""
        key = self._key(site, ctx, count=True)
        if not ctx.tracked or ctx.replay or torch.is_grad_enabled():
            return hook.run(args, kwargs)
        store = ctx.caches.setdefault(ctx.branch, {})
        seen = ctx.scratch.get("site_values", {})
        inputs = [seen.get(name) for name in site.reads]
        entry = store.get(key)
        # identity only: `None in inputs` would compare tensors with ==
        complete = all(v is not None for v in inputs)
        if entry is not None and complete and all(ref() is value for ref, value in zip(entry[1], inputs)):
            ctx.stats.count("fused_reused")
            return entry[0]
        output = hook.run(args, kwargs)
        ctx.stats.count("fused_computed")
        # An output computed from an input nothing stored is not kept (no later call can hand
        # back that input), and the entry it would replace stays valid for its own inputs.
        # Weak references: the entry keeps neither its inputs alive nor counts their bytes.
        if complete:
            store[key] = (_detach(output), tuple(weakref.ref(v) for v in inputs))
        return output

    def describe_cache(self) -> dict:
        caches = self.state.tracker.live_caches()
        sites: dict[str, int] = {}
        for site, _ in self.sites:
            sites[site.kind] = sites.get(site.kind, 0) + 1
        return {
            "cache_point": "outputs of attention and MLP submodules (before the adaLN gate)",
            "sites": sites,
            "branches": len(caches),
            "stored_outputs": sum(len(c) for c in caches.values()),
            "cached_bytes": tensor_bytes(caches),
        }
