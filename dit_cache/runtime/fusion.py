"""The long-skip-connection (LSC) adapter inserted in front of a deep block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.normalization import FP32LayerNorm
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
        self.norm = FP32LayerNorm(2 * dim, eps=eps, elementwise_affine=True)
        self.linear = nn.Linear(2 * dim, dim)
        if mode == "residual":
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        # Folded weights of the fused kernel, owned by this module (never shared across models).
        self._fold_cache: dict = {}

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # (B, L, D) x2 -> (B, L, D)
        hooked = self._hooked()
        if hooked or self.linear.weight.device != x.device:
            return self._unfused(x, skip, hooked)
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

    def _hooked(self) -> bool:
        """Whether an offloading library manages the weights: accelerate's or diffusers' hooks on
        the submodules load them only when the submodule itself is called."""
        return any("_hf_hook" in m.__dict__ or "_diffusers_hook" in m.__dict__ for m in (self.norm, self.linear))

    def _unfused(self, x: torch.Tensor, skip: torch.Tensor, hooked: bool) -> torch.Tensor:
        """The same op through the submodules, so that offloading hooks fire (or, with no hooks,
        with the weights copied to the activations' device for this call)."""
        h = torch.cat([x, skip], dim=-1)  # (B, L, 2D)
        if hooked:
            y = self.linear(self.norm(h).to(x.dtype))
        else:
            weight, bias = (p.to(x.device) for p in (self.norm.weight, self.norm.bias))
            h = F.layer_norm(h.float(), h.shape[-1:], weight.float(), bias.float(), self.eps).to(x.dtype)
            y = F.linear(h, self.linear.weight.to(x), self.linear.bias.to(x))
        return x + y if self.mode == "residual" else y

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode!r}, kernel={self.kernel!r}"
