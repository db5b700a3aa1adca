"""What a benchmark runs: a diffusers pipeline, or the bare transformer in a sampling loop.

`load_runner` resolves ``--model`` (a built-in name from `dit_cache.testing.models.MODEL_CONFIGS` or a
local diffusers directory, pipeline or transformer) into a runner with:

- ``prepare(seed)``: everything one generation needs (noise, conditioning), built outside the
  timed region;
- ``generate(prepared)``: one whole generation, returning the final latents.

Models with a pipeline (the tiny built-ins, a pipeline directory) run that pipeline; the others
(real-size architectures with random weights, a transformer directory, or any model with
``loop=True``) run :class:`TransformerRunner`, which reproduces the family's pipeline loop with
classifier-free guidance batched exactly as the pipeline batches it: DiT ``[cond, null]`` (and
the DiT pipeline steps the scheduler on the doubled batch), Latte and Hunyuan-DiT
``[uncond, cond]``. Conditioning comes from seeded random tensors shaped like the text
encoders' outputs (no text encoder is needed). Fidelity is always measured on final latents.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..specs import BenchInputError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_TRANSFORMER_CLASSES = {
    "DiTTransformer2DModel": "dit",
    "LatteTransformer3DModel": "latte",
    "HunyuanDiT2DModel": "hunyuan",
}
_PIPELINE_CLASSES = {"DiTPipeline": "dit", "LattePipeline": "latte", "HunyuanDiTPipeline": "hunyuan"}
VAE_FACTOR = 8  # every supported pipeline hard-codes an 8x VAE
LATTE_TEXT_LEN = 120  # LattePipeline's max_sequence_length
_PROMPTS = (
    "a photo of a red cat sitting on a tree",
    "a painting of a small boat on the sea at sunset",
    "a video of a dog running on the beach",
    "a blue bird flying over a green field",
)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise BenchInputError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16") from None


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
    family: str
    transformer: nn.Module
    patch_target: Any
    scheduler: Any

    def __init__(self, label: str, family: str, settings: RunSettings, native_resolution: int, video_length: int | None):
        self.label, self.family, self.s = label, family, settings
        self.resolution = settings.resolution or native_resolution
        self.video_length = video_length
        self.frames = settings.frames if settings.frames is not None else video_length
        default_cfg = {"dit": 4.0, "latte": 7.5, "hunyuan": 5.0}[family]
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
        caches and the allocator get their memory) is then not timed."""
        self.generate(prepared, steps=min(2, self.s.steps))

    def modules(self) -> list[nn.Module]:
        return [self.transformer]

    def install_dit_cache(self, name: str, options: dict) -> None:
        """Install the dit-cache preset `name` with `options` on the model."""
        from ... import patch

        patch(self.patch_target, name, **options)

    def quality(self, outputs: dict[int, torch.Tensor]) -> dict:
        """Extra quality figures of a method's outputs (per seed); zoo models add FID-MNIST."""
        return {}

    def timesteps(self) -> list[float]:
        sched = copy.deepcopy(self.scheduler)
        sched.set_timesteps(self.s.steps)
        return [float(t) for t in sched.timesteps]

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
            "frames": self.frames if self.family == "latte" else None,
            "batch": self.s.batch,
            "cfg_scale": self.cfg_scale,
            "cfg": self.cfg,
            "dtype": str(self.s.dtype).replace("torch.", ""),
            "device": str(self.s.device),
        }

    # -- helpers -----------------------------------------------------------------------------
    def _rng_generation(self, seed: int):
        """Seeded global RNG (DiTPipeline draws DDPM noise from it) without leaking state."""
        devices = [torch.device(self.s.device)] if torch.device(self.s.device).type == "cuda" else []
        return _SeededRng(seed, devices)


class _SeededRng:
    def __init__(self, seed: int, devices: list):
        self.seed, self.fork = seed, torch.random.fork_rng(devices=devices)

    def __enter__(self):
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)


def _check_geometry(family: str, patch: int, settings: RunSettings, native_res: int, video_length: int | None,
                    factor: int = VAE_FACTOR):
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
        if family != "latte":
            raise BenchInputError(f"--frames applies to video models (Latte) only; this is a {family} model")
        if settings.frames not in (1, video_length):
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


def _family_geometry(family: str, transformer: nn.Module, factor: int = VAE_FACTOR) -> tuple[int, int, int | None]:
    cfg = transformer.config
    native = int(cfg.sample_size) * factor
    return int(cfg.patch_size), native, (int(cfg.video_length) if family == "latte" else None)


# ------------------------------------------------------------------------------------------
# Pipeline runner
# ------------------------------------------------------------------------------------------


class PipelineRunner(Runner):
    kind = "pipeline"

    def __init__(self, label: str, pipe, family: str, settings: RunSettings):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.patch_target = pipe
        patch, native, video_length = _family_geometry(family, self.transformer)
        super().__init__(label, family, settings, native, video_length)
        self.scheduler = pipe.scheduler

    def modules(self) -> list[nn.Module]:
        return [m for m in self.pipe.components.values() if isinstance(m, nn.Module)]

    def prepare(self, seed: int) -> dict:
        b, gs = self.s.batch, self.cfg_scale
        common = dict(num_inference_steps=self.s.steps, guidance_scale=gs, generator=torch.Generator().manual_seed(seed))
        if self.family == "dit":
            n = int(self.transformer.config.num_embeds_ada_norm or 1000)
            return dict(class_labels=[(seed * 97 + i) % n for i in range(b)], output_type="pt", **common)
        prompts = [_PROMPTS[(seed + i) % len(_PROMPTS)] for i in range(b)]
        size = dict(height=self.resolution, width=self.resolution, output_type="latent")
        if self.family == "latte":
            return dict(prompt=prompts, negative_prompt="", video_length=self.frames, clean_caption=False, **size, **common)
        return dict(prompt=prompts, use_resolution_binning=False, **size, **common)

    def generate(self, prepared: dict, steps: int | None = None) -> torch.Tensor:
        from ...testing.models import run_pipeline

        seed = prepared["generator"].initial_seed()
        if steps is not None:
            prepared = {**prepared, "num_inference_steps": steps, "generator": torch.Generator().manual_seed(seed)}
        return run_pipeline(self.pipe, prepared, seed=seed, return_latents=True)


# ------------------------------------------------------------------------------------------
# Transformer loop runner
# ------------------------------------------------------------------------------------------


class TransformerRunner(Runner):
    kind = "transformer-loop"

    def __init__(self, label: str, transformer: nn.Module, family: str, scheduler, settings: RunSettings):
        self.transformer = transformer
        self.patch_target = transformer
        self.scheduler = scheduler
        patch, native, video_length = _family_geometry(family, transformer, self.vae_factor)
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
        cfg = self.transformer.config
        dev, dtype = self.s.device, self.s.dtype
        b = self.s.batch
        nb = 2 * b if self.cfg else b
        s = self.resolution // self.vae_factor
        g = torch.Generator().manual_seed(seed)
        c = int(cfg.in_channels)
        shape = (b, c, self.frames, s, s) if self.family == "latte" else (b, c, s, s)
        noise = torch.randn(shape, generator=g).to(device=dev, dtype=dtype)
        gc = torch.Generator().manual_seed(10_000 + seed)  # conditioning: independent stream

        def randn(*shape_):
            return torch.randn(*shape_, generator=gc).to(device=dev, dtype=dtype)

        if self.family == "dit":
            n = int(cfg.num_embeds_ada_norm or 1000)
            labels = torch.tensor([(seed * 97 + i) % n for i in range(b)], device=dev)
            if self.cfg:
                labels = torch.cat([labels, torch.full((b,), n, device=dev, dtype=labels.dtype)])
            cond = dict(class_labels=labels)
        elif self.family == "latte":
            cond = dict(
                encoder_hidden_states=randn(nb, LATTE_TEXT_LEN, int(cfg.caption_channels)),
                enable_temporal_attentions=self.frames > 1,
            )
        else:
            from ...testing.models import hunyuan_rotary_emb

            def mask(length):
                m = torch.zeros(nb, length, dtype=torch.long)
                for i in range(nb):
                    m[i, : 3 + int(torch.randint(0, 8, (1,), generator=gc))] = 1
                return m.to(dev)

            res = self.resolution
            cond = dict(
                encoder_hidden_states=randn(nb, int(cfg.text_len), int(cfg.cross_attention_dim)),
                text_embedding_mask=mask(int(cfg.text_len)),
                encoder_hidden_states_t5=randn(nb, int(cfg.text_len_t5), int(cfg.cross_attention_dim_t5)),
                text_embedding_mask_t5=mask(int(cfg.text_len_t5)),
                image_meta_size=torch.tensor([[1024, 1024, res, res, 0, 0]] * nb, dtype=dtype, device=dev),
                style=torch.zeros(nb, dtype=torch.long, device=dev),
                image_rotary_emb=hunyuan_rotary_emb(self.transformer, s, s, device=dev),
            )
        return dict(seed=seed, noise=noise, cond=cond)

    @torch.no_grad()
    def generate(self, prepared: dict, steps: int | None = None) -> torch.Tensor:
        seed, cond = prepared["seed"], prepared["cond"]
        sched = self.scheduler
        sched.set_timesteps(steps or self.s.steps)
        with self._rng_generation(seed):
            if self.family == "dit":
                return self._dit_loop(prepared["noise"], cond, sched)
            gen = torch.Generator(device=self.s.device).manual_seed(seed)
            latents = prepared["noise"] * sched.init_noise_sigma
            extra = self._extra_step_kwargs(gen)
            for t in sched.timesteps:
                x = torch.cat([latents] * 2) if self.cfg else latents
                x = sched.scale_model_input(x, t)
                if self.family == "latte":
                    tt = t[None].to(x.device) if torch.is_tensor(t) else torch.tensor([t], device=x.device)
                    out = self.transformer(
                        hidden_states=x, timestep=tt.expand(x.shape[0]), return_dict=False, **cond
                    )[0]
                else:
                    tt = torch.tensor([float(t)] * x.shape[0], device=x.device).to(dtype=x.dtype)
                    out = self.transformer(x, tt, return_dict=False, **cond)[0]
                if self.family == "hunyuan":
                    out, _ = out.chunk(2, dim=1)
                if self.cfg:
                    uncond, text = out.chunk(2)
                    out = uncond + self.cfg_scale * (text - uncond)
                if self.family == "latte" and getattr(sched.config, "variance_type", None) not in ("learned", "learned_range"):
                    out = out.chunk(2, dim=1)[0]
                latents = sched.step(out, t, latents, **extra, return_dict=False)[0]
            return latents

    def _dit_loop(self, latents: torch.Tensor, cond: dict, sched) -> torch.Tensor:
        """DiTPipeline.__call__'s loop, line for line (minus the VAE)."""
        channels = int(self.transformer.config.in_channels)
        x = torch.cat([latents] * 2) if self.cfg else latents
        labels = cond["class_labels"]
        for t in sched.timesteps:
            if self.cfg:
                half = x[: len(x) // 2]
                x = torch.cat([half, half], dim=0)
            x = sched.scale_model_input(x, t)
            tt = t[None].to(x.device) if torch.is_tensor(t) and t.dim() == 0 else torch.as_tensor([t], device=x.device)
            noise_pred = self.transformer(x, timestep=tt.expand(x.shape[0]), class_labels=labels).sample
            if self.cfg:
                eps, rest = noise_pred[:, :channels], noise_pred[:, channels:]
                cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
                half_eps = uncond_eps + self.cfg_scale * (cond_eps - uncond_eps)
                eps = torch.cat([half_eps, half_eps], dim=0)
                noise_pred = torch.cat([eps, rest], dim=1)
            if int(self.transformer.config.out_channels) // 2 == channels:
                model_output, _ = torch.split(noise_pred, channels, dim=1)
            else:
                model_output = noise_pred
            x = sched.step(model_output, t, x).prev_sample
        return x.chunk(2, dim=0)[0] if self.cfg else x


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def _eval_cast(module: nn.Module, settings: RunSettings) -> nn.Module:
    module.eval().requires_grad_(False)
    if settings.dtype != torch.float32 or torch.device(settings.device).type != "cpu":
        nn.Module.to(module, device=settings.device, dtype=settings.dtype)
    return module


def _scheduler_for(name: str | None, family: str, fallback=None):
    from ...testing.models import build_scheduler

    if name is None and fallback is not None:
        return fallback
    try:
        return build_scheduler(name or "ddim", family)
    except ValueError as err:
        raise BenchInputError(str(err)) from None


def _load_builtin(name: str, s: RunSettings) -> Runner:
    from ...testing.models import MODEL_CONFIGS, build_pipeline, build_transformer

    cfg = MODEL_CONFIGS[name]
    fam = cfg["family"]
    tc = cfg["transformer"]
    native = int(tc["sample_size"]) * VAE_FACTOR
    _check_geometry(fam, int(tc["patch_size"]), s, native, tc.get("video_length"))
    use_pipeline = cfg["tiny"] and not s.loop
    if use_pipeline and fam == "dit" and s.resolution not in (None, native):
        use_pipeline = False  # DiTPipeline always samples at the transformer's sample_size
    if use_pipeline:
        pipe = build_pipeline(name, seed=0, scheduler=s.scheduler or "ddim")
        for comp in pipe.components.values():
            if isinstance(comp, nn.Module):
                _eval_cast(comp, s)
        return PipelineRunner(name, pipe, fam, s)
    transformer = build_transformer(name, seed=0, dtype=s.dtype, device=s.device)
    return TransformerRunner(name, transformer, fam, _scheduler_for(s.scheduler, fam), s)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise BenchInputError(f"cannot read {path}: {err}") from None


def _load_directory(path: str, s: RunSettings) -> Runner:
    import diffusers

    label = os.path.basename(os.path.normpath(path)) or path
    if os.path.isfile(os.path.join(path, "model_index.json")):
        index = _read_json(os.path.join(path, "model_index.json"))
        cls_name = index.get("_class_name")
        if cls_name not in _PIPELINE_CLASSES:
            # not a supported pipeline: still usable when it has a supported transformer
            if os.path.isfile(os.path.join(path, "transformer", "config.json")):
                return _load_transformer_dir(os.path.join(path, "transformer"), label, s)
            raise BenchInputError(
                f"{path} holds a {cls_name or 'unknown'} pipeline; supported: {', '.join(_PIPELINE_CLASSES)}"
            )
        fam = _PIPELINE_CLASSES[cls_name]
        try:
            with _no_hub_progress():
                pipe = getattr(diffusers, cls_name).from_pretrained(path, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any load failure is bad input here
            raise BenchInputError(f"cannot load the {cls_name} in {path}: {type(err).__name__}: {err}") from None
        tr = pipe.transformer
        patch, native, video_length = _family_geometry(fam, tr)
        _check_geometry(fam, patch, s, native, video_length)
        for comp in pipe.components.values():
            if isinstance(comp, nn.Module):
                _eval_cast(comp, s)
        if s.scheduler is not None:
            pipe.scheduler = _scheduler_for(s.scheduler, fam)
        pipe.set_progress_bar_config(disable=True)
        if s.loop or (fam == "dit" and s.resolution not in (None, native)):
            return TransformerRunner(label, tr, fam, _scheduler_for(s.scheduler, fam, fallback=pipe.scheduler), s)
        return PipelineRunner(label, pipe, fam, s)
    if os.path.isfile(os.path.join(path, "config.json")):
        return _load_transformer_dir(path, label, s)
    if os.path.isfile(os.path.join(path, "transformer", "config.json")):
        return _load_transformer_dir(os.path.join(path, "transformer"), label, s)
    raise BenchInputError(
        f"{path} is not a diffusers model directory: no model_index.json (pipeline) or config.json "
        "(transformer) found"
    )


class _no_hub_progress:
    """diffusers' "Loading pipeline components" bar would interleave with the bench's own."""

    def __enter__(self):
        from diffusers.utils import logging as dlogging

        self.was = dlogging.is_progress_bar_enabled()
        dlogging.disable_progress_bar()

    def __exit__(self, *exc):
        from diffusers.utils import logging as dlogging

        if self.was:
            dlogging.enable_progress_bar()


def _load_transformer_dir(path: str, label: str, s: RunSettings) -> Runner:
    import diffusers

    cfg = _read_json(os.path.join(path, "config.json"))
    cls_name = cfg.get("_class_name")
    if cls_name not in _TRANSFORMER_CLASSES:
        raise BenchInputError(
            f"{path} holds a {cls_name or 'non-diffusers'} model; supported transformers: "
            f"{', '.join(_TRANSFORMER_CLASSES)}"
        )
    fam = _TRANSFORMER_CLASSES[cls_name]
    try:
        tr = getattr(diffusers, cls_name).from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise BenchInputError(f"cannot load the {cls_name} in {path}: {type(err).__name__}: {err}") from None
    patch, native, video_length = _family_geometry(fam, tr)
    _check_geometry(fam, patch, s, native, video_length)
    _eval_cast(tr, s)
    return TransformerRunner(label, tr, fam, _scheduler_for(s.scheduler, fam), s)


def check_model_name(model: str) -> None:
    """BenchInputError unless `model` names a built-in, a zoo model or an existing directory."""
    from ...testing.models import MODEL_CONFIGS
    from ...zoo import ZOO_MODELS

    if model in MODEL_CONFIGS or model in ZOO_MODELS or os.path.isdir(model):
        return
    if os.path.exists(model):
        raise BenchInputError(f"{model} is a file; --model takes a built-in name or a diffusers directory")
    raise BenchInputError(
        f"unknown model {model!r}: not a built-in name ({', '.join(MODEL_CONFIGS)}), not a zoo model "
        f"({', '.join(ZOO_MODELS)}) and no such directory"
    )


def load_runner(model: str, settings: RunSettings) -> Runner:
    """A runner for a built-in model name, a zoo model, or a local diffusers directory or
    `finetune` result folder (BenchInputError if none of these)."""
    from .zoo import is_finetune_dir, load_zoo_runner
    from ...testing.models import MODEL_CONFIGS
    from ...zoo import ZOO_MODELS

    check_model_name(model)
    if model in MODEL_CONFIGS:
        return _load_builtin(model, settings)
    if model in ZOO_MODELS or is_finetune_dir(model):
        return load_zoo_runner(model, settings)
    return _load_directory(model, settings)
