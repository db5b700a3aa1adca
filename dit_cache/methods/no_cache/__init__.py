"""The `none` method: `config` (the frozen config, its presets and its step decision; imports neither
torch nor diffusers) and `method` (its hooks, registered for the config; loaded on first use)."""
from ..._common.lazy import lazy_exports
from .config import PRESETS, NoCacheConfig

__getattr__ = lazy_exports(__name__, {"NoCache": ".method"}, globals())
