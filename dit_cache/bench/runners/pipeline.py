"""A runner that calls the model's diffusers pipeline (the tiny built-ins, a pipeline folder)."""
from __future__ import annotations

import torch
from torch import nn

from .base import Runner, RunSettings, model_geometry


class PipelineRunner(Runner):
    kind = "pipeline"

    def __init__(self, label: str, pipe, family: str, settings: RunSettings):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.patch_target = pipe
        patch, native, video_length = model_geometry(family, self.transformer)
        super().__init__(label, family, settings, native, video_length)
        self.scheduler = pipe.scheduler

    def modules(self) -> list[nn.Module]:
        return [m for m in self.pipe.components.values() if isinstance(m, nn.Module)]

    def prepare(self, seed: int) -> dict:
        from ...testing import PROMPTS

        b = self.s.batch
        kwargs = self.spec.pipeline_kwargs(
            labels=self.spec.bench_labels(self.transformer.config, seed, b),
            prompts=[PROMPTS[(seed + i) % len(PROMPTS)] for i in range(b)],
            resolution=self.resolution,
            frames=self.frames,
        )
        return dict(kwargs, num_inference_steps=self.s.steps, **self.spec.pipeline_guidance(self.cfg_scale),
                    generator=torch.Generator().manual_seed(seed))

    def generate(self, prepared: dict, steps: int | None = None) -> torch.Tensor:
        from ...testing import run_pipeline

        seed = prepared["generator"].initial_seed()
        if steps is not None:
            prepared = {**prepared, "num_inference_steps": steps, "generator": torch.Generator().manual_seed(seed)}
        return self.spec.pipeline_latents(run_pipeline(self.pipe, prepared, seed=seed, return_latents=True),
                                          self.resolution)
