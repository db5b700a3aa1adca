"""A runner that drives the bare transformer through its family pipeline's sampling loop.

Used for models without a pipeline (real-size architectures with random weights, a transformer
folder) or with ``loop=True``. Classifier-free guidance is batched exactly as the pipeline
batches it (DiT ``[cond, null]``, and the DiT pipeline steps the scheduler on the doubled
batch; Latte and Hunyuan-DiT ``[uncond, cond]``): the loop itself is the family's
(`FamilySpec.denoise`). Conditioning comes from seeded random tensors shaped like the text
encoders' outputs (no text encoder is needed).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from ...runtime.tracker import meta_timesteps
from .base import Runner, RunSettings, model_geometry


class TransformerRunner(Runner):
    kind = "transformer-loop"

    def __init__(self, label: str, transformer: nn.Module, family: str, scheduler, settings: RunSettings):
        self.transformer = transformer
        self.patch_target = transformer
        self.scheduler = scheduler
        patch, native, video_length = model_geometry(family, transformer, self.vae_factor)
        super().__init__(label, family, settings, native, video_length)
        self._step_params = set(inspect.signature(scheduler.step).parameters)

    def _extra_step_kwargs(self, generator) -> dict:
        out = {}
        if "eta" in self._step_params:
            out["eta"] = 0.0
        if "generator" in self._step_params:
            out["generator"] = generator
        return out

    def prepare(self, seed: int) -> dict:
        dev, dtype, b = self.s.device, self.s.dtype, self.s.batch
        s = self.resolution // self.vae_factor
        g = torch.Generator().manual_seed(seed)
        shape = self.spec.latent_shape(b, int(self.transformer.config.in_channels), s, self.frames)
        noise = torch.randn(shape, generator=g).to(device=dev, dtype=dtype)
        gc = torch.Generator().manual_seed(10_000 + seed)  # conditioning: independent stream
        cond = self.spec.loop_conditioning(
            self.transformer, seed=seed, batch=b, cfg=self.cfg, frames=self.frames, resolution=self.resolution,
            latent_side=s, generator=gc, device=dev, dtype=dtype,
        )
        return dict(seed=seed, noise=noise, cond=cond)

    @torch.no_grad()
    def generate(self, prepared: dict, steps: int | None = None) -> torch.Tensor:
        seed = prepared["seed"]
        sched = self.scheduler
        self.spec.set_timesteps(sched, steps or self.s.steps, resolution=self.resolution)
        with self.seeded_rng(seed):
            # a meta run draws nothing that matters (no data): its step noise comes from the CPU
            gen_device = "cpu" if torch.device(self.s.device).type == "meta" else self.s.device
            gen = torch.Generator(device=gen_device).manual_seed(seed)
            return self.spec.denoise(
                self.transformer, prepared["noise"], prepared["cond"], sched,
                cfg_scale=self.cfg_scale if self.cfg else None, step_kwargs=self._extra_step_kwargs(gen),
                progress=meta_timesteps if gen_device != self.s.device else None,
            )
