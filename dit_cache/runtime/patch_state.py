"""Everything one `patch()` attached to one model instance, and how to find it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..adapters import BackboneAdapter
from .hooks import HookSet
from .tracker import StepTracker

STATE_ATTR = "_dit_cache_state"
LSC_ATTR = "dit_cache_lsc"  # child ModuleDict holding inserted adapters, keyed by deep unit


@dataclass
class PatchState:
    model: nn.Module
    adapter: BackboneAdapter
    config: Any
    fusion: str | None
    kernel: str
    lscs: nn.ModuleDict | None = None
    method: Any = None
    tracker: StepTracker = field(default_factory=StepTracker)
    hooks: HookSet = field(default_factory=HookSet)
    saved_attn_processors: dict | None = None
    scheduler_watch: Any = None  # SchedulerWatch of the pipeline's scheduler, when patched via a pipeline


def resolve_model(model_or_pipeline) -> nn.Module:
    """A diffusers transformer, or the `.transformer` of a pipeline."""
    if isinstance(model_or_pipeline, nn.Module):
        return model_or_pipeline
    model = getattr(model_or_pipeline, "transformer", None)
    if isinstance(model, nn.Module):
        return model
    raise TypeError(
        f"expected a diffusers transformer model or a pipeline with a `.transformer`, got "
        f"{type(model_or_pipeline).__name__}"
    )


def get_state(model: nn.Module) -> PatchState | None:
    return model.__dict__.get(STATE_ATTR)


def require_state(model_or_pipeline) -> PatchState:
    """The patch state of a model (or pipeline), with a clear error when it is not patched."""
    model = resolve_model(model_or_pipeline)
    state = get_state(model)
    if state is None:
        raise ValueError(f"this {type(model).__name__} is not patched; call dit_cache.patch(model, ...) first")
    return state
