"""Schedulers for a family's pipeline, on the family's training noise schedule.

:data:`SCHEDULERS` maps ``"ddim"``, ``"ddpm"``, ``"dpm++"``, ``"euler"`` to a factory
``factory(name_or_family, raw=False) -> scheduler``; the noise config is the family's
(`FamilySpec.noise_config`):

* dit:     1000 steps, linear betas 1e-4..0.02, epsilon prediction (facebook/DiT-XL-2-256)
* latte:   same betas (PixArt-alpha / Latte-1 use the DiT/ADM schedule), epsilon
* hunyuan: 1000 steps, scaled_linear betas 0.00085..0.03, ``steps_offset=1``,
  v-prediction (Tencent-Hunyuan/HunyuanDiT-Diffusers scheduler config)

A flow-matching family (SD3, FLUX, Wan) takes ``"flow-euler"`` only (FlowMatchEulerDiscreteScheduler
on the family's shift config), the others every other kind. All (family x scheduler) combinations run with the installed diffusers (0.42.1).
Latte and Hunyuan pipelines call ``scheduler.scale_model_input`` and multiply the initial
noise by ``init_noise_sigma``, so Euler is correct there. ``DiTPipeline`` does neither
correctly: it starts from N(0, 1) noise and passes the *scaled* model input to
``scheduler.step``; stock ``EulerDiscreteScheduler`` then samples the wrong trajectory (final
latents ~97 % off a reference Euler loop and nearly independent of the seed), so
``SCHEDULERS["euler"]("dit")`` returns ``DiTPipelineEulerScheduler`` (adapters/dit.py), which
makes DiTPipeline + Euler match a reference loop to float rounding; ``raw=True`` gives the stock
class. DDIM / DDPM / DPM++ have an identity ``scale_model_input`` and are unaffected.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from ..adapters.family import family_spec

from .._common.options import SCHEDULER_NAMES
from .builders import family_of

# scheduler name -> (diffusers class, its options besides the family's noise config)
_KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", dict(clip_sample=False)),
    "ddpm": ("DDPMScheduler", dict(clip_sample=False, variance_type="fixed_small")),
    "dpm++": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    "euler": ("EulerDiscreteScheduler", dict(timestep_spacing="linspace")),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),  # the flow-matching families' (SD3, FLUX, Wan)
}


def _make(kind: str, name_or_family: str, raw: bool = False):
    import diffusers

    class_name, options = _KINDS[kind]
    spec = family_spec(family_of(name_or_family))
    if kind not in spec.schedulers:
        raise ValueError(f"{name_or_family} ({spec.name}) samples with {', '.join(spec.schedulers)}, not {kind!r}: "
                         f"{'it is a flow-matching model' if 'flow-euler' in spec.schedulers else 'it is not a flow-matching model'}")
    return spec.scheduler(kind, getattr(diffusers, class_name), dict(spec.noise_config, **options), raw)


SCHEDULERS: dict[str, Callable[..., Any]] = {kind: functools.partial(_make, kind) for kind in _KINDS}
assert tuple(SCHEDULERS) == SCHEDULER_NAMES, "the scheduler names the options take and the ones built here"


def build_scheduler(scheduler: str | None, name_or_family: str, raw: bool = False):
    """``SCHEDULERS[scheduler](name_or_family, raw=raw)`` with a clear error for unknown names
    and for a kind the family does not sample with; None: the family's default.

    The result is meant for the family's diffusers pipeline. ``raw=True`` returns the
    stock diffusers class even where the pipeline needs an adapted one (only
    ``("euler", "dit")``) - use it for a hand-written sampling loop.
    """
    if scheduler is None:
        scheduler = family_spec(family_of(name_or_family)).default_scheduler
    try:
        factory = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; known: {list(SCHEDULERS)}") from None
    return factory(name_or_family, raw=raw)
