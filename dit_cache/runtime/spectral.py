"""The spectral constraint on long-skip projections.

Skip-DiT argues that bounding the largest singular value of the skip projection keeps feature
dynamics stable; its reference code enforces nothing. These functions measure and enforce it
on the `Linear_{2D->D}` of every long skip (inserted adapters or Hunyuan-DiT's native ones)."""
from __future__ import annotations

import torch
from torch import nn

from .patch_state import get_state, resolve_model
from .registry import get_adapter


def skip_projections(model_or_pipeline) -> dict[str, nn.Linear]:
    model = resolve_model(model_or_pipeline)
    state = get_state(model)
    if state is not None and state.lscs is not None:
        return {f"dit_cache_lsc.{deep}.linear": lsc.linear for deep, lsc in state.lscs.items()}
    projections = get_adapter(model).native_skip_linears(model)
    if not projections:
        raise ValueError(
            f"this {type(model).__name__} has no long-skip projections: patch it with a method that "
            "inserts adapters (e.g. dit_cache.patch(model, 'skip-dit')) first"
        )
    return projections


@torch.no_grad()
def spectral_norms(model_or_pipeline) -> dict[str, float]:
    """Largest singular value of every skip projection's weight (D x 2D)."""
    return {
        name: float(torch.linalg.matrix_norm(linear.weight.float(), ord=2))
        for name, linear in skip_projections(model_or_pipeline).items()
    }


@torch.no_grad()
def cap_spectral_norm_(model_or_pipeline, bound: float) -> dict[str, float]:
    """Rescale every skip projection whose largest singular value exceeds `bound` down to it.

    Returns the largest singular value of each projection before capping. In-place updates
    bump the parameters' versions, so cached folded kernel weights are refreshed."""
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound!r}")
    before = {}
    for name, linear in skip_projections(model_or_pipeline).items():
        sigma = float(torch.linalg.matrix_norm(linear.weight.float(), ord=2))
        before[name] = sigma
        if sigma > bound:
            linear.weight.mul_(bound / sigma)
    return before
