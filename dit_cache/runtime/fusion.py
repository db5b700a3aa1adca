"""The long-skip-connection (LSC) adapter inserted in front of a deep block."""
from __future__ import annotations

import torch
from torch import nn

from ..kernels import skip_fusion

FUSION_MODES = ("residual", "replace")


class LongSkipFusion(nn.Module):
    """`Linear_{2D->D}(LayerNorm_fp32(cat[x, s]))` from Skip-DiT, in two modes.

    - ``"replace"``: the reference op, its result replaces x (needed to load Skip-DiT weights).
    - ``"residual"``: ``x + Linear(LN(cat))`` with the Linear zero-initialised, so a freshly
      patched pretrained model computes exactly what it computed before (until trained).
    """

    def __init__(self, dim: int, mode: str = "residual", eps: float = 1e-6, kernel: str = "auto"):
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
        self.dim, self.mode, self.eps, self.kernel = dim, mode, eps, kernel
        self.norm = nn.LayerNorm(2 * dim, eps=eps, elementwise_affine=True)
        self.linear = nn.Linear(2 * dim, dim)
        if mode == "residual":
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        # Folded weights of the fused kernel, owned by this module (never shared across models).
        self._fold_cache: dict = {}

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # (B, L, D) x2 -> (B, L, D)
        return skip_fusion(
            x,
            skip,
            self.norm.weight,
            self.norm.bias,
            self.linear.weight,
            self.linear.bias,
            eps=self.eps,
            residual=self.mode == "residual",
            backend=self.kernel,
            cache=self._fold_cache,
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}, kernel={self.kernel!r}"
