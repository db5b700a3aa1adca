"""Backbone adapters: one module per diffusers model family (installed as dit_cache.adapters)."""
from .base import SINGLE_STREAM, BackboneAdapter, BlockIO, Site, SkipCacheDefaults
from .dit import DiTAdapter, DiTFamily
from .flux import FluxAdapter, FluxFamily
from .family import FamilySpec, family_spec, register_family, spec_for_model
from .hunyuan import HunyuanDiTAdapter, HunyuanFamily
from .latte import LatteAdapter, LatteFamily
from .pixart import PixArtAdapter, PixArtFamily
from .sd3 import SD3Adapter, SD3Family
from .wan import WanAdapter, WanFamily

# A backbone is one module: its adapter (runtime) and its FamilySpec (tooling), listed here once.
BUILTIN_FAMILIES = (DiTFamily(), LatteFamily(), HunyuanFamily(), PixArtFamily(), SD3Family(), FluxFamily(),
                    WanFamily())
BUILTIN_ADAPTERS = tuple(family.adapter_class() for family in BUILTIN_FAMILIES)
for _family in BUILTIN_FAMILIES:
    register_family(_family)

__all__ = [
    "BackboneAdapter",
    "SkipCacheDefaults",
    "DiTAdapter",
    "LatteAdapter",
    "HunyuanDiTAdapter",
    "PixArtAdapter",
    "WanAdapter",
    "SD3Adapter",
    "FluxAdapter",
    "BUILTIN_ADAPTERS",
    "FamilySpec",
    "BUILTIN_FAMILIES",
    "family_spec",
    "register_family",
    "spec_for_model",
    "BlockIO",
    "SINGLE_STREAM",
    "Site",
]
