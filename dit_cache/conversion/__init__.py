"""`dit_cache.convert`: original DiT, released Skip-DiT and Latte-skip checkpoints -> diffusers +
dit-cache adapters (see conversion.api)."""
from .._common.lazy import lazy_exports

_EXPORTS = {
    "ConvertResult": ".api", "convert": ".api", "use_original_dit_timestep_embedding": ".api",
    "ConvertError": ".errors", "LAYOUTS": ".layouts", "DTYPES": ".options", "parse_config": ".options",
    "ADAPTER_FILE": ".output", "INFO_FILE": ".output", "read_checkpoint": ".reading",
}
__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = sorted(_EXPORTS)
