"""The training loop of `dit_cache.finetune` (the public API: finetuning.api): stages, one
optimizer step, checkpoints and resumption, the step log."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..runtime.spectral import cap_spectral_norm_, spectral_norms
from .batches import BatchOrder
from .checkpoints import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .._common.dist import DistContext
from .model import adapter_parameter_names, has_skip_projections, no_builtin_label_dropout
from .objective import DiffusionObjective, timestep_for_model
from .optim import EMA, lr_at
from .._common.progress import ProgressBar

STAGES = ("adapters", "full")


def _step_of(line: str) -> float:
    """Step of a log line; a torn or foreign line sorts after every checkpoint (dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _num(x: float):
    """JSON-safe number: non-finite values become strings ("nan", "inf")."""
    return x if math.isfinite(x) else str(x)


class Trainer:
    """One training run. Public attributes for callbacks: ``model`` (the unwrapped model),
    ``ema``, ``optimizer``, ``step`` (completed steps), ``skipped``, ``stage``, ``ctx``."""

    def __init__(
        self,
        *,
        model: nn.Module,
        family: str,
        config,
        source,
        conditioning,
        objective: DiffusionObjective,
        ctx: DistContext,
        device: torch.device,
        output_dir: Path,
        spectral_bound: float | None,
        callback: Callable[[dict, "Trainer"], Any] | None,
        log_console,
    ):
        self.model, self.family, self.cfg = model, family, config
        self.source, self.cond, self.objective = source, conditioning, objective
        self.ctx, self.device, self.output_dir = ctx, device, Path(output_dir)
        self.spectral_bound, self.callback, self.console = spectral_bound, callback, log_console
        self.stages = [(name, n) for name, n in zip(STAGES, (config.adapter_steps, config.full_steps)) if n > 0]
        self.total = sum(n for _, n in self.stages)
        if config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {ctx.world_size} processes")
        self.order = BatchOrder(len(source), config.batch_size // ctx.world_size, ctx, config.seed)
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + ctx.rank)
        self.adapter_names = set(adapter_parameter_names(model))
        self.has_projections = has_skip_projections(model)
        self.step, self.skipped, self.stage = 0, 0, None
        self.optimizer, self.ddp = None, model
        self.ema = EMA(model, config.ema_decay, config.ema_warmup) if config.ema_decay is not None else None
        self.records: list[dict] = []
        self.log_path = self.output_dir / "train_log.jsonl"
        self.dtype = next(model.parameters()).dtype

    # -- stages --------------------------------------------------------------------------
    def stage_of(self, step: int) -> tuple[int, int, int]:
        """(stage index, 0-based step within the stage, stage length) of the 0-based global step."""
        start = 0
        for i, (_, n) in enumerate(self.stages):
            if step < start + n:
                return i, step - start, n
            start += n
        raise IndexError(step)

    def setup_stage(self, index: int):
        name = self.stages[index][0]
        for n, p in self.model.named_parameters():
            p.requires_grad_(name == "full" or n in self.adapter_names)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("stage 'adapters' has no parameters to train: the model has no long-skip adapters")
        lr = self.cfg.adapter_lr if (name == "adapters" and self.cfg.adapter_lr is not None) else self.cfg.lr
        self.base_lr = lr
        self.optimizer = torch.optim.AdamW(
            params, lr=lr, betas=tuple(self.cfg.betas), weight_decay=self.cfg.weight_decay, eps=self.cfg.adam_eps
        )
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = None  # drop the previous wrapper (and its reducer) first
            self.ddp = DDP(self.model, find_unused_parameters=False)
        self.stage = index

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        return {
            "format": "dit-cache-finetune-checkpoint",
            "step": self.step,
            "stage": self.stage,
            "skipped": self.skipped,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "order": self.order.state_dict(),
            "spectral_bound": self.spectral_bound,
            "world_size": self.ctx.world_size,
            "config": self.cfg.comparable(),
        }

    def save_checkpoint(self):
        state = self.checkpoint_state() if self.ctx.is_main else None
        return save_checkpoint(
            self.output_dir / "checkpoints", self.step, state, capture_rng(self.generator), self.ctx,
            self.cfg.keep_checkpoints,
        )

    def resume_from(self, path: Path):
        state, rng = load_checkpoint(path, self.ctx.rank)
        if state.get("world_size") != self.ctx.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {state.get('world_size')} processes, this run has "
                f"{self.ctx.world_size}: resume with the same number of processes"
            )
        self.cfg.check_resumable(state["config"], path)
        self.model.load_state_dict(state["model"])
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.spectral_bound = state["spectral_bound"]
        self.setup_stage(int(state["stage"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.order.load_state_dict(state["order"])
        restore_rng(rng, self.generator)
        if self.ctx.is_main and self.log_path.exists():  # drop records written after the checkpoint
            kept = [ln for ln in self.log_path.read_text(encoding="utf-8").splitlines() if _step_of(ln) <= self.step]
            self.log_path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")

    # -- one step ------------------------------------------------------------------------
    def train_step(self) -> dict:
        stage, in_stage, stage_len = self.stage_of(self.step)
        if stage != self.stage:
            self.setup_stage(stage)
        cfg, g = self.cfg, self.generator
        idx = self.order.next()
        x0 = self.source.get(idx, g)
        drop = torch.rand(len(idx), generator=g) < cfg.cond_dropout
        noisy, t, target = self.objective.draw(x0, g)
        kwargs = self.cond.kwargs(idx, drop, self.device)
        timestep = timestep_for_model(self.family, t, self.dtype).to(self.device)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = self.ddp(noisy.to(self.device, self.dtype), timestep=timestep, **kwargs, return_dict=False)[0]
        loss = self.objective.loss(out, target.to(self.device))
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = lr_at(self.base_lr, in_stage, stage_len, min(cfg.warmup_steps, stage_len), cfg.lr_schedule)
        ok = math.isfinite(grad_norm) and (cfg.skip_grad_norm_above is None or grad_norm <= cfg.skip_grad_norm_above)
        sigmas = None
        if ok:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            if self.spectral_bound is not None and self.has_projections:
                before = cap_spectral_norm_(self.model, self.spectral_bound)
                sigmas = {k: min(v, self.spectral_bound) for k, v in before.items()}
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        if sigmas is None and self.has_projections:
            sigmas = spectral_norms(self.model)
        self.step += 1
        record = {
            "step": self.step,
            "stage": self.stages[stage][0],
            "loss": _num(self.ctx.mean(float(loss.detach()))),
            "lr": lr,
            "grad_norm": _num(grad_norm),
            "skipped_step": not ok,
            "skipped": self.skipped,
            "sigma_max": max(sigmas.values()) if sigmas else None,
            "sigmas": sigmas,
            "epoch": self.order.epoch,
        }
        return record

    # -- the run -------------------------------------------------------------------------
    def run(self, progress: bool) -> list[dict]:
        cfg = self.cfg
        if self.stage is None and self.step < self.total:
            self.setup_stage(self.stage_of(self.step)[0])
        log = open(self.log_path, "a", encoding="utf-8") if self.ctx.is_main else None
        bar = ProgressBar(
            "[bold]finetune[/bold] {task.fields[stage]}", self.total, enabled=progress and self.ctx.is_main,
            console=self.console, completed=self.step, fields={"loss": "loss {}", "rate": "{} step/s", "stage": None},
            remaining=True,
        )
        self.model.train()
        start = time.perf_counter()
        first = self.step
        try:
            with bar, no_builtin_label_dropout(self.model):
                while self.step < self.total:
                    record = self.train_step()
                    record["elapsed"] = round(time.perf_counter() - start, 4)
                    self.records.append(record)
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    done = self.step - first
                    loss, rate = record["loss"], done / max(1e-9, time.perf_counter() - start)
                    shown = f"{loss:.4f}" if isinstance(loss, float) else str(loss)
                    bar.update(completed=self.step, loss=shown, rate=f"{rate:.2f}", stage=record["stage"])
                    if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == self.total):
                        self.save_checkpoint()
                    if self.callback is not None:
                        self.callback(record, self)
        finally:
            if log is not None:
                log.close()
            self.ddp = self.model
        self.seconds = time.perf_counter() - start
        self.steps_run = self.step - first
        self.ctx.check_same(self.model)
        return self.records
