"""Fused long-skip projection ``Linear(LayerNorm(cat[x, s]))`` for Skip-DiT fusion points.

Public API:
    skip_fusion(x, s, norm_weight, norm_bias, weight, bias, *, eps=1e-6, residual=False,
                backend="auto", cache=None) -> Tensor
    skip_fusion_reference(x, s, norm_weight, norm_bias, weight, bias, eps=1e-6, residual=False)
    resolve_backend(backend="auto", device=None) -> "torch" | "triton" | "reference"
    fold_skip_weights(norm_weight, norm_bias, weight, bias, *, dtype=None, center=True)
    enable_xformers(model), xformers_available() -> (bool, reason)

Backends: "reference" (concat + fp32 LayerNorm + Linear), "torch" (LayerNorm folded into the
Linear, two GEMMs into one output, LN as a per-row epilogue), "triton" (the same fold as one
CUDA kernel, registered as ``torch.ops.dit_cache.skip_fusion``; CPU only under
TRITON_INTERPRET=1). "auto" = triton on CUDA tensors when triton imports, else torch.
"""

from __future__ import annotations

import torch

from ._checks import check_skip_fusion_args
from .attention import enable_xformers, xformers_available
from .backend import BACKENDS, resolve_backend
from .folded import FoldedSkipWeights, fold_skip_weights, get_folded_weights, skip_fusion_folded, torch_compute_dtype
from .reference import skip_fusion_reference
from .triton_skip import TRITON_DTYPES, skip_fusion_triton

__all__ = [
    "BACKENDS",
    "FoldedSkipWeights",
    "enable_xformers",
    "fold_skip_weights",
    "resolve_backend",
    "skip_fusion",
    "skip_fusion_reference",
    "xformers_available",
]


def skip_fusion(
    x: torch.Tensor,
    s: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    eps: float = 1e-6,
    residual: bool = False,
    backend: str = "auto",
    cache: dict | None = None,
) -> torch.Tensor:
    """``Linear(LayerNorm_fp32(cat[x, s]))`` (+ x if ``residual``) for x, s of shape (..., D).

    norm_weight, norm_bias: LayerNorm(2D) affine params (None = no affine); weight (D, 2D) and
    bias (D,) of the Linear(2D -> D). ``cache``: a dict owned by the caller (e.g. one per
    fusion module) where folded weights are kept between calls; it is refreshed when a
    parameter changes in place and bypassed when the parameters need gradients.
    """
    check_skip_fusion_args(x, s, norm_weight, norm_bias, weight, bias)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # The fused paths mix in-place GEMMs with fp32 epilogues, which autocast cannot cast
        # per op. Do what autocast does for the Linear, once: inputs in the autocast dtype,
        # the whole op with autocast off (the LayerNorm statistics stay fp32 inside).
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return skip_fusion(
                x.to(dtype), s.to(dtype), norm_weight, norm_bias, weight.to(dtype), None if bias is None else bias.to(dtype),
                eps=eps, residual=residual, backend=backend, cache=None,
            )
    which = resolve_backend(backend, x.device)
    if which == "reference":
        return skip_fusion_reference(x, s, norm_weight, norm_bias, weight, bias, eps=eps, residual=residual)
    if which == "torch":
        folded = get_folded_weights(norm_weight, norm_bias, weight, bias, dtype=torch_compute_dtype(x), cache=cache)
        return skip_fusion_folded(x, s, folded, eps=eps, residual=residual)
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' supports {TRITON_DTYPES}, got {x.dtype}; use backend='torch'")
    folded = get_folded_weights(norm_weight, norm_bias, weight, bias, dtype=x.dtype, cache=cache)
    return skip_fusion_triton(x, s, folded, eps=eps, residual=residual)
