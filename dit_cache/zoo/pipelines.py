"""diffusers pipelines for the pixel-space zoo models: `ZooImagePipeline` (the DiTs) and
`ZooVideoPipeline` (mnist-latte), built by `dit_cache.zoo.pipeline(name)`.

    import dit_cache
    pipe = dit_cache.zoo.pipeline("mnist-dit-retrofit")            # skip-dit + trained adapters
    images = pipe(class_labels=["3", "5"], generator=torch.Generator().manual_seed(0)).images

How the zoo samples (the bench's zoo runner runs this same loop, `ZooPipeline.denoise_latents`):

* pixel space, no VAE: the final latents are the images, in [-1, 1];
* the models predict x0 (``prediction_type="sample"``, finetune.json), and DDIM / DDPM clip
  their x0 estimates to the data range (``clip_sample=True``; `pixel_scheduler`);
* classifier-free guidance 2.0 (`ZOO_CFG_SCALE`), batched as the family's diffusers pipeline
  batches it (DiT ``[cond, null]`` with the null class ``num_embeds_ada_norm``; Latte
  ``[uncond, cond]`` with one-hot class tokens as its caption, the zero token as null) - the
  loop is the family's (`FamilySpec.denoise`).

Why not ``DiTPipeline(transformer=model, vae=None, ...)``: it hard-codes the ImageNet null class
1000 (an IndexError on a 10-class model), always decodes with a VAE and does not clip x0.
Saving and loading a patched pipeline: see `pipeline_files`.
"""
from __future__ import annotations

import inspect
import math
import operator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ..adapters.family import spec_for_model
from .pipeline_files import load_patch_record, save_with_patch_record

#: Guidance scale of the zoo's x0-predicting models (a 700-step probe of mnist-dit: class
#: accuracy 0.46 / 0.60 / 0.26 at CFG 1 / 2 / 4 - strong guidance over-sharpens x0 estimates).
ZOO_CFG_SCALE = 2.0
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def pixel_scheduler(scheduler, prediction_type: str | None = None):
    """`scheduler` with the model's trained `prediction_type` and, where it has the option,
    x0 estimates clipped to the data range [-1, 1] (pixel space; without it a few-step sampler
    amplifies early errors far outside it)."""
    overrides = {"prediction_type": prediction_type or scheduler.config.prediction_type}
    if "clip_sample" in scheduler.config:
        overrides["clip_sample"] = True
    return type(scheduler).from_config(scheduler.config, **overrides)


@contextmanager
def global_rng_from(generator, device):
    """DiTPipeline's loop steps the scheduler without a generator (DDPM then draws from the
    global RNG): seed the global RNG from `generator` for the duration, restoring it after."""
    if generator is None:
        yield
        return
    first = generator[0] if isinstance(generator, list) else generator
    seed = int(torch.randint(0, 2**62, (1,), generator=first, device=first.device))
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class ZooPipeline(DiffusionPipeline):
    """What the image and video pipelines share: class labels, conditioning, the sampling loop,
    and `save_pretrained` / `from_pretrained` of a patched transformer (see `pipeline_files`).

    `class_names`: the model's class names in id order (the zoo's are "0".."9"); None: the
    class ids as names. Labels are given as ids (int) or names (str)."""

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer, scheduler, class_names: list[str] | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        self.register_to_config(class_names=[str(n) for n in class_names] if class_names is not None else None)

    @property
    def spec(self):
        return spec_for_model(self.transformer)

    @property
    def class_names(self) -> list[str]:
        if self.config.class_names:
            return list(self.config.class_names)
        cfg = self.transformer.config
        return [str(i) for i in range(int(cfg.get("num_embeds_ada_norm") or cfg.get("caption_channels")))]

    def class_ids(self, class_labels) -> list[int]:
        """Class ids of `class_labels` (ids, names, or one of them; None: one of each class)."""
        names = self.class_names
        if class_labels is None:
            return list(range(len(names)))
        if isinstance(class_labels, (int, str)) or (torch.is_tensor(class_labels) and class_labels.dim() == 0):
            class_labels = [class_labels]
        ids = [self._class_id(label, names) for label in class_labels]
        if not ids:
            raise ValueError("class_labels is empty: give at least one class (or None for one of each)")
        return ids

    @staticmethod
    def _class_id(label, names: list[str]) -> int:
        valid = f"this model's classes are ids 0-{len(names) - 1} or the names {', '.join(map(repr, names))}"
        if isinstance(label, str):
            if label.strip() in names:
                return names.index(label.strip())
            raise ValueError(f"unknown class name {label!r}: {valid}")
        try:
            if isinstance(label, bool):
                raise TypeError
            index = operator.index(label)
        except TypeError:
            raise ValueError(f"class label {label!r} is neither a class id nor a name: {valid}") from None
        if not 0 <= index < len(names):
            raise ValueError(f"class id {index} does not exist: {valid}")
        return index

    def conditioning(self, labels: torch.Tensor, guidance_scale: float, device, dtype) -> dict:
        """Forward kwargs conditioning the batch `labels` (doubled for guidance > 1)."""
        return self.spec.class_conditioning(self.transformer, labels.to(device), guidance_scale > 1, device, dtype)

    @torch.no_grad()
    def denoise_latents(self, noise: torch.Tensor, cond: dict, num_inference_steps: int, guidance_scale: float,
                        generator=None, progress: bool = False) -> torch.Tensor:
        """The zoo's sampling loop from `noise` to the final samples in [-1, 1]."""
        self.scheduler.set_timesteps(num_inference_steps)
        params = inspect.signature(self.scheduler.step).parameters
        step_kwargs: dict[str, Any] = {"eta": 0.0} if "eta" in params else {}
        if "generator" in params:
            step_kwargs["generator"] = generator
        return self.spec.denoise(
            self.transformer, noise, cond, self.scheduler, cfg_scale=guidance_scale if guidance_scale > 1 else None,
            step_kwargs=step_kwargs, progress=self.progress_bar if progress else None,
        )

    def sample(self, class_labels, num_inference_steps: int, guidance_scale: float, generator,
               output_type: str) -> torch.Tensor:
        """Checked inputs -> the final samples (B, C, [F,] H, W) in [-1, 1]."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0 (<= 1: no guidance), got {guidance_scale!r}")
        ids = self.class_ids(class_labels)
        device, dtype = self._execution_device, self.transformer.dtype
        cfg = self.transformer.config
        shape = self.spec.latent_shape(len(ids), int(cfg.in_channels), int(cfg.sample_size), self.spec.video_length(cfg))
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        cond = self.conditioning(torch.tensor(ids), guidance_scale, device, dtype)
        with global_rng_from(generator, device):
            samples = self.denoise_latents(noise, cond, num_inference_steps, guidance_scale, generator, progress=True)
        self.maybe_free_model_hooks()
        return samples

    def __call__(self, class_labels=None, num_inference_steps: int = 20, guidance_scale: float = ZOO_CFG_SCALE,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 return_dict: bool = True):
        """Sample one image (video) per class label (ids or names; None: one of each class); the
        output types are the subclass's (`ZooImagePipeline`, `ZooVideoPipeline`)."""
        samples = self.sample(class_labels, num_inference_steps, guidance_scale, generator, output_type)
        result = samples if output_type == "latent" else self.postprocess(samples, output_type)
        return self.output(result) if return_dict else (result,)

    def postprocess(self, samples: torch.Tensor, output_type: str):
        """Samples in [-1, 1] -> `output_type` ("pil", "np", "pt")."""
        raise NotImplementedError

    def output(self, result):
        """The pipeline output object around `result`."""
        raise NotImplementedError

    def save_pretrained(self, save_directory, **kwargs):
        """`DiffusionPipeline.save_pretrained`, plus the transformer's dit-cache patch when it has one:
        transformer/ holds the weights without inserted adapters, adapters.safetensors the trained
        long skips and dit_cache.json the schedule; `from_pretrained` re-patches from them."""
        save_with_patch_record(self, save_directory, super().save_pretrained, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, repatch: bool = True, **kwargs):
        """`DiffusionPipeline.from_pretrained` of a folder written by `save_pretrained`; the transformer
        comes patched as it was saved (``repatch=False``: the bare transformer; patch it yourself with
        ``dit_cache.patch`` + ``dit_cache.load_adapters(pipe, folder / "adapters.safetensors")``)."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if repatch:
            load_patch_record(pipe.transformer, pretrained_model_name_or_path)
        return pipe


class ZooImagePipeline(ZooPipeline):
    """Class-conditional pixel-space image pipeline of a zoo DiT (a `DiTTransformer2DModel`).

    ``pipe(class_labels=[3, "5"], num_inference_steps=20, guidance_scale=2.0, generator=g)``
    returns an `ImagePipelineOutput`: ``images`` are grayscale PIL images (``output_type="pil"``),
    a (B, H, W, C) array in [0, 1] ("np"), a (B, C, H, W) tensor in [0, 1] ("pt"), or the raw
    samples in [-1, 1] ("latent")."""

    def postprocess(self, samples: torch.Tensor, output_type: str):  # pixel space: no VAE, no resize
        return VaeImageProcessor(vae_scale_factor=1, do_resize=False).postprocess(samples, output_type)

    def output(self, images) -> ImagePipelineOutput:
        return ImagePipelineOutput(images=images)


@dataclass
class ZooVideoPipelineOutput(BaseOutput):
    """``frames``: per video a list of PIL frames ("pil"), a (B, F, H, W, C) array ("np"), a
    (B, F, C, H, W) tensor ("pt", both in [0, 1]) or the raw (B, C, F, H, W) samples ("latent")."""

    frames: Any


class ZooVideoPipeline(ZooPipeline):
    """Class-conditional pixel-space video pipeline of the zoo Latte (`LatteTransformer3DModel`,
    the class as a one-hot caption token). ``pipe(class_labels=[7]).frames[0]`` is a list of PIL
    frames (the model's ``video_length``): ``diffusers.utils.export_to_gif(frames, "7.gif")``."""

    def postprocess(self, samples: torch.Tensor, output_type: str):
        return VideoProcessor(vae_scale_factor=1, do_resize=False).postprocess_video(samples, output_type)

    def output(self, frames) -> ZooVideoPipelineOutput:
        return ZooVideoPipelineOutput(frames=frames)


def zoo_pipeline(name: str, schedule="auto", **options) -> ZooPipeline:
    """The zoo model `name` in its pipeline (`ZooVideoPipeline` for mnist-latte, else
    `ZooImagePipeline`) with a DDIM scheduler on its training noise schedule (`pixel_scheduler`).

    ``schedule``: ``"auto"`` (any step count): models trained with long-skip adapters patched
    with ``skip-dit`` + their adapters, vanilla models bare; ``"calibrated"``: the model's shipped
    per-step schedule (DDIM 20 steps only, 2x; `dit_cache.zoo.load`'s default); or a preset,
    config or schedule file (+ ``options``; on adapter models they run with the adapters,
    ``none`` = every step full with them, see `trained_adapter_schedule`); None: the bare
    transformer (for adapter models, without the skips they were trained with)."""
    from diffusers import DDIMScheduler

    from ..api import patch
    from ..finetuning.io import trained_adapter_schedule
    from .loader import load, meta, path, zoo_schedule

    info = meta(name)
    adapters = info.get("adapters") is not None
    if schedule == "auto":
        schedule = "skip-dit" if adapters else None
    schedule = zoo_schedule(name, schedule)
    if schedule is None:
        if options:
            raise ValueError(f"options {sorted(options)} need a schedule; pass schedule='skip-dit' (or another preset)")
        model = load(name, schedule=None)
    elif adapters:
        mapped = trained_adapter_schedule(schedule, options)
        if mapped is None:
            raise ValueError(
                f"{schedule!r} would run {name} without its trained long-skip adapters; use 'none', a "
                "Skip-Cache preset (skip-dit, skip-dit-2, ...) or a calibrated schedule, or compare FORA / PAB on mnist-dit"
            )
        model = load(name, mapped[0], **mapped[1])
    else:
        model = load(name, schedule=None)
        patch(model, schedule, **options)
    scheduler = pixel_scheduler(DDIMScheduler.from_config(DDIMScheduler.load_config(path(name) / "scheduler")),
                                info.get("prediction_type"))
    cls = ZooVideoPipeline if spec_for_model(model).is_video else ZooImagePipeline
    pipe = cls(transformer=model, scheduler=scheduler, class_names=info.get("data", {}).get("class_names"))
    pipe.set_progress_bar_config(desc=name)
    return pipe
