"""Argument validation for the public skip_fusion entry point (clear errors, early)."""

from __future__ import annotations

import torch


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def check_skip_fusion_args(x, s, norm_weight, norm_bias, weight, bias) -> None:
    for name, t in (("x", x), ("s", s), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have shape (..., D) with D > 0, got {_shape(x)}")
    if x.shape != s.shape:
        raise ValueError(f"x and s must have the same shape (..., D); got x {_shape(x)} and s {_shape(s)}")
    if not x.is_floating_point() or x.dtype != s.dtype:
        raise TypeError(f"x and s must share one floating dtype; got {x.dtype} and {s.dtype}")
    D = x.shape[-1]
    if _shape(weight) != (D, 2 * D):
        raise ValueError(
            f"weight must be the Linear(2D -> D) weight of shape (D, 2D) = ({D}, {2 * D}) "
            f"for inputs with D={D}; got {_shape(weight)}"
        )
    for name, t, n in (("bias", bias, D), ("norm_weight", norm_weight, 2 * D), ("norm_bias", norm_bias, 2 * D)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if _shape(t) != (n,):
            raise ValueError(f"{name} must have shape ({n},) for D={D}; got {_shape(t)}")
    for name, t in (("s", s), ("weight", weight), ("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put all tensors on one device")
