"""The options (`FinetuneConfig`) and the return value (`FinetuneResult`) of `dit_cache.finetune`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .optim import LR_SCHEDULES

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
        if not (b is None or b == "auto" or (_finite(b) and b > 0)):
            raise ValueError(f"spectral_bound must be a finite number > 0, 'auto' or None, got {b!r}")
        for name, low, optional in (("lr", 0, False), ("adapter_lr", 0, True), ("adam_eps", 0, False),
                                    ("max_grad_norm", 0, True), ("skip_grad_norm_above", 0, True)):
            v = getattr(self, name)
            if not ((optional and v is None) or (_finite(v) and v > low)):
                raise ValueError(f"{name} must be a finite number > {low}{' or None' if optional else ''}, got {v!r}")
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if len(tuple(self.betas)) != 2 or not all(_finite(x) and 0 <= x < 1 for x in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for name in ("resolution", "num_frames", "threads"):
            v = getattr(self, name)
            if v is not None and not (_integer(v) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {v!r}")
        for name, low in (("frame_stride", 1), ("encode_batch_size", 1), ("seed", 0)):
            if not (_integer(getattr(self, name)) and getattr(self, name) >= low):
                raise ValueError(f"{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        if self.keep_checkpoints is not None and not (_integer(self.keep_checkpoints) and self.keep_checkpoints >= 0):
            raise ValueError(f"keep_checkpoints must be an integer >= 0 (0 or None: all), got {self.keep_checkpoints!r}")
        self.betas = tuple(self.betas)

    def comparable(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUME_FREE}

    def check_resumable(self, saved: dict, path) -> None:
        mine = self.comparable()
        diff = sorted(k for k in set(mine) | set(saved) if _norm(mine.get(k)) != _norm(saved.get(k)))
        if diff:
            shown = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in diff[:4])
            raise ValueError(f"cannot resume from {path}: the configuration changed ({shown})")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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


def resolve_config(config: FinetuneConfig | None, overrides: dict) -> FinetuneConfig:
    """A validated copy of ``config`` (default: the defaults) with the keyword ``overrides``."""
    cfg = dataclasses.replace(config) if config is not None else FinetuneConfig()
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown finetune option(s) {unknown}; valid: {sorted(fields)}")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg
