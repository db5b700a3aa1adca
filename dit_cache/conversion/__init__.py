"""`dit_cache.convert`: original DiT, released Skip-DiT and Latte-skip checkpoints -> diffusers +
dit-cache adapters (see conversion.api)."""
from .api import ConvertResult, convert, use_original_dit_timestep_embedding
from .errors import ConvertError
from .layouts import LAYOUTS
from .options import DTYPES, parse_config
from .output import ADAPTER_FILE, INFO_FILE
from .reading import read_checkpoint

__all__ = [
    "ADAPTER_FILE",
    "ConvertError",
    "ConvertResult",
    "DTYPES",
    "INFO_FILE",
    "LAYOUTS",
    "convert",
    "parse_config",
    "read_checkpoint",
    "use_original_dit_timestep_embedding",
]
