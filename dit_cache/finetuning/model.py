"""What `dit_cache.finetune` does to the model it trains: patch it with long-skip adapters,
find their parameters and skip projections, bound their spectral norm, and switch off DiT's
built-in label dropout while training."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..api import patch
from ..runtime.registry import get_adapter
from ..runtime.patch_state import LSC_ATTR, get_state
from ..runtime.spectral import spectral_norms


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names of the long-skip parameters: inserted `dit_cache_lsc.*`, else the backbone's native
    skip modules (Hunyuan-DiT `skip_norm` / `skip_linear`)."""
    names = [n for n, _ in model.named_parameters()]
    state = get_state(model)
    if state is not None and state.lscs is not None:
        return [n for n in names if n.startswith(LSC_ATTR + ".")]
    prefixes = tuple(p + "." for p in get_adapter(model).native_skip_modules(model))
    return [n for n in names if prefixes and n.startswith(prefixes)]


def has_skip_projections(model: nn.Module) -> bool:
    state = get_state(model)
    if state is not None and state.lscs is not None:
        return True
    return bool(get_adapter(model).native_skip_linears(model))


def initial_spectral_bound(model: nn.Module, requested) -> float | None:
    """The cap on skip projections: ``requested``, or for ``"auto"`` ``max(1, largest initial
    singular value)`` (a pretrained skip is never shrunk); None when there is nothing to cap."""
    if not has_skip_projections(model):
        return None
    if requested == "auto":
        return max([1.0] + list(spectral_norms(model).values()))
    return requested


def patch_for_training(model: nn.Module, cfg) -> str | None:
    """Patch when asked; return the adapter kind recorded in the result: fusion, "native" or None."""
    adapter = get_adapter(model)
    state = get_state(model)
    if state is None and cfg.adapters is not None:
        with torch.random.fork_rng(devices=[]):  # "replace" adapters draw their init from the RNG
            torch.manual_seed(cfg.seed)
            patch(model, "skip-dit", fusion=None if adapter.native_skips else cfg.adapters)
        state = get_state(model)
    if state is not None and state.lscs is not None:
        return state.fusion
    if adapter.native_skips:
        return "native"
    if cfg.adapter_steps > 0:
        raise ValueError(
            f"adapter_steps > 0 but this {type(model).__name__} has no long-skip adapters (adapters=None); "
            "use adapters='residual' / 'replace', or train it with full_steps only"
        )
    return None


@contextlib.contextmanager
def no_builtin_label_dropout(model: nn.Module):
    """DiT's LabelEmbedding drops labels in train mode from the global RNG; finetune drops them
    itself (seeded, configurable), so the built-in dropout is switched off while training."""
    from diffusers.models.embeddings import LabelEmbedding

    saved = [(m, m.dropout_prob) for m in model.modules() if isinstance(m, LabelEmbedding)]
    for m, _ in saved:
        m.dropout_prob = 0.0
    try:
        yield
    finally:
        for m, p in saved:
            m.dropout_prob = p
