"""The runner interface and what every runner shares: settings, geometry checks, seeding.

A runner holds one model ready to generate: ``prepare(seed)`` builds everything one
generation needs (noise, conditioning) outside the timed region; ``generate(prepared)`` runs
one whole generation and returns the final latents. Family differences come from the model's
`FamilySpec` (``runner.spec``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...adapters.family import FamilySpec, family_spec
from ..._common.options import parse_dtype
from ..errors import BenchInputError

VAE_FACTOR = 8  # every supported pipeline hard-codes an 8x VAE


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return parse_dtype(dtype, BenchInputError)


@dataclass
class RunSettings:
    steps: int = 20
    scheduler: str | None = None  # None: ddim (built-ins), the pipeline's own (pipeline dirs)
    resolution: int | None = None  # pixels; None: the model's native resolution
    frames: int | None = None  # video models; None: the model's video_length
    batch: int = 1
    cfg_scale: float | None = None  # None: the family default; <= 1 turns CFG off
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    loop: bool = False  # drive the bare transformer even when a pipeline exists


class Runner:
    kind = "?"
    vae_factor = VAE_FACTOR  # pixels per latent pixel (1: a pixel-space model)
    adapter_fusion: str | None = None  # set when the model's function includes trained long-skip adapters
    spec: FamilySpec
    family: str
    transformer: nn.Module
    patch_target: Any
    scheduler: Any

    def __init__(self, label: str, family: str, settings: RunSettings, native_resolution: int, video_length: int | None):
        self.label, self.s = label, settings
        self.spec = family_spec(family)
        self.family = self.spec.name
        self.resolution = settings.resolution or native_resolution
        self.video_length = video_length
        if settings.frames is not None:
            self.frames = settings.frames
        else:  # a video model with a free length (Wan's RoPE) takes its family's default
            self.frames = video_length if video_length is not None or not self.spec.is_video else self.spec.default_frames
        default_cfg = self.spec.default_cfg_scale
        self.cfg_scale = default_cfg if settings.cfg_scale is None else float(settings.cfg_scale)
        self.cfg = self.cfg_scale > 1.0

    # -- interface ---------------------------------------------------------------------------
    def prepare(self, seed: int) -> Any:
        raise NotImplementedError

    def generate(self, prepared: Any, steps: int | None = None) -> torch.Tensor:
        """One whole generation; `steps` overrides the step count (used to prime a method)."""
        raise NotImplementedError

    def prime(self, prepared: Any) -> None:
        """A two-step generation (a full and, for most methods, a cached step): what a method
        builds on its first calls after being installed (Skip-Cache folds its adapter weights,
        caches and the allocator get their memory) is then not timed. A config made for one step
        count (a per-step plan: its `num_inference_steps`) is primed with a whole generation."""
        from ...runtime.patch_state import get_state

        state = get_state(self.transformer)
        pinned = state is not None and getattr(state.config, "num_inference_steps", None) is not None
        self.generate(prepared, steps=None if pinned else min(2, self.s.steps))

    def modules(self) -> list[nn.Module]:
        return [self.transformer]

    def install_dit_cache(self, name: str, options: dict) -> None:
        """Install the dit-cache preset `name` with `options` on the model."""
        from ...api import patch

        patch(self.patch_target, name, **options)

    def quality(self, outputs: dict[int, torch.Tensor]) -> dict:
        """Extra quality figures of a method's outputs (per seed); zoo models add FID-MNIST."""
        return {}

    def timesteps(self) -> list[float]:
        sched = copy.deepcopy(self.scheduler)
        self.spec.set_timesteps(sched, self.s.steps, resolution=self.resolution)
        return [float(t) for t in sched.timesteps]

    def latent_tokens(self) -> int:
        """Tokens of one sample's hidden state in the transformer (all frames of a video)."""
        side = self.resolution // self.vae_factor // self.spec.spatial_patch(self.transformer.config)
        return side * side * (self.frames if self.spec.is_video else 1)

    def describe(self) -> dict:
        return {
            "model": self.label,
            "family": self.family,
            "transformer_class": type(self.transformer).__name__,
            "params": sum(p.numel() for p in self.transformer.parameters()),
            "runner": self.kind,
            "scheduler": type(self.scheduler).__name__,
            "steps": self.s.steps,
            "resolution": self.resolution,
            "latent_size": self.resolution // self.vae_factor,
            "frames": self.frames if self.spec.is_video else None,
            "batch": self.s.batch,
            "cfg_scale": self.cfg_scale,
            "cfg": self.cfg,
            "dtype": str(self.s.dtype).replace("torch.", ""),
            "device": str(self.s.device),
        }

    def seeded_rng(self, seed: int) -> "SeededRng":
        """Seeded global RNG (DiTPipeline draws DDPM noise from it) without leaking state."""
        devices = [torch.device(self.s.device)] if torch.device(self.s.device).type == "cuda" else []
        return SeededRng(seed, devices)


class SeededRng:
    """Context manager: the global torch RNG seeded with `seed`, restored on exit."""

    def __init__(self, seed: int, devices: list):
        self.seed, self.fork = seed, torch.random.fork_rng(devices=devices)

    def __enter__(self):
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)


def check_geometry(family: str, patch: int, settings: RunSettings, native_res: int, video_length: int | None,
                   factor: int = VAE_FACTOR) -> None:
    """BenchInputError unless the settings fit this model (resolution, frames, counts)."""
    res = settings.resolution
    if res is not None:
        step = factor * patch
        if res <= 0 or res % step:
            why = f"{factor}x VAE x patch size {patch}" if factor > 1 else f"patch size {patch}, pixel space"
            raise BenchInputError(
                f"--resolution {res} is impossible for this {family} model: it must be a positive "
                f"multiple of {step} px ({why}); native is {native_res} px"
            )
    if settings.frames is not None:
        if not family_spec(family).is_video:
            raise BenchInputError(f"--frames applies to video models (Latte, Wan) only; this is a {family} model")
        if video_length is not None and settings.frames not in (1, video_length):
            raise BenchInputError(
                f"--frames {settings.frames} is impossible for this Latte model: its temporal position "
                f"embedding has video_length={video_length} frames, so use {video_length} (or 1)"
            )
    if settings.batch < 1:
        raise BenchInputError(f"--batch must be >= 1, got {settings.batch}")
    if settings.steps < 1:
        raise BenchInputError(f"--steps must be >= 1, got {settings.steps}")
    if settings.cfg_scale is not None and settings.cfg_scale < 0:
        raise BenchInputError(f"--cfg-scale must be >= 0, got {settings.cfg_scale}")


def model_geometry(family: str, transformer: nn.Module, factor: int = VAE_FACTOR) -> tuple[int, int, int | None]:
    """(patch size, native resolution in pixels, video length or None) of a transformer."""
    spec = family_spec(family)
    return spec.spatial_patch(transformer.config), spec.native_resolution(transformer.config, factor), spec.video_length(transformer.config)


def eval_cast(module: nn.Module, settings: RunSettings) -> nn.Module:
    module.eval().requires_grad_(False)
    if settings.dtype != torch.float32 or torch.device(settings.device).type != "cpu":
        nn.Module.to(module, device=settings.device, dtype=settings.dtype)
    return module


def scheduler_for(name: str | None, family: str, fallback=None):
    """The `name` scheduler (the family's default if None, or `fallback` when given) for a family's model."""
    from ...testing import build_scheduler

    if name is None and fallback is not None:
        return fallback
    try:
        return build_scheduler(name, family)
    except ValueError as err:
        raise BenchInputError(str(err)) from None
