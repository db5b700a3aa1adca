"""Everything one `patch()` attached to one model instance."""
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


def get_state(model: nn.Module) -> PatchState | None:
    return model.__dict__.get(STATE_ATTR)
