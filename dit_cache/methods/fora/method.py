"""FORA's hooks (see config.py for the method and its step decision)."""
from __future__ import annotations

from ...adapters import Site
from ...runtime.registry import register_method
from ...runtime.tracker import CallContext
from ..layer_reuse import LayerReuseMethod
from .config import FORAConfig


@register_method(FORAConfig)
class FORA(LayerReuseMethod):
    def decide(self, timesteps: list[float]) -> bool:
        return self.config.is_full(len(timesteps) - 1, timesteps[-1], timesteps[-2] if len(timesteps) > 1 else None)

    def reuses(self, site: Site, ctx: CallContext) -> bool:
        return not ctx.full

    def describe_cache(self) -> dict:
        return {**super().describe_cache(), "refresh_every": self.config.interval}
