"""The diffusion training objective and the per-family conditioning of `dit_cache.finetune`.

Objective: ``x_t = DDPMScheduler.add_noise(x_0, eps, t)`` with ``t`` uniform over the scheduler's
``num_train_timesteps``; the model predicts ``eps`` (``prediction_type="epsilon"``),
``scheduler.get_velocity(x_0, eps, t)`` (``"v_prediction"``) or ``x_0`` (``"sample"``); the loss
is the mean squared error in float32. A model with learned sigma (output channels = 2 x input
channels: DiT-XL/2, Latte, Hunyuan-DiT) is trained on the first half of its output only: the
variational-bound term that trains the variance half in the DiT recipe is *not* trained here, so
sample with a fixed-variance scheduler (every diffusers pipeline of these models drops the
variance half anyway).

Conditioning (built by each family's `FamilySpec.finetune_conditioning`, adapters/<family>.py;
with classifier-free-guidance dropout: each sample's condition is replaced by the null
condition with probability ``cond_dropout``):

* DiT: ``class_labels``; the null class is ``config.num_embeds_ada_norm`` (the row DiTPipeline
  uses for the unconditional branch). Labels come from the data's class names when they are
  integers ("207"), else from the pipeline's ``labels`` (ImageNet names), else the sorted order.
* Latte / Hunyuan-DiT with their pipeline: captions (or class names) encoded once per unique
  caption with the pipeline's own tokenizers / text encoders, exactly as the pipeline encodes a
  batch of prompts; the null condition is the pipeline's embedding of the empty negative prompt.
* Latte without text encoder (a bare model, e.g. the pixel-space MNIST zoo): the label is given
  through ``encoder_hidden_states`` as one token, :func:`class_tokens` (one-hot in
  ``caption_channels``); the null condition is the zero token.
"""
from __future__ import annotations

import torch

from ..adapters.family import Conditioning, class_tokens, family_spec

__all__ = [
    "DEFAULT_NOISE_CONFIG", "PREDICTION_TYPES", "training_scheduler", "DiffusionObjective",
    "Conditioning", "class_tokens", "build_conditioning", "timestep_for_model",
]

#: the DiT schedule (1000 linear betas 1e-4..0.02, epsilon), unclipped
DEFAULT_NOISE_CONFIG = dict(family_spec("dit").noise_config, clip_sample=False)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def training_scheduler(source=None, **overrides):
    """A ``DDPMScheduler`` holding the training noise schedule of ``source``: a scheduler, a
    pipeline (its ``.scheduler``), a config dict, a path to a scheduler folder / json, or None
    (the DiT schedule: 1000 linear betas 1e-4..0.02, epsilon). ``overrides`` (e.g.
    ``prediction_type="v_prediction"``, ``beta_schedule="squaredcos_cap_v2"``) replace config keys."""
    from diffusers import DDPMScheduler

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if source is None:
        config = dict(DEFAULT_NOISE_CONFIG)
    elif hasattr(source, "scheduler") and hasattr(source.scheduler, "config"):
        config = dict(source.scheduler.config)
    elif hasattr(source, "config"):
        config = dict(source.config)
    elif isinstance(source, dict):
        config = dict(source)
    else:
        import os

        path = os.fspath(source)
        config = dict(DDPMScheduler.load_config(path))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(overrides)
    scheduler = DDPMScheduler.from_config(config)
    if scheduler.config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type {scheduler.config.prediction_type!r} is not trainable here; use one of {PREDICTION_TYPES}"
        )
    return scheduler


class DiffusionObjective:
    """Noising and targets for one scheduler config (see the module docstring)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.prediction_type

    def draw(self, x0: torch.Tensor, generator: torch.Generator):
        """(noisy x_t, integer timesteps t, target) for clean samples x0 (on CPU, float32)."""
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        noisy = self.scheduler.add_noise(x0, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, t)
        else:
            target = x0
        return noisy, t, target

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = target.shape[1]
        if pred.shape[1] == 2 * c:  # learned sigma: the variance half is not trained (no VLB term)
            pred = pred[:, :c]
        elif pred.shape[1] != c:
            raise ValueError(f"model outputs {pred.shape[1]} channels for {c}-channel inputs")
        return torch.nn.functional.mse_loss(pred.float(), target.float())


# ----------------------------------------------------------------------------------------
# Conditioning: each family's spec builds it (adapters/<family>.py)
# ----------------------------------------------------------------------------------------


def build_conditioning(family: str, model, dataset, pipe, *, latent_hw, vae_scale: int, device, warn) -> Conditioning:
    return family_spec(family).finetune_conditioning(model, dataset, pipe, latent_hw=latent_hw, vae_scale=vae_scale,
                                                     device=device, warn=warn)


def timestep_for_model(family: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The timesteps as the family's pipeline passes them (DiT / Latte integers, Hunyuan floats)."""
    return family_spec(family).finetune_timestep(t, dtype)
