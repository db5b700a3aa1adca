"""dit-cache: Skip-DiT long-skip adapters and static caching for diffusers DiTs.

The runtime API is imported here; the tooling (`finetune`, `convert`, `zoo`) loads on first
use, so `import dit_cache` stays light."""
from __future__ import annotations

import importlib

from .api import patch, reset, schedule_pattern, stats, unpatch
from .methods import FORAConfig, NoCacheConfig, PABConfig, SkipCacheConfig
from .runtime.adapter_io import load_adapters, save_adapters
from .runtime.registry import register_adapter, register_method, supported_models
from .runtime.spectral import cap_spectral_norm_, spectral_norms
from .schedules import presets, register_preset
from .version import __version__

#: Public names of the tooling, loaded on first access: name -> (module, attribute or None).
_LAZY = {
    "finetune": ("dit_cache.finetuning.api", "finetune"),
    "load_finetuned": ("dit_cache.finetuning.api", "load_finetuned"),
    "FinetuneConfig": ("dit_cache.finetuning.api", "FinetuneConfig"),
    "convert": ("dit_cache.conversion.api", "convert"),
    "use_original_dit_timestep_embedding": ("dit_cache.conversion.api", "use_original_dit_timestep_embedding"),
    "zoo": ("dit_cache.zoo", None),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dit_cache' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


__all__ = [
    "patch",
    "unpatch",
    "stats",
    "reset",
    "schedule_pattern",
    "save_adapters",
    "load_adapters",
    "presets",
    "register_preset",
    "register_adapter",
    "register_method",
    "supported_models",
    "spectral_norms",
    "cap_spectral_norm_",
    "finetune",
    "load_finetuned",
    "FinetuneConfig",
    "convert",
    "use_original_dit_timestep_embedding",
    "zoo",
    "SkipCacheConfig",
    "NoCacheConfig",
    "FORAConfig",
    "PABConfig",
    "__version__",
]
