"""dit-cache: Skip-DiT long-skip adapters and static caching for diffusers DiTs.

Every public name loads on first use (`dit_cache.patch` imports torch and diffusers then), so
`import dit_cache` and the `ditcache` command line start at once."""
from __future__ import annotations

from ._common.lazy import lazy_exports
from .version import __version__

_EXPORTS = {
    **dict.fromkeys(("patch", "unpatch", "stats", "reset", "schedule_pattern"), ".api"),
    **dict.fromkeys(("SkipCacheConfig", "NoCacheConfig", "FORAConfig", "PABConfig", "StepPlanConfig"), ".methods"),
    **dict.fromkeys(("calibrate", "Calibration"), ".calibration"),
    **dict.fromkeys(("load_schedule", "save_schedule"), ".schedule_file"),
    **dict.fromkeys(("save_adapters", "load_adapters"), ".runtime.adapter_io"),
    **dict.fromkeys(("register_adapter", "register_method", "supported_models"), ".runtime.registry"),
    **dict.fromkeys(("spectral_norms", "cap_spectral_norm_"), ".runtime.spectral"),
    **dict.fromkeys(("presets", "register_preset"), ".schedules"),
    **dict.fromkeys(("finetune", "load_finetuned", "FinetuneConfig"), ".finetuning.api"),
    **dict.fromkeys(("convert", "use_original_dit_timestep_embedding"), ".conversion.api"),
    "zoo": ".zoo",
}
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = [*_EXPORTS, "__version__"]


def __dir__():
    return sorted({*globals(), *_EXPORTS})
