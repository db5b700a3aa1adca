"""Independent counting and prediction for the layer-reuse methods (FORA, PAB).

`SubmoduleCounter` sees every call of each attention / MLP submodule (a forward pre-hook on
the submodule itself runs even when a dit-cache or diffusers hook hands back a stored output)
and every real execution (a pre-hook on a Linear *inside* it: `to_q` / the first MLP layer,
which a reused call never reaches). It works for dit-cache and for diffusers' own PAB alike.
The predictions restate each method's rule from the papers / diffusers, not from dit-cache.
"""
from __future__ import annotations

import re
from collections import Counter

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention

KINDS = ("spatial", "temporal", "cross", "mlp")


def site_kinds(model: torch.nn.Module) -> dict[str, str]:
    """qualified name -> kind for every attn1/attn2/ff submodule of the model's blocks."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (Attention, AttentionModuleMixin)) and re.search(r"blocks\.\d+\.attn[12]?$", name):
            cross = getattr(mod, "is_cross_attention", False)
            out[name] = "cross" if cross else ("temporal" if "temporal" in name else "spatial")
        elif re.search(r"blocks\.\d+\.(ff|ff_context|ffn|proj_mlp)$", name):
            out[name] = "mlp"
    return out


def block_index(site_name: str) -> int:
    return int(re.search(r"blocks\.(\d+)\.", site_name).group(1))


class SubmoduleCounter:
    def __init__(self, model: torch.nn.Module):
        self.kinds = site_kinds(model)
        self.calls: Counter = Counter()
        self.executed: Counter = Counter()
        self.executed_by_site: Counter = Counter()
        self.executed_by_call: Counter = Counter()  # (model call index, kind) -> executions
        self.model_calls = 0
        self._handles = [model.register_forward_pre_hook(self._model_call)]
        modules = dict(model.named_modules())
        for name, kind in self.kinds.items():
            mod = modules[name]
            self._handles.append(mod.register_forward_pre_hook(self._hook(self.calls, kind)))
            if isinstance(mod, torch.nn.Linear):  # FLUX's proj_mlp: no submodule to see it run
                self._handles.append(mod.register_forward_hook(self._fresh_output(kind, name)))
                continue
            inner = mod.to_q if kind != "mlp" else mod.net[0]
            self._handles.append(inner.register_forward_pre_hook(self._hook(self.executed, kind, name)))

    def _model_call(self, module, args):
        self.model_calls += 1

    def _hook(self, counter: Counter, kind: str, name: str | None = None):
        def hook(module, args):
            counter[kind] += 1
            if name is not None:
                self.executed_by_site[name] += 1
                self.executed_by_call[self.model_calls - 1, kind] += 1

        return hook

    def _fresh_output(self, kind: str, name: str):
        """An executed call returns a new tensor; a reused one shares an earlier output's storage
        (outputs are kept alive, so no address is recycled)."""
        seen, keep = set(), []

        def hook(module, args, out):
            ptr = out.untyped_storage().data_ptr()
            if ptr not in seen:
                self._hook(self.executed, kind, name)(module, args)
            seen.add(ptr)
            keep.append(out)

        return hook

    def reused(self, kind: str) -> int:
        return self.calls[kind] - self.executed[kind]

    def remove(self):
        for h in self._handles:
            h.remove()


def timesteps_of(pipe, steps: int) -> list[float]:
    import copy

    from dit_cache.adapters.family import set_pipeline_timesteps

    sched = copy.deepcopy(pipe.scheduler)
    set_pipeline_timesteps(pipe.transformer, sched, steps)
    return [float(t) for t in sched.timesteps]


def pab_attention_broadcasts(rng, window, step: int, t: float) -> bool:
    """diffusers' PyramidAttentionBroadcastHook for a pipeline calling the model once per
    step: compute iff iteration == 0, or t outside (low, high), or iteration % range == 0."""
    if rng is None:
        return False
    low, high = window
    return not (step == 0 or not (low < t < high) or step % rng == 0)


def videosys_mlp_action(all_timesteps: list[int], timestep: int, block_idx: int, config: dict):
    """VideoSys' `PABManager.if_skip_mlp` (+ `_is_t_in_skip_config`), restated: returns
    "store" (compute and save), "reuse" or None. `config` maps t -> {"block": [...],
    "skip_count": n}."""
    in_skip, skip_range = False, None
    for key in config:
        if key not in all_timesteps:
            continue
        index = all_timesteps.index(key)
        window = all_timesteps[index : index + 1 + int(config[key]["skip_count"])]
        if timestep in window:
            in_skip, skip_range = True, [all_timesteps[index], all_timesteps[index + int(config[key]["skip_count"])]]
            break
    if timestep in config and block_idx in config[timestep]["block"]:
        return "store"
    if in_skip and block_idx in config[skip_range[0]]["block"]:
        return "reuse"
    return None


def predicted_counts(model, config, timesteps: list[float], calls_per_step: int = 1) -> dict[str, tuple[int, int]]:
    """kind -> (computed, reused) calls for FORA / PAB over one generation."""
    from dit_cache import FORAConfig, NoCacheConfig, PABConfig

    kinds = site_kinds(model)
    out = {k: [0, 0] for k in KINDS}
    for name, kind in kinds.items():
        for i, t in enumerate(timesteps):
            if isinstance(config, NoCacheConfig):
                reuse = False
            elif isinstance(config, FORAConfig):
                reuse = i % config.interval != 0
            elif isinstance(config, PABConfig):
                if kind == "mlp":
                    reuse = False  # MLP broadcast is checked in test_pab
                else:
                    window = getattr(config, f"{kind}_window") or config.window
                    reuse = pab_attention_broadcasts(getattr(config, f"{kind}_range"), window, i, t)
            else:
                raise TypeError(config)
            out[kind][1 if reuse else 0] += calls_per_step
    return {k: tuple(v) for k, v in out.items()}


def module_snapshot(model: torch.nn.Module) -> dict:
    """Instance attributes and children of every submodule (what a patch could leave behind)."""
    def hooks(m):
        registry = m.__dict__.get("_diffusers_hook")
        return None if registry is None else tuple(registry.hooks)

    return {n: (set(m.__dict__), dict(m._modules), hooks(m)) for n, m in model.named_modules()}
