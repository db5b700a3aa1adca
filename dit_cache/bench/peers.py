"""The peers: diffusers' own PAB and FasterCache hooks, installed and removed for one run."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..methods import PABConfig
from ..methods.validation import check_window
from ..runtime.registry import get_adapter
from .applied import Applied
from .errors import BenchInputError, PeerUnavailable
from .specs import PAB_TRIPLE, MethodSpec

PAB_OPTIONS = ("spatial_range", "temporal_range", "cross_range", "window", "spatial_window",
               "temporal_window", "cross_window")
FASTERCACHE_OPTIONS = ("spatial_range", "temporal_range", "uncond_range", "window", "uncond_window",
                       "attention_weight")


class PeerHooks(Applied):
    """diffusers hooks installed on the transformer and its attention modules; removal deletes
    every hook, every registry and every instance `forward` attribute this run created."""

    hook_names: tuple[str, ...] = ()

    def __init__(self, spec: MethodSpec, runner):
        super().__init__(spec)
        self.runner = runner
        self.model: nn.Module = runner.transformer
        self._before = {
            id(m): (hasattr(m, "_diffusers_hook"), "forward" in m.__dict__) for m in self.model.modules()
        }
        self.current_t: float = 1000.0
        self._pre = self.model.register_forward_pre_hook(self._track_timestep, with_kwargs=True)
        try:
            with quiet_diffusers():
                self.install()
        except BaseException:
            self.remove()
            raise

    def _track_timestep(self, module, args, kwargs):
        t = get_adapter(module).timestep(module, args, kwargs)
        if isinstance(t, torch.Tensor):
            t = t.reshape(-1)[0]
        if t is not None:
            self.current_t = float(t)

    def callback(self) -> float:
        return self.current_t

    def install(self) -> None:
        raise NotImplementedError

    def before_generation(self) -> None:
        # diffusers' stateful hooks only restart when reset; every generation starts fresh here.
        for module in self.model.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is not None:
                registry.reset_stateful_hooks(recurse=False)

    def remove(self) -> None:
        self._pre.remove()
        for module in self.model.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None:
                continue
            for name in self.hook_names:
                if name in registry.hooks:
                    registry.remove_hook(name, recurse=False)
            had_registry, had_forward = self._before.get(id(module), (False, False))
            if not had_registry and not registry.hooks:
                del module._diffusers_hook
                if not had_forward and "forward" in module.__dict__:
                    del module.__dict__["forward"]


class quiet_diffusers:
    """diffusers' experimental-feature warnings would break the progress display."""

    def __enter__(self):
        self.logger = logging.getLogger("diffusers")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _window(value, name: str) -> tuple[float, float]:
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


def pab_peer_config(spec: MethodSpec) -> PABConfig:
    """The `PABConfig` a diffusers-pab spec means: ``diffusers-pab-SST`` sets the three ranges,
    the options override them; the rest are dit-cache's PAB defaults."""
    check_options(spec, PAB_OPTIONS)
    m = PAB_TRIPLE.match(spec.name)
    ranges = dict(zip(("spatial_range", "temporal_range", "cross_range"), map(int, m.groups()))) if m else {}
    try:
        return PABConfig(**{**ranges, **spec.options})
    except (TypeError, ValueError) as err:
        raise BenchInputError(f"{spec.name}: {err}") from None


class AppliedDiffusersPAB(PeerHooks):
    hook_names = ("pyramid_attention_broadcast",)

    def install(self) -> None:
        from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        c = pab_peer_config(self.spec)
        kwargs: dict[str, Any] = dict(
            spatial_attention_block_skip_range=c.spatial_range,
            temporal_attention_block_skip_range=c.temporal_range,
            cross_attention_block_skip_range=c.cross_range,
            spatial_attention_timestep_skip_range=c.kind_window("spatial"),
            temporal_attention_timestep_skip_range=c.kind_window("temporal"),
            cross_attention_timestep_skip_range=c.kind_window("cross"),
            current_timestep_callback=self.callback,
        )
        pattern = self.runner.spec.spatial_block_pattern
        if pattern:  # e.g. Latte: the default spatial identifiers also match temporal_transformer_blocks.*
            kwargs["spatial_attention_block_identifiers"] = (pattern,)
        self.settings = c
        apply_pyramid_attention_broadcast(self.model, PyramidAttentionBroadcastConfig(**kwargs))

    def config_text(self) -> str:
        c = self.settings
        ranges = f"spatial={c.spatial_range}, temporal={c.temporal_range}, cross={c.cross_range}"
        return f"{ranges}, window={window_text(c.kind_window('spatial'))} (diffusers, per call)"


class AppliedDiffusersFasterCache(PeerHooks):
    hook_names = ("faster_cache_denoiser", "faster_cache_block")

    def install(self) -> None:
        from diffusers import FasterCacheConfig, apply_faster_cache

        check_options(self.spec, FASTERCACHE_OPTIONS)
        if not self.runner.cfg:
            raise PeerUnavailable("FasterCache needs batched classifier-free guidance (--cfg-scale > 1)")
        o = self.spec.options
        weight = o.get("attention_weight", 0.5)
        family = self.runner.spec
        kwargs: dict[str, Any] = dict(
            spatial_attention_block_skip_range=o.get("spatial_range", 2),
            temporal_attention_block_skip_range=o.get("temporal_range", 2 if family.is_video else None),
            spatial_attention_timestep_skip_range=_window(o.get("window", (-1, 681)), "window"),
            temporal_attention_timestep_skip_range=_window(o.get("window", (-1, 681)), "window"),
            unconditional_batch_skip_range=o.get("uncond_range", 5),
            unconditional_batch_timestep_skip_range=_window(o.get("uncond_window", (-1, 641)), "uncond_window"),
            attention_weight_callback=lambda _module: weight,
            tensor_format=family.tensor_format,
            current_timestep_callback=self.callback,
            # the forward kwargs that carry the [uncond, cond] batch (FasterCache splits them)
            _unconditional_conditional_input_kwargs_identifiers=list(family.cfg_batched_kwargs),
        )
        if family.spatial_block_pattern:
            kwargs["spatial_attention_block_identifiers"] = (family.spatial_block_pattern + ".*attn",)
        self.settings = kwargs
        apply_faster_cache(self.model, FasterCacheConfig(**kwargs))

    def config_text(self) -> str:
        k = self.settings
        return (
            f"spatial={k['spatial_attention_block_skip_range']}, temporal={k['temporal_attention_block_skip_range']}, "
            f"uncond={k['unconditional_batch_skip_range']}, window={window_text(k['spatial_attention_timestep_skip_range'])}"
        )
