"""Cache methods, one module each with its config and presets: importing this package
registers them. To add one, write its module and list it here."""
from . import base, fora, pab, plan, skip_cache
from .base import CacheMethod, NoCache, NoCacheConfig
from .fora import FORA, FORAConfig
from .layer_reuse import LayerReuseMethod
from .pab import PAB, PABConfig, PABPlan
from .plan import StepPlan, StepPlanConfig
from .skip_cache import SkipCache, SkipCacheConfig

#: Preset name -> config, in the order `ditcache presets` lists them.
BUILTIN_PRESETS = {name: cfg for module in (base, skip_cache, fora, pab) for name, cfg in module.PRESETS.items()}

__all__ = [
    "CacheMethod", "NoCache", "NoCacheConfig", "LayerReuseMethod", "BUILTIN_PRESETS",
    "SkipCache", "SkipCacheConfig", "StepPlan", "StepPlanConfig", "FORA", "FORAConfig", "PAB", "PABConfig", "PABPlan",
]
