"""The `none` method: every block runs; steps are tracked and blocks counted."""
from __future__ import annotations

from ...runtime.registry import register_method
from ..base import CacheMethod
from .config import NoCacheConfig


@register_method(NoCacheConfig)
class NoCache(CacheMethod):
    """Tracks steps and counts blocks; never caches."""
