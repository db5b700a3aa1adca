"""Pyramid Attention Broadcast: `config` (the frozen config, its presets and its step decision; imports neither
torch nor diffusers) and `method` (its hooks, registered for the config; loaded on first use)."""
from ..._common.lazy import lazy_exports
from .config import PRESETS, PABConfig, PABPlan, PAB_KINDS, PAB_MLP_BLOCKS, PAB_MLP_SKIP, PAB_MLP_TIMESTEPS

__getattr__ = lazy_exports(__name__, {"PAB": ".method"}, globals())
