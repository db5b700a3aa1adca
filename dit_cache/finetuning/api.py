"""`dit_cache.finetune`: train Skip-DiT long-skip adapters (then, optionally, the whole model) on
your data with the diffusion objective of the model's own scheduler config.

    import dit_cache
    result = dit_cache.finetune(pipe, "my_images/", "out/", adapter_steps=2000, full_steps=4000)
    model = dit_cache.load_finetuned("out/")          # patched with skip-dit + trained adapters

What it does (details in the docstrings of finetune_objective / finetune_state / finetune_io):

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
* **Data.** See `dit_cache.data`. Pixel-space training when there is no VAE (a bare model): the
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..api import patch, resolve_model
from .io import PixelSource, encode_latents, load_finetuned, save_result, vae_scale_factor
from .loop import Trainer, adapter_parameter_names, has_skip_projections
from .objective import DiffusionObjective, build_conditioning, training_scheduler
from .state import LR_SCHEDULES, list_checkpoints, setup_distributed
from ..runtime.patch_state import get_state
from ..registry import get_adapter

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "load_finetuned"]

ADAPTER_MODES = ("residual", "replace", None)

# Fields that may differ between a run and its resumption (they do not change the trajectory).
RESUME_FREE = frozenset(
    {"progress", "checkpoint_every", "keep_checkpoints", "save_fp16", "save_ema", "threads", "latent_cache",
     "encode_batch_size"}
)


@dataclass
class FinetuneConfig:
    """Hyper-parameters of `finetune` (every field is also a keyword of `finetune`)."""

    adapters: str | None = "residual"  # "residual" | "replace" | None (vanilla: no long skips)
    adapter_steps: int = 0  # stage 1: adapters only
    full_steps: int = 0  # stage 2: everything
    batch_size: int = 32  # global (split over processes)
    lr: float = 1e-4
    adapter_lr: float | None = None  # stage-1 learning rate (default: lr)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 100  # linear warm-up at the start of each stage
    lr_schedule: str = "constant"  # after warm-up: "constant" | "cosine" | "linear" (to 0 at stage end)
    ema_decay: float | None = 0.9999  # None: no EMA
    ema_warmup: bool = True  # decay_t = min(decay, (1 + n) / (10 + n))
    max_grad_norm: float | None = 1.0  # clipping (None: no clipping)
    skip_grad_norm_above: float | None = None  # also skip steps whose grad norm exceeds this (reference: 0.02)
    spectral_bound: float | str | None = "auto"  # cap on skip projections: float, "auto" or None
    cond_dropout: float = 0.1  # probability of the null label / caption (classifier-free guidance)
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" (torch.autocast)
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end); 0: none
    keep_checkpoints: int | None = 2  # newest checkpoints kept (None: all)
    progress: bool = True  # rich progress bar
    save_fp16: bool = False  # result weights in float16
    save_ema: bool = True  # result = EMA weights (when ema_decay is set)
    latent_cache: str | None = None  # folder for cached VAE latents
    vae_sample: bool = True  # draw latents from the VAE posterior each step (False: its mean)
    resolution: int | None = None  # image size for folders (default: the model's, in pixels)
    num_frames: int | None = None  # frames per clip (default: the Latte model's video_length)
    frame_stride: int = 1
    prediction_type: str | None = None  # override the scheduler config's
    beta_schedule: str | None = None  # override the scheduler config's
    threads: int | None = None  # torch.set_num_threads
    encode_batch_size: int = 16  # VAE encoding batch

    def validate(self):
        if self.adapters not in ADAPTER_MODES:
            raise ValueError(f"adapters must be one of {ADAPTER_MODES}, got {self.adapters!r}")
        for name in ("adapter_steps", "full_steps", "warmup_steps", "checkpoint_every", "frame_stride"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.adapter_steps + self.full_steps <= 0:
            raise ValueError("nothing to train: set adapter_steps and/or full_steps > 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1], got {self.cond_dropout}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")
        b = self.spectral_bound
        if not (b is None or b == "auto" or (isinstance(b, (int, float)) and b > 0)):
            raise ValueError(f"spectral_bound must be > 0, 'auto' or None, got {b!r}")
        self.betas = tuple(self.betas)

    def comparable(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUME_FREE}

    def check_resumable(self, saved: dict, path) -> None:
        mine = self.comparable()
        diff = sorted(k for k in set(mine) | set(saved) if _norm(mine.get(k)) != _norm(saved.get(k)))
        if diff:
            shown = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in diff[:4])
            raise ValueError(f"cannot resume from {path}: the configuration changed ({shown})")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


@dataclass
class FinetuneResult:
    model: nn.Module
    output_dir: Path
    steps: int  # completed steps (all runs)
    steps_run: int  # steps this call ran
    skipped_steps: int
    seconds: float
    steps_per_second: float
    samples_per_second: float
    final_loss: float | None
    records: list[dict] = field(default_factory=list)  # this call's log records (rank 0: also train_log.jsonl)
    resumed_from: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.records]


def _resolve_config(config: FinetuneConfig | None, overrides: dict) -> FinetuneConfig:
    cfg = dataclasses.replace(config) if config is not None else FinetuneConfig()
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown finetune option(s) {unknown}; valid: {sorted(fields)}")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg


def _seed_everything(seed: int):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _patch_for_training(model: nn.Module, cfg: FinetuneConfig) -> str | None:
    """Patch when asked; return the adapter kind recorded in the result: fusion, "native" or None."""
    adapter = get_adapter(model)
    state = get_state(model)
    if state is None and cfg.adapters is not None:
        with torch.random.fork_rng(devices=[]):  # "replace" adapters draw their init from the RNG
            torch.manual_seed(cfg.seed)
            patch(model, "skip-dit", fusion=None if adapter.native_skips else cfg.adapters)
        state = get_state(model)
    if state is not None and state.lscs is not None:
        return state.fusion
    if adapter.native_skips:
        return "native"
    if cfg.adapter_steps > 0:
        raise ValueError(
            f"adapter_steps > 0 but this {type(model).__name__} has no long-skip adapters (adapters=None); "
            "use adapters='residual' / 'replace', or train it with full_steps only"
        )
    return None


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

    ``data``: a `dit_cache.data` source (``"mnist"``, ``"moving-mnist"``, a folder, an
    ``InMemoryDataset``, a tensor or ``(tensor, labels)``). ``config`` / ``**options``: the fields
    of :class:`FinetuneConfig`. ``vae``: encode with this VAE (default: the pipeline's; none for a
    bare model = pixel space). ``noise_scheduler``: the training noise schedule source (default:
    the pipeline's scheduler config, else the DiT schedule). ``resume``: True resumes from the
    newest checkpoint in ``output_dir/checkpoints`` (starting fresh when there is none), a path
    resumes from that checkpoint. ``callback(record, trainer)`` runs after every step on every
    rank. ``metadata`` is stored in ``finetune.json`` (e.g. the command line).
    """
    cfg = _resolve_config(config, options)
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
    ctx = setup_distributed(device)
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


def _finetune(model, pipe, family, data, output_dir, cfg, vae, noise_scheduler, resume, callback, device,
              metadata, ctx, notes, warn) -> FinetuneResult:
    from rich.console import Console

    from .data import DataError, load_data

    console = Console(stderr=True)
    checkpoints = output_dir / "checkpoints"
    existing = list_checkpoints(checkpoints)
    resume_path = None
    if resume is True:
        resume_path = existing[-1] if existing else None
    elif resume:
        resume_path = Path(resume)
    elif existing:
        raise ValueError(
            f"{output_dir} already holds checkpoints (newest {existing[-1].name}); resume=True (--resume) "
            "continues that run, or choose another output folder"
        )
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()

    # ---- noise schedule, VAE, data ------------------------------------------------------
    scheduler = training_scheduler(noise_scheduler if noise_scheduler is not None else pipe,
                                   prediction_type=cfg.prediction_type, beta_schedule=cfg.beta_schedule)
    objective = DiffusionObjective(scheduler)
    if vae is None and pipe is not None:
        vae = getattr(pipe, "vae", None)
    mc = model.config
    video = family == "latte"
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
    latent_hw = tuple(probe.shape[-2:])
    if latent_hw != (int(mc.sample_size), int(mc.sample_size)):
        warn(f"training at {latent_hw[0]}x{latent_hw[1]}, the model's sample_size is {mc.sample_size}")
    conditioning = build_conditioning(family, model, dataset, pipe, latent_hw=latent_hw, vae_scale=scale,
                                      device=device, warn=warn)

    # ---- model --------------------------------------------------------------------------
    was_training = model.training
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    adapters = _patch_for_training(model, cfg)
    _seed_everything(cfg.seed + ctx.rank)
    ctx.broadcast_module(model)
    bound = cfg.spectral_bound
    if bound == "auto":
        if has_skip_projections(model):
            from ..runtime.spectral import spectral_norms

            bound = max([1.0] + list(spectral_norms(model).values()))
        else:
            bound = None
    if not has_skip_projections(model):
        bound = None

    trainer = Trainer(model=model, family=family, config=cfg, source=source, conditioning=conditioning,
                      objective=objective, ctx=ctx, device=device, output_dir=output_dir, spectral_bound=bound,
                      callback=callback, log_console=console)
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

    # ---- result -------------------------------------------------------------------------
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
