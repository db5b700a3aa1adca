"""The built-in presets of every method, in the order `ditcache presets` lists them (torch-free)."""
from __future__ import annotations

from . import fora, no_cache, pab, skip_cache

BUILTIN_PRESETS = {name: cfg for package in (no_cache, skip_cache, fora, pab) for name, cfg in package.PRESETS.items()}
