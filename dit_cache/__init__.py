"""dit-cache: Skip-DiT long-skip adapters and static caching for diffusers DiTs."""
__version__ = "0.1.0"

from .methods import base as _methods  # noqa: F401,E402  (registers the built-in methods)
from .methods import skip_cache as _skip_cache  # noqa: F401,E402
from .methods import fora as _fora  # noqa: F401,E402
from .methods import pab as _pab  # noqa: F401,E402
from .runtime.adapter_io import load_adapters, save_adapters  # noqa: E402
from .api import patch, reset, schedule_pattern, stats, unpatch  # noqa: E402
from .finetuning.api import FinetuneConfig, finetune, load_finetuned  # noqa: E402
from .registry import register_adapter, supported_models  # noqa: E402
from .schedules import (  # noqa: E402
    FORAConfig,
    NoCacheConfig,
    PABConfig,
    SkipCacheConfig,
    presets,
    register_preset,
)
from .runtime.spectral import cap_spectral_norm_, spectral_norms  # noqa: E402
from .conversion.api import convert, use_original_dit_timestep_embedding  # noqa: E402
from . import zoo  # noqa: E402,F401  (dit_cache.zoo.load / .path / .meta)

__all__ = [
    "patch",
    "unpatch",
    "stats",
    "reset",
    "schedule_pattern",
    "save_adapters",
    "load_adapters",
    "presets",
    "register_preset",
    "register_adapter",
    "supported_models",
    "spectral_norms",
    "cap_spectral_norm_",
    "finetune",
    "load_finetuned",
    "FinetuneConfig",
    "convert",
    "use_original_dit_timestep_embedding",
    "SkipCacheConfig",
    "NoCacheConfig",
    "FORAConfig",
    "PABConfig",
]
