"""Fidelity of a method's final latents against the reference latents of the same seed.

Per image (per frame for video): PSNR with the reference image's value range as the data
range, SSIM (torchmetrics, Gaussian window, same data range), and the max abs error (also as a
share of the reference's value range).
"""
from __future__ import annotations

import math
from typing import Any

import torch


def _images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or video (B, C, F, H, W) -> a stack of (C, H, W) images (frames)."""
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if x.dim() == 5:
        b, c, f, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    if x.dim() == 4:
        return x
    raise ValueError(f"expected (B, C, H, W) or (B, C, F, H, W) latents, got shape {tuple(x.shape)}")


def fidelity(output: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Per-image PSNR / SSIM and the max abs error of `output` against `reference`."""
    if output.shape != reference.shape:
        raise ValueError(f"output shape {tuple(output.shape)} != reference shape {tuple(reference.shape)}")
    out, ref = _images(output), _images(reference)
    diff = out - ref
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    value_range = float(ref.max() - ref.min()) if ref.numel() else 0.0
    psnrs, ssims = [], []
    for o, r in zip(out, ref):
        data_range = float(r.max() - r.min()) or 1.0
        mse = float((o - r).pow(2).mean())
        psnrs.append(math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse))
        ssims.append(_ssim(o, r, data_range))
    # the max error as a share of the reference's value range: comparable across models
    return {"psnr": psnrs, "ssim": ssims, "max_abs_err": max_abs, "max_rel_err": max_abs / (value_range or 1.0)}


def _ssim(o: torch.Tensor, r: torch.Tensor, data_range: float) -> float | None:
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        return None
    if torch.equal(o, r):
        return 1.0
    side = min(o.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    if kernel < 3:
        return None
    sigma = 1.5 * kernel / 11
    value = structural_similarity_index_measure(
        o[None], r[None], data_range=data_range, kernel_size=kernel, sigma=sigma
    )
    return float(value)
