"""The timesteps of the built-in schedulers (`--scheduler ddim|ddpm|dpm++|euler`, as
dit_cache.testing builds them) for n inference steps, without torch or diffusers.

Deliberately not diffusers: importing it (and torch) takes ~4 s, and `ditcache schedule` must
answer in well under that. These are diffusers' `set_timesteps` rules for the spacing each
built-in scheduler uses; tests/test_first_hour.py checks them against diffusers for every step
count from 1 to the number of training steps, on every family's noise config."""
from __future__ import annotations

import math

import numpy as np


def builtin_timesteps(scheduler: str, steps: int, num_train_timesteps: int = 1000, steps_offset: int = 0,
                      shift: float = 1.0, mu: float | None = None) -> list[float]:
    """The timesteps `scheduler` visits in `steps` steps (1 <= steps <= num_train_timesteps).
    flow-euler: `shift` is the scheduler's static shift; `mu` the dynamic one FluxPipeline
    computes from the image's token count (it then passes sigmas linspace(1, 1/steps))."""
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
    if scheduler == "flow-euler":
        return _flow_timesteps(steps, num_train_timesteps, shift, mu)
    raise ValueError(f"unknown scheduler {scheduler!r}; known: ddim, ddpm, dpm++, euler, flow-euler")


def _flow_timesteps(steps: int, n: int, shift: float, mu: float | None) -> list[float]:
    """FlowMatchEulerDiscreteScheduler.set_timesteps, with diffusers' float32 / float64 steps."""
    f32 = np.float32
    if mu is not None:  # use_dynamic_shifting: FluxPipeline's sigmas, exponential time shift
        sigmas = np.linspace(1.0, 1 / steps, steps).astype(f32)
        sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
    else:
        train = np.linspace(1, n, n, dtype=f32)[::-1] / f32(n)  # __init__: float32, shifted once
        train = f32(shift) * train / (1 + (f32(shift) - 1) * train)
        sigma_max, sigma_min = float(train[0]), float(train[-1])
        sigmas = np.linspace(sigma_max * n, sigma_min * n, steps) / n  # float64 from here
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return [float(x) for x in sigmas.astype(f32) * f32(n)]
