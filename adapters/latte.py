"""Latte text/class-to-video (`LatteTransformer3DModel`): alternating spatial and temporal blocks.

Unit = (spatial block, temporal block) pair. The output of pair p (after its temporal block,
back in the `(b f) t d` layout the model restores after every pair) fuses before the SPATIAL
block of pair P-1-p; temporal blocks get no fusion. The entry hook of spatial block p+1 sees
exactly that restored output, which is why the fusion lives there."""
from __future__ import annotations

from diffusers import LatteTransformer3DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults


class LatteAdapter(BackboneAdapter):
    model_class = LatteTransformer3DModel
    family = "latte"
    # Reference (text-to-video): 2 of 28 pairs run on a cached step, full while t >= 700.
    defaults = SkipCacheDefaults(interval=2, shallow=1, start=700.0, close=50.0)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [
            [spatial, temporal]
            for spatial, temporal in zip(model.transformer_blocks, model.temporal_transformer_blocks)
        ]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.config.num_attention_heads * model.config.attention_head_dim
