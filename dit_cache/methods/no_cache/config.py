"""The `none` preset: patched, step tracking on, never caching (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NoCacheConfig:
    """Patched, step tracking on, never caching: the reference point for overhead."""

    name = "none"
    inserts_adapters = False


PRESETS = {"none": NoCacheConfig()}
