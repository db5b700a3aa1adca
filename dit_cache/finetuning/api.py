"""`dit_cache.finetune`: train Skip-DiT long-skip adapters (then, optionally, the whole model) on
your data with the diffusion objective of the model's own scheduler config.

    import dit_cache
    result = dit_cache.finetune(pipe, "my_images/", "out/", adapter_steps=2000, full_steps=4000)
    model = dit_cache.load_finetuned("out/")          # patched with skip-dit + trained adapters

What it does (details in the docstrings of the modules of dit_cache.finetuning: objective, model,
loop, optim, checkpoints, sources, io, data):

* **Model.** ``adapters="residual"`` (default) patches the model with
  ``dit_cache.patch(model, "skip-dit", fusion="residual")`` (function-preserving, zero-initialised
  adapters); ``"replace"`` inserts the Skip-DiT reference adapters (for a model trained from
  scratch); ``None`` trains the model as it is (a vanilla baseline). Hunyuan-DiT's native
  ``skip_norm`` / ``skip_linear`` are its adapters. A model already patched by the caller is used
  as it is. Training runs in train mode, where the patched model always computes full steps.
* **Stages.** ``adapter_steps`` of stage 1 (only the adapter parameters train, everything else is
  frozen and stays bit-identical) then ``full_steps`` of stage 2 (every parameter). Each stage has
  its own AdamW (fresh moments) and its own linear warm-up of ``warmup_steps``. From scratch:
  ``adapter_steps=0``.
* **Objective.** ``DDPMScheduler.add_noise`` with the training config of the pipeline's scheduler
  (or ``noise_scheduler``, or the DiT schedule); epsilon / v / sample targets; learned-sigma
  outputs trained on their first half only (no VLB term); CFG dropout of labels / captions.
* **Optimisation.** AdamW, warm-up then constant (or cosine / linear decay), gradient clipping,
  a step is skipped (and counted) when the gradient norm is not finite (or exceeds
  ``skip_grad_norm_above``), EMA of the weights, and after every optimizer step the spectral cap
  ``cap_spectral_norm_(model, spectral_bound)`` on every skip projection (``"auto"``: the bound is
  ``max(1, largest initial singular value)``, so a pretrained skip is never shrunk; ``None``:
  no cap). Largest singular values are logged every step.
* **Data.** See `dit_cache.finetuning.data`. Pixel-space training when there is no VAE (a bare model): the
  samples must have the model's ``in_channels`` after conversion. With a pipeline, images / clips
  are encoded once by its VAE (posterior mean and std kept; a latent is drawn per step when
  ``vae_sample``), optionally cached on disk (``latent_cache``), and captions by its text encoders.
* **Checkpoints.** Atomic, resumable; resuming reproduces the uninterrupted run bit for bit on
  CPU (same number of processes and threads).
* **Multi-process.** Under ``torchrun`` (or an initialised process group) the model is wrapped in
  DistributedDataParallel (gloo on CPU, nccl on CUDA), the data is split with DistributedSampler,
  ``batch_size`` is the global batch, rank 0 writes logs, checkpoints and the result.

Side effects: the global torch / numpy / python RNGs are seeded from ``seed`` (+ rank) and, with
``threads``, torch's thread count is set. The model is returned in eval mode, patched (when it
has adapters), holding the saved weights (the EMA weights unless ``save_ema=False``), with
``requires_grad`` as it was (False for adapters inserted by finetune).
"""
from __future__ import annotations

import dataclasses
import random
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from torch import nn

from ..adapters.family import family_spec
from ..runtime.patch_state import resolve_model
from ..runtime.registry import get_adapter
from .checkpoints import list_checkpoints
from .config import FinetuneConfig, FinetuneResult, resolve_config
from .data import DataError, load_data
from .._common.dist import setup_distributed
from .io import load_finetuned, save_result
from .loop import Trainer
from .model import adapter_parameter_names, initial_spectral_bound, patch_for_training
from .objective import DiffusionObjective, build_conditioning, training_scheduler
from .sources import PixelSource, encode_latents, vae_scale_factor

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "load_finetuned"]


def _seed_everything(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def finetune(
    model_or_pipeline,
    data,
    output_dir,
    config: FinetuneConfig | None = None,
    *,
    vae=None,
    noise_scheduler=None,
    resume: bool | str = False,
    callback: Callable[[dict, Trainer], Any] | None = None,
    device: str | torch.device | None = None,
    metadata: dict | None = None,
    **options,
) -> FinetuneResult:
    """Train ``model_or_pipeline`` (a diffusers DiT / Latte / Hunyuan-DiT transformer, or its
    pipeline) on ``data`` and save the result in ``output_dir`` (see the module docstring).

    ``data``: a `dit_cache.finetuning.data` source (``"mnist"``, ``"moving-mnist"``, a folder, an
    ``InMemoryDataset``, a tensor or ``(tensor, labels)``). ``config`` / ``**options``: the fields
    of :class:`FinetuneConfig`. ``vae``: encode with this VAE (default: the pipeline's; none for a
    bare model = pixel space). ``noise_scheduler``: the training noise schedule source (default:
    the pipeline's scheduler config, else the DiT schedule). ``resume``: True resumes from the
    newest checkpoint in ``output_dir/checkpoints`` (starting fresh when there is none), a path
    resumes from that checkpoint. ``callback(record, trainer)`` runs after every step on every
    rank. ``metadata`` is stored in ``finetune.json`` (e.g. the command line).
    """
    cfg = resolve_config(config, options)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pipe = None if isinstance(model_or_pipeline, nn.Module) else model_or_pipeline
    model = resolve_model(model_or_pipeline)
    family = get_adapter(model).family
    if next(model.parameters()).dtype == torch.float16:
        raise ValueError("fine-tune a float32 (or bfloat16) model; for speed use mixed_precision='bf16'")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    output_dir = Path(output_dir)
    ctx = setup_distributed(device.type)
    notes: list[str] = []

    def warn(msg: str):
        notes.append(msg)
        if ctx.is_main:
            warnings.warn(msg, stacklevel=3)

    try:
        return _finetune(model, pipe, family, data, output_dir, cfg, vae, noise_scheduler, resume, callback,
                         device, metadata, ctx, notes, warn)
    finally:
        ctx.close()


def _resume_path(output_dir: Path, resume) -> Path | None:
    """The checkpoint to resume from; an error when the folder holds a run and resume is off."""
    existing = list_checkpoints(output_dir / "checkpoints")
    if resume is True:
        return existing[-1] if existing else None
    if resume:
        return Path(resume)
    if existing:
        raise ValueError(
            f"{output_dir} already holds checkpoints (newest {existing[-1].name}); resume=True (--resume) "
            "continues that run, or choose another output folder"
        )
    return None


def _training_data(model, family, data, cfg, vae, ctx):
    """(dataset, sample source, space description, one probe sample, VAE scale factor)."""
    mc = model.config
    video = family_spec(family).is_video
    scale = vae_scale_factor(vae) if vae is not None else 1
    resolution = cfg.resolution or int(mc.sample_size) * scale
    channels = int(vae.config.in_channels) if vae is not None else int(mc.in_channels)
    num_frames = cfg.num_frames or (int(mc.video_length) if video else None)
    dataset = load_data(data, video=video, resolution=cfg.resolution or resolution, channels=channels,
                        num_frames=num_frames, frame_stride=cfg.frame_stride)
    if dataset.is_video != video:
        raise DataError(
            f"{type(model).__name__} trains on {'clips (N, C, F, H, W)' if video else 'images (N, C, H, W)'}, "
            f"the data {dataset.name!r} holds {'clips' if dataset.is_video else 'images'}"
        )
    if video and dataset.sample_shape[1] != num_frames:
        raise DataError(f"clips have {dataset.sample_shape[1]} frames, the model takes {num_frames} (video_length)")
    if vae is not None:
        source, how = encode_latents(vae, dataset, channels=channels, size=resolution, sample=cfg.vae_sample,
                                     batch=cfg.encode_batch_size, cache_dir=cfg.latent_cache, ctx=ctx)
        space = f"latent ({how} by {type(vae).__name__}, x{scale})"
    else:
        source, space = PixelSource(dataset, channels, resolution), "pixel"
    probe = source.get(torch.arange(1), torch.Generator().manual_seed(0))
    if probe.shape[1] != int(mc.in_channels):
        raise DataError(f"training samples have {probe.shape[1]} channels, the model takes in_channels={mc.in_channels}")
    return dataset, source, space, probe, scale


def _finetune(model, pipe, family, data, output_dir, cfg, vae, noise_scheduler, resume, callback, device,
              metadata, ctx, notes, warn) -> FinetuneResult:
    resume_path = _resume_path(output_dir, resume)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()

    scheduler = training_scheduler(noise_scheduler if noise_scheduler is not None else pipe,
                                   prediction_type=cfg.prediction_type, beta_schedule=cfg.beta_schedule)
    objective = DiffusionObjective(scheduler)
    if vae is None and pipe is not None:
        vae = getattr(pipe, "vae", None)
    dataset, source, space, probe, scale = _training_data(model, family, data, cfg, vae, ctx)
    latent_hw = tuple(probe.shape[-2:])
    sample_size = model.config.sample_size
    if latent_hw != (int(sample_size), int(sample_size)):
        warn(f"training at {latent_hw[0]}x{latent_hw[1]}, the model's sample_size is {sample_size}")
    conditioning = build_conditioning(family, model, dataset, pipe, latent_hw=latent_hw, vae_scale=scale,
                                      device=device, warn=warn)

    was_training = model.training
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    adapters = patch_for_training(model, cfg)
    _seed_everything(cfg.seed + ctx.rank)
    ctx.broadcast_module(model)
    bound = initial_spectral_bound(model, cfg.spectral_bound)

    trainer = Trainer(model=model, family=family, config=cfg, source=source, conditioning=conditioning,
                      objective=objective, ctx=ctx, device=device, output_dir=output_dir, spectral_bound=bound,
                      callback=callback, log_console=Console(stderr=True))
    if resume_path is not None:
        trainer.resume_from(resume_path)
    elif ctx.is_main:
        trainer.log_path.write_text("", encoding="utf-8")
    ctx.barrier()
    try:
        trainer.run(progress=cfg.progress)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grad_flags.get(n, False))
        model.train(was_training)
    model.eval()

    if trainer.ema is not None and cfg.save_ema:
        trainer.ema.swap_into(model)
    steps_run = trainer.steps_run
    sps = steps_run / trainer.seconds if trainer.seconds > 0 else 0.0
    final_loss = next((r["loss"] for r in reversed(trainer.records) if isinstance(r["loss"], float)), None)
    meta = {
        "format": "dit-cache-finetune",
        "model_class": type(model).__name__,
        "family": family,
        "adapters": adapters,
        "adapter_parameters": len(adapter_parameter_names(model)) if adapters else 0,
        "weights": "ema" if (trainer.ema is not None and cfg.save_ema) else "raw",
        "dtype": "float16" if cfg.save_fp16 else str(next(model.parameters()).dtype).replace("torch.", ""),
        "steps": trainer.step,
        "skipped_steps": trainer.skipped,
        "spectral_bound": bound,
        "prediction_type": objective.prediction_type,
        "num_train_timesteps": objective.num_timesteps,
        "learned_sigma_trained": False,
        "data": {"name": dataset.name, "samples": len(dataset), "shape": list(dataset.sample_shape),
                 "space": space, "train_shape": list(probe.shape[1:]), "class_names": dataset.class_names},
        "conditioning": conditioning.description,
        "cond_null_index": conditioning.null_index,
        "world_size": ctx.world_size,
        "seconds_last_run": round(trainer.seconds, 3),
        "steps_per_second_last_run": round(sps, 4),
        "final_loss": final_loss,
        "config": dataclasses.asdict(cfg),
        "notes": notes,
        **(metadata or {}),
    }
    if ctx.is_main:
        save_result(model, output_dir, scheduler=scheduler, fp16=cfg.save_fp16, meta=meta)
    ctx.barrier()
    return FinetuneResult(
        model=model,
        output_dir=output_dir,
        steps=trainer.step,
        steps_run=steps_run,
        skipped_steps=trainer.skipped,
        seconds=trainer.seconds,
        steps_per_second=sps,
        samples_per_second=sps * cfg.batch_size,
        final_loss=final_loss,
        records=trainer.records,
        resumed_from=str(resume_path) if resume_path else None,
        notes=notes,
    )
