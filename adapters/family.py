"""The tooling-side description of a backbone family: `FamilySpec`.

`BackboneAdapter` (base.py) tells the runtime how a model's blocks are wired; a `FamilySpec`
tells the tooling (bench, finetuning, testing) everything else that differs between families:
its built-in model configs and noise schedule, how its diffusers pipeline is called, the
conditioning inputs of a bare-transformer sampling loop and of fine-tuning, and random inputs
for tests. Each family's spec lives in its adapter module, next to its adapter; to add a
backbone, write adapters/<x>.py with both and list the spec in `BUILTIN_FAMILIES`
(adapters/__init__.py), or call `register_family`. Heavy libraries (transformers) are imported
inside the methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .base import BackboneAdapter


def real_size(transformer: dict, *, reference: str | None = None, resolution: int, guidance_scale: float,
              num_frames: int | None = None) -> dict[str, Any]:
    """A `model_configs` entry of a real-size architecture (random weights; `reference` names
    the released checkpoint whose config it copies)."""
    entry = {"tiny": False, "transformer": transformer, "resolution": resolution, "num_frames": num_frames,
             "guidance_scale": guidance_scale}
    return {**entry, "reference": reference} if reference else entry


class FamilySpec:
    """One backbone family as the tooling sees it. Subclass it next to the family's adapter."""

    #: the family's runtime adapter class (its model class and family name come from it)
    adapter_class: type[BackboneAdapter]
    #: diffusers pipeline class name (the bench and the test builders use it)
    pipeline_class_name: str = ""
    #: False when the pipeline cannot return latents (DiTPipeline always decodes)
    pipeline_latent_output: bool = True
    #: False when the pipeline always samples at the transformer's native size (DiTPipeline)
    pipeline_sets_resolution: bool = True
    is_video: bool = False
    #: layout of the transformer input, as diffusers' FasterCache names it
    tensor_format: str = "BCHW"
    default_cfg_scale: float = 4.0
    #: regex of the spatial blocks for diffusers' PAB / FasterCache (None: their default)
    spatial_block_pattern: str | None = None
    #: the pipeline scales its noise by `init_noise_sigma` and the model input by
    #: `scale_model_input` (False: flow-matching pipelines, SD3 and FLUX, which do neither)
    scales_model_input: bool = True
    #: forward kwargs that carry the batched [uncond, cond] CFG halves (FasterCache splits them)
    cfg_batched_kwargs: tuple[str, ...] = ("hidden_states", "timestep")
    #: training noise schedule (diffusers scheduler config) of the family's reference models
    noise_config: dict[str, Any] = {}
    #: built-in model configs by name: "tiny" (bool), "transformer" (its config), and for tiny
    #: ones what the test pipeline needs ("vae", "resolution", "num_frames", "guidance_scale"...)
    model_configs: dict[str, dict[str, Any]] = {}

    @property
    def name(self) -> str:
        return self.adapter_class.family

    @property
    def transformer_class(self) -> type[nn.Module]:
        return self.adapter_class.model_class

    def video_length(self, config) -> int | None:
        """Frames of the model's temporal position embedding (None for an image model)."""
        return int(config.video_length) if self.is_video else None

    def latent_shape(self, batch: int, channels: int, side: int, frames: int | None) -> tuple[int, ...]:
        return (batch, channels, frames, side, side) if self.is_video else (batch, channels, side, side)

    #: latent frames of a video model whose temporal length is free (`video_length` None)
    default_frames: int = 3

    def spatial_patch(self, config) -> int:
        """Latent pixels per token side (a transformer config, or its dict)."""
        return int(config["patch_size"] if isinstance(config, dict) else config.patch_size)

    #: the pixel side of a model whose config states no size (RoPE models: FLUX, Wan) and that
    #: matches no built-in config
    default_resolution: int = 1024

    def native_resolution(self, config, vae_factor: int = 8) -> int:
        """The pixel side the model was trained at: its latent `sample_size` x VAE; without one
        (RoPE), the resolution of the built-in config it matches, else `default_resolution`."""
        def plain(d) -> dict:  # a saved config holds lists where the built-in ones hold tuples
            return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d).items()}

        given = plain(config)
        if given.get("sample_size") is not None:
            return int(given["sample_size"]) * vae_factor
        for entry in self.model_configs.values():
            if "resolution" in entry and all(given.get(k) == v for k, v in plain(entry["transformer"]).items()):
                return int(entry["resolution"])
        return self.default_resolution

    def tiny_vae(self, config: dict[str, Any]) -> nn.Module:
        """The tiny test pipeline's VAE, from a tiny model config's "vae" (current RNG)."""
        from diffusers import AutoencoderKL

        return AutoencoderKL(**config["vae"]).eval().requires_grad_(False)

    #: the built-in scheduler kinds (`--scheduler`) this family samples with: the DDPM-trained
    #: families take every discrete one, a flow-matching family (SD3, FLUX, Wan) "flow-euler"
    schedulers: tuple[str, ...] = ("ddim", "ddpm", "dpm++", "euler")
    default_scheduler: str = "ddim"

    # -- schedulers ---------------------------------------------------------------------------
    def scheduler(self, kind: str, cls: type, kwargs: dict[str, Any], raw: bool = False):
        """The `kind` ("ddim", "euler", ...) scheduler for this family's pipeline, built as
        `cls(**kwargs)` unless the family's pipeline needs an adapted one (see DiT's Euler)."""
        return cls(**kwargs)

    def set_timesteps(self, scheduler, steps: int, *, resolution: int, device=None) -> None:
        """Set `steps` timesteps as the family's pipeline does for images of `resolution` pixels
        (FLUX shifts its sigmas by the image's token count; others just call set_timesteps)."""
        scheduler.set_timesteps(steps, device=device)

    # -- the diffusers pipeline ---------------------------------------------------------------
    def tiny_pipeline_parts(self, config: dict[str, Any]) -> dict[str, Any]:
        """The pipeline constructor's components besides transformer, vae and scheduler
        (tokenizers, text encoders, ...), built from a tiny model config with the current RNG."""
        return {}

    def pipeline_kwargs(self, *, labels: list[int], prompts: list[str], resolution: int,
                        frames: int | None) -> dict[str, Any]:
        """Call kwargs (besides steps, guidance scale and generator) for one batch: class
        `labels` or text `prompts`, at `resolution` pixels; output the final latents where the
        pipeline can (DiTPipeline cannot: it decodes)."""
        raise NotImplementedError

    def pipeline_guidance(self, cfg_scale: float) -> dict[str, Any]:
        """The pipeline call's guidance kwargs for a CFG scale (FLUX: its embedded guidance, and
        true CFG above 1)."""
        return {"guidance_scale": cfg_scale}

    def pipeline_latents(self, output: torch.Tensor, resolution: int) -> torch.Tensor:
        """The pipeline's latent output in the loop's layout (FLUX unpacks its tokens)."""
        return output

    @staticmethod
    def model_timestep(t):
        """The timestep as the family's pipeline hands it to the transformer (FLUX: t / 1000)."""
        return t

    def bench_labels(self, config, seed: int, batch: int) -> list[int]:
        """Class labels of bench seed `seed` (empty for a text-conditioned family)."""
        return []

    # -- the bare-transformer sampling loop (bench) ---------------------------------------------
    def loop_conditioning(self, transformer: nn.Module, *, seed: int, batch: int, cfg: bool, frames: int | None,
                          resolution: int, latent_side: int, generator: torch.Generator, device, dtype) -> dict:
        """Forward kwargs conditioning a batch (doubled when `cfg`), drawn from `generator` in
        the shapes the pipeline's text encoders produce (no text encoder is needed)."""
        raise NotImplementedError

    def class_conditioning(self, transformer: nn.Module, labels: torch.Tensor, cfg: bool, device, dtype) -> dict:
        """Forward kwargs for a class-conditioned model (the zoo): labels (B,) -> conditioning."""
        raise NotImplementedError(f"{self.name} models have no class conditioning")

    def model_output(self, transformer: nn.Module, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        """One model call of the pipeline loop, as the family's pipeline makes it."""
        raise NotImplementedError

    def guided_output(self, out: torch.Tensor, scheduler) -> torch.Tensor:
        """The guided prediction as the pipeline hands it to `scheduler.step`."""
        return out

    def denoise(self, transformer: nn.Module, noise: torch.Tensor, cond: dict, scheduler, *,
                cfg_scale: float | None, step_kwargs: dict, progress: Callable | None = None) -> torch.Tensor:
        """The family pipeline's sampling loop on the bare transformer (timesteps already set;
        `cfg_scale` None: no guidance; `progress` wraps the timesteps, e.g. a pipeline's
        ``progress_bar``). This default is the Latte / Hunyuan-DiT / PixArt / SD3 loop: batched CFG
        with the [uncond, cond] halves."""
        latents = noise * scheduler.init_noise_sigma if self.scales_model_input else noise
        for t in progress(scheduler.timesteps) if progress else scheduler.timesteps:
            x = torch.cat([latents] * 2) if cfg_scale is not None else latents
            if self.scales_model_input:
                x = scheduler.scale_model_input(x, t)
            out = self.model_output(transformer, x, t, cond)
            if cfg_scale is not None:
                uncond, text = out.chunk(2)
                out = uncond + cfg_scale * (text - uncond)
            out = self.guided_output(out, scheduler)
            latents = scheduler.step(out, t, latents, **step_kwargs, return_dict=False)[0]
        return latents

    # -- fine-tuning ---------------------------------------------------------------------------
    def finetune_conditioning(self, model: nn.Module, dataset, pipe, *, latent_hw: tuple[int, int], vae_scale: int,
                              device, warn: Callable[[str], None]) -> "Conditioning":
        raise ValueError(f"finetune does not know how to condition a {self.name!r} model")

    def finetune_timestep(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The timestep as the family's pipeline passes it (default: integer)."""
        return t

    # -- tests ---------------------------------------------------------------------------------
    def transformer_inputs(self, transformer_config: dict[str, Any], *, batch: int, timestep, randn,
                           generator: torch.Generator, device, dtype, transformer: nn.Module | None) -> dict:
        """Random, correctly shaped forward kwargs (besides return_dict) at the native size."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------
# Fine-tuning conditioning tables (built by the family specs, consumed by dit_cache.finetuning)
# ------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """Per-sample condition rows plus the tables they index; row ``null_index`` is the null
    condition. ``index_kwarg``: pass the rows themselves (DiT ``class_labels``)."""

    index: torch.Tensor  # (N,) long
    null_index: int
    tables: dict[str, torch.Tensor] = field(default_factory=dict)
    index_kwarg: str | None = None
    constant: Callable[[int], dict[str, Any]] | None = None
    description: str = ""

    def kwargs(self, sample_idx: torch.Tensor, drop: torch.Tensor, device) -> dict[str, Any]:
        rows = self.index[sample_idx].clone()
        rows[drop] = self.null_index
        out: dict[str, Any] = {k: t[rows].to(device) for k, t in self.tables.items()}
        if self.index_kwarg is not None:
            out[self.index_kwarg] = rows.to(device)
        if self.constant is not None:
            out.update(self.constant(len(rows)))
        return out


def class_tokens(labels: torch.Tensor, dim: int, num_classes: int | None = None) -> torch.Tensor:
    """Labels (B,) -> ``encoder_hidden_states`` (B, 1, dim) for a text-conditioned model trained
    on classes without a text encoder: one-hot of the label (label < 0 = the null condition =
    the zero token). Needs ``dim >= num_classes``."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if num_classes is not None and num_classes > dim:
        raise ValueError(f"class tokens need caption_channels >= number of classes ({num_classes} > {dim})")
    if labels.numel() and int(labels.max()) >= dim:
        raise ValueError(f"label {int(labels.max())} does not fit a one-hot token of size {dim}")
    out = torch.zeros(labels.numel(), 1, dim)
    keep = labels >= 0
    out[keep, 0, labels[keep]] = 1.0
    return out


def unique_captions(captions: list[str]) -> tuple[list[str], torch.Tensor]:
    """(the distinct captions in first-seen order, each caption's index into them)."""
    order: dict[str, int] = {}
    index = [order.setdefault(c, len(order)) for c in captions]
    return list(order), torch.tensor(index, dtype=torch.long)


def module_device(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# ------------------------------------------------------------------------------------------
# Lookup
# ------------------------------------------------------------------------------------------

_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> None:
    """Make a family known to the tooling (the built-ins are registered by the package)."""
    if not isinstance(spec, FamilySpec):
        raise TypeError(f"expected a FamilySpec, got {type(spec).__name__}")
    _FAMILIES[spec.name] = spec


def families() -> tuple[FamilySpec, ...]:
    return tuple(_FAMILIES.values())


def family_spec(name: str) -> FamilySpec:
    """The spec of family `name` ("dit", "latte", "hunyuan", ...)."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}") from None


def spec_for_model(model: nn.Module | type) -> FamilySpec:
    """The spec of a transformer (instance or class), matched along its MRO."""
    cls = model if isinstance(model, type) else type(model)
    by_class = {spec.transformer_class: spec for spec in _FAMILIES.values()}
    for base in cls.__mro__:
        if base in by_class:
            return by_class[base]
    raise ValueError(f"no model family describes {cls.__name__}; known: {', '.join(transformer_class_names())}")


def set_pipeline_timesteps(model: nn.Module, scheduler, steps: int, resolution: int | None = None, device=None) -> None:
    """`scheduler.set_timesteps(steps)` as the pipeline of `model`'s family sets it (FLUX shifts
    by the image size: `resolution` px, default the model's native one); a model of no known
    family gets the plain call."""
    try:
        spec = spec_for_model(model)
    except ValueError:
        scheduler.set_timesteps(steps, device=device)
        return
    spec.set_timesteps(scheduler, steps, resolution=resolution or spec.native_resolution(model.config), device=device)


def spec_for_transformer_class(class_name: str | None) -> FamilySpec | None:
    """The spec whose transformer class is called `class_name` (a config's `_class_name`)."""
    return next((s for s in _FAMILIES.values() if s.transformer_class.__name__ == class_name), None)


def spec_for_pipeline_class(class_name: str | None) -> FamilySpec | None:
    """The spec whose diffusers pipeline is called `class_name` (a model_index.json's)."""
    return next((s for s in _FAMILIES.values() if s.pipeline_class_name == class_name), None)


def transformer_class_names() -> list[str]:
    return [s.transformer_class.__name__ for s in _FAMILIES.values()]


def pipeline_class_names() -> list[str]:
    return [s.pipeline_class_name for s in _FAMILIES.values()]


def all_model_configs() -> dict[str, dict[str, Any]]:
    """Every family's built-in model configs by name, each with its "family"; tiny ones first
    (in family registration order), then the real-size ones."""
    entries = [(n, {"family": s.name, **c}) for s in _FAMILIES.values() for n, c in s.model_configs.items()]
    return dict([e for e in entries if e[1]["tiny"]] + [e for e in entries if not e[1]["tiny"]])
