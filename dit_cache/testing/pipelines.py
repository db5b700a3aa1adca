"""Whole diffusers pipelines of the tiny built-in models, assembled offline, and running them
reproducibly.

Every component has seeded random weights (tiny VAE, tiny T5 / BERT and in-memory tokenizers,
adapters/tiny_parts.py). Every pipeline drops the learned-variance half of the transformer
output before ``scheduler.step`` (``variance_type`` is left at the fixed default: with random
weights a "learned_range" variance can blow up). With random weights an epsilon-prediction
model cannot denoise, so DiT / Latte latents grow large (std ~10-20 after 3 DDIM steps,
~100-1000 with DPM++/Euler); Hunyuan (v-prediction) stays O(1): compare runs with relative errors.

Caveats:

* Determinism: ``DiTPipeline`` does not pass its ``generator`` to ``scheduler.step``, so DDPM's
  per-step noise comes from the *global* torch RNG, and a ``torch.Generator`` is consumed by a
  run. :func:`run_pipeline` re-seeds both (inside ``fork_rng``) and gives bit-identical
  repeated runs for every family and scheduler.
* DiTPipeline always decodes and clamps to [0, 1] (no ``output_type="latent"``); with random
  weights that saturates, so compare ``run_pipeline(..., return_latents=True)``.
* Threads: on 2-vCPU machines, tiny models with ``torch.set_num_threads(2)`` were 50-100x
  slower when the other vCPU was busy (OpenMP spin-waiting). Use one thread for tiny models
  (or ``OMP_WAIT_POLICY=PASSIVE``).
"""
from __future__ import annotations

from typing import Any

import torch

from ..adapters.family import family_spec, spec_for_pipeline_class

from .builders import TINY_MODELS, build_transformer, model_config
from .schedulers import build_scheduler

#: Prompts of the text-conditioned pipelines (test inputs and the bench's pipeline runs).
PROMPTS = (
    "a photo of a red cat sitting on a tree",
    "a painting of a small boat on the sea at sunset",
    "a video of a dog running on the beach",
    "a blue bird flying over a green field",
)


def _tiny_config(name: str, error: str) -> dict[str, Any]:
    cfg = model_config(name)
    if not cfg["tiny"]:
        raise ValueError(error.format(tiny=", ".join(TINY_MODELS), name=name))
    return cfg


def build_pipeline(name: str, seed: int = 0, scheduler: str | None = None):
    """Assemble a full diffusers pipeline for a tiny model from local components.

    ``tiny-dit`` -> ``DiTPipeline``, ``tiny-latte`` -> ``LattePipeline``,
    ``tiny-hunyuan`` -> ``HunyuanDiTPipeline`` (no safety checker). Every component is in
    eval mode with seeded random weights; the progress bar is disabled. ``scheduler`` is a
    key of ``SCHEDULERS`` (None: the family's default, ddim or flow-euler). Real-size names raise ``ValueError``.
    """
    cfg = _tiny_config(
        name,
        "build_pipeline only builds tiny models ({tiny}); {name!r} is a real-size architecture config "
        "- use build_transformer(name, device='meta')",
    )
    spec = family_spec(cfg["family"])
    sched = build_scheduler(scheduler, spec.name)
    import diffusers

    transformer = build_transformer(name, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = spec.tiny_vae(cfg)
        parts = spec.tiny_pipeline_parts(cfg)
        pipe = getattr(diffusers, spec.pipeline_class_name)(transformer=transformer, vae=vae, scheduler=sched, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_inputs(
    name: str,
    num_inference_steps: int = 4,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch: int = 1,
    **over: Any,
) -> dict[str, Any]:
    """kwargs for ``pipe(**inputs)``: fast, deterministic, returning a tensor.

    ``guidance_scale=None`` uses the family default (DiT 4.0, Latte 7.5, Hunyuan 5.0),
    i.e. classifier-free guidance is on and the transformer sees batch ``2 * batch``.
    ``generator`` is a fresh ``torch.Generator`` seeded with ``seed`` (it is consumed by a
    run: build new inputs, or use :func:`run_pipeline`, to repeat a run). Output types:
    DiT ``"pt"`` (decoded images, (B, 3, H, W); DiTPipeline has no latent output), Latte
    and Hunyuan ``"latent"`` ((B, C, F, h, w) / (B, C, h, w)). Latte gets
    ``clean_caption=False`` (needs bs4/ftfy otherwise), Hunyuan
    ``use_resolution_binning=False`` (with it on, 128 px would be resized to 1024 px).
    ``**over`` overrides anything.
    """
    cfg = _tiny_config(name, "pipeline_inputs is for tiny models ({tiny}), got {name!r}")
    gs = cfg["guidance_scale"] if guidance_scale is None else guidance_scale
    gen = torch.Generator().manual_seed(seed)
    classes = sorted(cfg.get("id2label", ()))
    inputs = family_spec(cfg["family"]).pipeline_kwargs(
        labels=[classes[i % len(classes)] for i in range(batch)] if classes else [],
        prompts=[PROMPTS[i % len(PROMPTS)] for i in range(batch)],
        resolution=cfg["resolution"],
        frames=cfg["num_frames"],
    )
    inputs.update(num_inference_steps=num_inference_steps, guidance_scale=gs, generator=gen)
    inputs.update(over)
    return inputs


def pipeline_output(result: Any) -> torch.Tensor:
    """The tensor inside a pipeline result (``.images`` / ``.frames`` / tuple[0])."""
    if isinstance(result, tuple):
        out = result[0]
    elif hasattr(result, "frames"):
        out = result.frames
    else:
        out = result.images
    if not torch.is_tensor(out):
        raise TypeError(
            f"pipeline returned {type(out).__name__}, not a tensor; use output_type='pt' or 'latent'"
        )
    return out


def run_pipeline(
    pipe, inputs: dict[str, Any], seed: int | None = None, return_latents: bool = False
) -> torch.Tensor:
    """Run ``pipe(**inputs)`` reproducibly and return the output tensor.

    Re-seeds ``inputs["generator"]`` (so the same dict can be run again) and the global
    torch RNG inside :func:`torch.random.fork_rng` (DiTPipeline draws DDPM step noise from
    the global RNG). ``seed`` defaults to the generator's initial seed.

    ``return_latents=True`` returns the final denoised latents for every family: Latte and
    Hunyuan are run with ``output_type="latent"``; DiTPipeline always decodes and clamps to
    [0, 1] (which saturates with random weights), so its latents are captured at the
    ``vae.decode`` call and un-scaled by ``vae.config.scaling_factor``.
    """
    gen = inputs.get("generator")
    if seed is None:
        seed = gen.initial_seed() if isinstance(gen, torch.Generator) else 0
    if isinstance(gen, torch.Generator):
        gen.manual_seed(seed)
    captured: list[torch.Tensor] = []
    spec = spec_for_pipeline_class(type(pipe).__name__)
    decodes = spec is not None and not spec.pipeline_latent_output
    if return_latents and not decodes:
        inputs = {**inputs, "output_type": "latent"}
    vae = getattr(pipe, "vae", None)
    patched = return_latents and decodes
    if patched:
        orig_decode = vae.decode

        def decode(z, *args, **kwargs):
            captured.append(z * vae.config.scaling_factor)
            return orig_decode(z, *args, **kwargs)

        vae.decode = decode
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            out = pipeline_output(pipe(**inputs))
    finally:
        if patched:
            del vae.decode  # drop the instance attribute, back to the class method
    return captured[-1] if patched else out
