"""The timesteps of the built-in schedulers (`--scheduler ddim|ddpm|dpm++|euler`, as
dit_cache.testing builds them) for n inference steps, without torch or diffusers.

Deliberately not diffusers: importing it (and torch) takes ~4 s, and `ditcache schedule` must
answer in well under that. These are diffusers' `set_timesteps` rules for the spacing each
built-in scheduler uses; tests/test_first_hour.py checks them against diffusers for every step
count from 1 to the number of training steps, on every family's noise config."""
from __future__ import annotations

import numpy as np


def builtin_timesteps(scheduler: str, steps: int, num_train_timesteps: int = 1000, steps_offset: int = 0) -> list[float]:
    """The timesteps `scheduler` visits in `steps` steps (1 <= steps <= num_train_timesteps)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {steps}")
    if scheduler in ("ddim", "ddpm"):  # "leading" spacing
        ratio = num_train_timesteps // steps
        return [float(i * ratio + steps_offset) for i in reversed(range(steps))]
    if scheduler == "dpm++":  # "linspace", rounded to integers, the last (t=0) point dropped
        points = np.linspace(0, num_train_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        return [float(t) for t in points]
    if scheduler == "euler":  # "linspace" in float32
        return [float(t) for t in np.linspace(0, num_train_timesteps - 1, steps, dtype=np.float32)[::-1]]
    raise ValueError(f"unknown scheduler {scheduler!r}; known: ddim, ddpm, dpm++, euler")
