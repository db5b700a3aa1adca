"""Backbone adapters: one module per diffusers model family (installed as dit_cache.adapters)."""
from .base import BackboneAdapter, SkipCacheDefaults, block_hidden_states, with_hidden_states
from .dit import DiTAdapter
from .hunyuan import HunyuanDiTAdapter
from .latte import LatteAdapter

BUILTIN_ADAPTERS = (DiTAdapter(), LatteAdapter(), HunyuanDiTAdapter())

__all__ = [
    "BackboneAdapter",
    "SkipCacheDefaults",
    "DiTAdapter",
    "LatteAdapter",
    "HunyuanDiTAdapter",
    "BUILTIN_ADAPTERS",
    "block_hidden_states",
    "with_hidden_states",
]
