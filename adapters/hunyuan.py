"""Hunyuan-DiT (`HunyuanDiT2DModel`): the long skips are native.

Blocks with `layer > L//2` carry `skip_norm` (fp32 LayerNorm 2D) and `skip_linear` (2D->D) and
fuse at block entry; the model pushes outputs of layers 0..L/2-2 and pops them at
L/2+1..L-1, so layer L-1-j receives block j. Nothing is inserted: Skip-Cache only swaps the
input of layer L-k for its cached value and lets the native fusion run."""
from __future__ import annotations

from diffusers import HunyuanDiT2DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults


class HunyuanDiTAdapter(BackboneAdapter):
    model_class = HunyuanDiT2DModel
    family = "hunyuan"
    native_skips = True
    # Reference: 2 of 40 layers (0 and 39) run on a cached step, full while t >= 700.
    defaults = SkipCacheDefaults(interval=2, shallow=1, start=700.0, close=50.0)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in model.blocks]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.inner_dim

    def pairs(self, model: nn.Module) -> list[tuple[int, int]]:
        n = len(model.blocks)
        return sorted((n - 1 - deep, deep) for deep in range(n // 2 + 1, n))

    def max_shallow(self, model: nn.Module) -> int:
        # layers L-k..L-1 must all hold native skips: L-k > L//2
        n = len(model.blocks)
        return n - n // 2 - 1

    def native_skip_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for i, block in enumerate(model.blocks):
            if block.skip_linear is not None:
                out[f"blocks.{i}.skip_norm"] = block.skip_norm
                out[f"blocks.{i}.skip_linear"] = block.skip_linear
        return out

    def native_skip_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        return {
            f"blocks.{i}.skip_linear": block.skip_linear
            for i, block in enumerate(model.blocks)
            if block.skip_linear is not None
        }
