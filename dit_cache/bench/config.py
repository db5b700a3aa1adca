"""What one benchmark run is asked to do (`BenchConfig`), its defaults, and their checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .._common.options import DEVICE_NAME
from .errors import BenchInputError

#: The embedded default (``ditcache bench`` with no arguments): the trained zoo's vanilla DiT
#: (FORA, PAB, Skip-Cache with untrained adapters) and its retrofit (Skip-Cache with trained
#: adapters), side by side; see dit_cache.zoo.
DEFAULT_SUITE = ("mnist-dit", "mnist-dit-retrofit")
DEFAULT_MODEL = DEFAULT_SUITE[0]
DEFAULT_STEPS = 20
ZOO_DEFAULT_BATCH = 20  # 2 samples per digit class per seed
ORDERS = ("interleaved", "sequential", "paired")
SEED_LIMIT = 2**63  # torch generators take 64-bit seeds; the runners add small offsets


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    methods: list[str] | None = None  # None: the model's default methods (see specs.methods_for)
    steps: int = DEFAULT_STEPS
    scheduler: str | None = None
    resolution: int | None = None
    frames: int | None = None
    batch: int = 1
    cfg_scale: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    dtype: str = "float32"
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    device: str | None = None  # None: cuda if available else cpu
    loop: bool = False
    flops: bool = True
    memory: bool = True
    max_background: float | None = None  # redo a timed run if other processes used more CPU
    order: str = "interleaved"  # timed runs: round-robin over methods, "sequential", or "paired" with none
    command: list[str] | None = None  # recorded in the JSON


def check_config(config: BenchConfig) -> None:
    """Raise BenchInputError for settings no run can have (model-specific checks come later)."""
    if config.repeats < 1:
        raise BenchInputError(f"--repeats must be >= 1, got {config.repeats}")
    if config.warmup < 0:
        raise BenchInputError(f"--warmup must be >= 0, got {config.warmup}")
    if not config.seeds:
        raise BenchInputError("--seeds needs at least one seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise BenchInputError(f"--seeds has duplicates: {config.seeds}")
    if config.order not in ORDERS:
        raise BenchInputError(f"order must be one of {', '.join(ORDERS)}, got {config.order!r}")
    if config.threads is not None and config.threads < 1:
        raise BenchInputError(f"--threads must be >= 1, got {config.threads}")
    for name in ("steps", "batch", "resolution", "frames"):
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BenchInputError(f"--{name} must be an integer >= 1, got {value!r}")
    bad_seeds = [s for s in config.seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT]
    if bad_seeds:
        raise BenchInputError(f"--seeds must be integers >= 0 and < 2**63, got {bad_seeds}")
    if config.cfg_scale is not None and not (_finite(config.cfg_scale) and config.cfg_scale >= 0):
        raise BenchInputError(f"--cfg-scale must be a finite number >= 0 (<= 1 turns CFG off), got {config.cfg_scale!r}")
    if config.max_background is not None and not (_finite(config.max_background) and 0 <= config.max_background <= 1):
        raise BenchInputError(f"--max-background must be a share of the CPUs in [0, 1], got {config.max_background!r}")
    if config.device is not None and not (isinstance(config.device, str) and DEVICE_NAME.fullmatch(config.device)):
        raise BenchInputError(f"--device must be cpu, cuda, cuda:N or meta, got {config.device!r}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
