"""DiT-XL/2 class-to-image (`DiTTransformer2DModel`): 28 adaLN-zero blocks, no native skips.

Unit = one block; block j feeds block N-1-j (Skip-DiT: push 0..13, pop at 14..27)."""
from __future__ import annotations

from diffusers import DiTTransformer2DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults


class DiTAdapter(BackboneAdapter):
    model_class = DiTTransformer2DModel
    family = "dit"
    # Reference: 8 of 28 blocks on a cached step (0-3 and 24-27), never full by t, t<=20 closes.
    defaults = SkipCacheDefaults(interval=2, shallow=4, start=1000.0, close=20.0)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in model.transformer_blocks]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.inner_dim
