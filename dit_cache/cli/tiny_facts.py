"""What `ditcache schedule` needs of each tiny model (dit_cache.testing) to resolve a preset and
list its timesteps, so it answers without importing torch or building the model. Every entry
is checked against the built model, its adapter and its schedulers by
tests/test_first_hour.py, together with the pattern this gives for every preset."""
from __future__ import annotations

from dataclasses import dataclass

from .._common.skip_defaults import SkipCacheDefaults
from .._common.timesteps import builtin_timesteps
from ..methods import PABConfig, SkipCacheConfig


@dataclass(frozen=True)
class TinyFacts:
    family: str
    units: int  # adapter.units(model)
    max_shallow: int  # adapter.max_shallow(model)
    kinds: frozenset  # the reuse sites' kinds
    defaults: SkipCacheDefaults  # adapter.defaults
    num_train_timesteps: int = 1000
    steps_offset: int = 0  # the family's noise config (Hunyuan-DiT's: 1)
    schedulers: tuple = ("ddim", "ddpm", "dpm++", "euler")  # the family's kinds, default first
    shift: float = 1.0  # flow-euler: the scheduler's static shift
    mu: float | None = None  # flow-euler with dynamic shifting: FluxPipeline's mu at the tiny resolution

    @property
    def default_scheduler(self) -> str:
        return self.schedulers[0]


_ATTN_MLP = frozenset({"spatial", "mlp"})


def _flux_mu(image_tokens: int, base=(256, 0.5), top=(4096, 1.15)) -> float:
    """diffusers' `calculate_shift` with FLUX.1's scheduler config, in the same float steps."""
    m = (top[1] - base[1]) / (top[0] - base[0])
    return image_tokens * m + (base[1] - m * base[0])
TINY_FACTS = {
    "tiny-dit": TinyFacts("dit", 6, 2, _ATTN_MLP, SkipCacheDefaults(interval=2, shallow=4, start=1000.0, close=20.0)),
    "tiny-latte": TinyFacts("latte", 4, 1, _ATTN_MLP | {"temporal", "cross"},
                            SkipCacheDefaults(interval=2, shallow=1, start=700.0, close=50.0)),
    "tiny-hunyuan": TinyFacts("hunyuan", 6, 2, _ATTN_MLP | {"cross"},
                              SkipCacheDefaults(interval=2, shallow=1, start=700.0, close=50.0, reference_units=40),
                              steps_offset=1),
    "tiny-pixart": TinyFacts("pixart", 6, 2, _ATTN_MLP | {"cross"},
                             SkipCacheDefaults(interval=2, shallow=4, start=1000.0, close=20.0)),
    "tiny-wan": TinyFacts("wan", 6, 2, _ATTN_MLP | {"cross"},
                          SkipCacheDefaults(interval=2, shallow=4, start=900.0, close=50.0), schedulers=("flow-euler",),
                          shift=3.0),
    "tiny-sd3": TinyFacts("sd3", 6, 2, _ATTN_MLP, SkipCacheDefaults(interval=2, shallow=4, start=1000.0, close=150.0),
                          schedulers=("flow-euler",), shift=3.0),
    # FluxPipeline shifts by the image's token count: 64 tokens at 128 px
    "tiny-flux": TinyFacts("flux", 6, 2, _ATTN_MLP | {"fused"}, SkipCacheDefaults(interval=2, shallow=4, start=920.0, close=200.0),
                           schedulers=("flow-euler",), mu=_flux_mu(64)),
}

#: the real-size architecture configs (random weights; meta device for the large ones), in the
#: order the CLI lists them: the names of dit_cache.testing.MODEL_CONFIGS, repeated here so that
#: `ditcache --help` imports no torch (tests/test_first_hour.py keeps the two in step)
REAL_SIZE_MODELS = ("dit-s-2", "dit-xl-2", "latte-1", "hunyuan-dit", "pixart-sigma", "sd3.5-medium", "flux.1-dev",
                    "wan2.1-1.3b")

#: config type -> how it resolves against a backbone (looked up along the MRO; others: as given),
#: the torch-free twin of each method's `resolve_config`
_RESOLVE = {
    SkipCacheConfig: lambda config, facts: config.resolve(facts.defaults, facts.max_shallow, facts.units),
    PABConfig: lambda config, facts: config.for_kinds(facts.kinds),
}


def tiny_pattern(config, model: str, scheduler: str, steps: int) -> str:
    """The F/c pattern of `config` on tiny model `model` for `steps` steps of `scheduler`."""
    facts = TINY_FACTS[model]
    if scheduler not in facts.schedulers:
        raise ValueError(f"{model} samples with {', '.join(facts.schedulers)}, not {scheduler!r}")
    timesteps = builtin_timesteps(scheduler, steps, facts.num_train_timesteps, facts.steps_offset, facts.shift, facts.mu)
    resolve = next((_RESOLVE[c] for c in type(config).__mro__ if c in _RESOLVE), lambda c, f: c)
    config = resolve(config, facts)
    pattern = getattr(config, "pattern", None)
    return pattern(timesteps) if pattern is not None else "F" * len(timesteps)


__all__ = ["REAL_SIZE_MODELS", "TINY_FACTS", "TinyFacts", "tiny_pattern"]
