"""Plain-torch reference of the Skip-DiT long-skip fusion.

This is the ground truth every other backend is tested against. It mirrors what the
Skip-DiT reference code and diffusers' Hunyuan-DiT block do at a fusion point:

    y = Linear_{2D->D}( FP32LayerNorm_{2D}( cat[x, s] ) )

The LayerNorm runs in fp32 and its output is cast back to ``x.dtype`` (diffusers'
``FP32LayerNorm``); the Linear then runs in ``x.dtype``. (fp64 inputs keep an fp64 LayerNorm
instead of being truncated to fp32, so the reference can serve as fp64 ground truth.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["skip_fusion_reference"]


def skip_fusion_reference(x, s, norm_weight, norm_bias, weight, bias, eps: float = 1e-6, residual: bool = False):
    """Unfused reference: concat, fp32 LayerNorm, cast, Linear (+ x in residual mode).

    Shapes: x, s (..., D); norm_weight, norm_bias (2D,) or None; weight (D, 2D); bias (D,) or None.
    """
    ln_dtype = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    h = torch.cat([x, s], dim=-1)  # (..., 2D)
    h = F.layer_norm(
        h.to(ln_dtype),
        (h.shape[-1],),
        norm_weight.to(ln_dtype) if norm_weight is not None else None,
        norm_bias.to(ln_dtype) if norm_bias is not None else None,
        eps,
    ).to(x.dtype)
    y = F.linear(h, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None)  # (..., D)
    return x + y if residual else y
