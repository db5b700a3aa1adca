"""Cache methods, one folder each: `<method>/config.py` holds the frozen config, its presets and
its step decision, and imports neither torch nor diffusers (so `ditcache presets` and
`ditcache schedule` answer at once); `<method>/method.py` holds the hooks and registers itself
for the config type. `load_methods()` imports every hook module (`dit_cache.api` does, so
`dit_cache.patch` knows them all). To add a method, write its folder, add its presets to
presets.py and its hook module to METHOD_MODULES."""
from __future__ import annotations

import importlib

from .._common.lazy import lazy_exports
from .fora import FORAConfig
from .no_cache import NoCacheConfig
from .pab import PABConfig, PABPlan
from .plan import StepPlanConfig
from .presets import BUILTIN_PRESETS
from .skip_cache import SkipCacheConfig

METHOD_MODULES = (".no_cache.method", ".skip_cache.method", ".fora.method", ".pab.method", ".plan.method")


def load_methods() -> None:
    """Import (and so register) every built-in method's hooks."""
    for module in METHOD_MODULES:
        importlib.import_module(module, __name__)


__getattr__ = lazy_exports(__name__, {
    "CacheMethod": ".base", "LayerReuseMethod": ".layer_reuse", "NoCache": ".no_cache.method",
    "SkipCache": ".skip_cache.method", "FORA": ".fora.method", "PAB": ".pab.method", "StepPlan": ".plan.method",
}, globals())

__all__ = [
    "CacheMethod", "NoCache", "NoCacheConfig", "LayerReuseMethod", "BUILTIN_PRESETS", "load_methods",
    "SkipCache", "SkipCacheConfig", "StepPlan", "StepPlanConfig", "FORA", "FORAConfig", "PAB", "PABConfig", "PABPlan",
]
