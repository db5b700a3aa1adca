"""A user's own sampling loop over a bare model, for tests that need a loop that really caches."""
from __future__ import annotations

import torch

import dit_cache
from dit_cache.testing import build_scheduler, family_of, transformer_inputs
from helpers import model_t, set_family_timesteps

#: One method of each kind, and `patch_caching`, which makes Skip-Cache cache from the first
#: steps on (its default keeps t >= start full): so that a short loop really caches.
CACHING_METHODS = ("skip-dit", "fora-2", "pab-236")


def patch_caching(model, method: str):
    # Skip-Cache from the first steps on, PAB over every timestep (flow-matching schedules spend
    # most short runs above PAB's default window)
    options = {"skip-dit": {"start": 1000.0}, "pab-236": {"window": (0.0, 1000.0)}}.get(method, {})
    return dit_cache.patch(model, method, **options)


class Loop:
    """A user's own DDIM loop over the bare model, one model call per step (batched CFG),
    steppable one step at a time so that two loops can be interleaved."""

    def __init__(self, model, name, steps, seed, dtype=torch.float32, grad=False):
        self.model, self.grad = model, grad
        self.kw = transformer_inputs(name, batch=2, seed=seed, transformer=model, dtype=dtype)
        self.sched = build_scheduler(None, family_of(name))
        set_family_timesteps(self.sched, name, steps)
        self.name = name
        self.x = self.kw.pop("hidden_states")
        self.timesteps = list(self.sched.timesteps)

    def step(self, i):
        t = self.timesteps[i]
        with torch.set_grad_enabled(self.grad):
            tt = torch.full_like(self.kw["timestep"], model_t(self.name, float(t)))
            out = self.model(hidden_states=self.x, **dict(self.kw, timestep=tt))[0]
        self.x = self.sched.step(out[:, : self.x.shape[1]], t, self.x).prev_sample
        return self.x

    def run(self):
        for i in range(len(self.timesteps)):
            self.step(i)
        return self.x
