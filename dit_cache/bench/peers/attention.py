"""diffusers' attention caches: PAB and FasterCache (no cache context needed)."""
from __future__ import annotations

from typing import Any

from ...methods import PABConfig
from ..errors import BenchInputError, PeerUnavailable
from ..specs import PAB_TRIPLE, MethodSpec
from .hooks import PeerHooks, check_options, timestep_window, window_text

PAB_OPTIONS = ("spatial_range", "temporal_range", "cross_range", "window", "spatial_window",
               "temporal_window", "cross_window")
FASTERCACHE_OPTIONS = ("spatial_range", "temporal_range", "uncond_range", "window", "uncond_window",
                       "attention_weight")


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
    def install(self) -> None:
        from diffusers import FasterCacheConfig, apply_faster_cache

        check_options(self.spec, FASTERCACHE_OPTIONS)
        if not self.runner.cfg:
            raise PeerUnavailable("FasterCache needs batched classifier-free guidance (--cfg-scale > 1)")
        o = self.spec.options
        weight = o.get("attention_weight", 0.5)
        family = self.runner.spec
        if not family.cfg_batched_kwargs:
            raise PeerUnavailable(f"FasterCache needs batched classifier-free guidance; {family.pipeline_class_name} "
                                  "runs the two CFG branches as separate calls")
        kwargs: dict[str, Any] = dict(
            spatial_attention_block_skip_range=o.get("spatial_range", 2),
            temporal_attention_block_skip_range=o.get("temporal_range", 2 if family.is_video else None),
            spatial_attention_timestep_skip_range=timestep_window(o.get("window", (-1, 681)), "window"),
            temporal_attention_timestep_skip_range=timestep_window(o.get("window", (-1, 681)), "window"),
            unconditional_batch_skip_range=o.get("uncond_range", 5),
            unconditional_batch_timestep_skip_range=timestep_window(o.get("uncond_window", (-1, 641)), "uncond_window"),
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
