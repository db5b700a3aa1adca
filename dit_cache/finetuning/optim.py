"""Optimisation state of `dit_cache.finetune` besides AdamW: the EMA of the weights and the
learning-rate schedule of a stage."""
from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "cosine", "linear")


class EMA:
    """Exponential moving average of every parameter of a model (float32 shadows).

    ``decay_t = min(decay, (1 + n) / (10 + n))`` after n updates when ``warmup`` is on (so short
    runs are not dominated by the initial weights), else ``decay``. Only parameters that require
    grad are updated; the others do not change during training anyway."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        d = self.current_decay()
        for n, p in model.named_parameters():
            if p.requires_grad:
                self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def swap_into(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Copy the EMA weights into the model; return the weights it held (for `restore`)."""
        backup = {}
        for n, p in model.named_parameters():
            backup[n] = p.detach().clone()
            p.copy_(self.shadow[n].to(p.dtype))
        return backup

    @staticmethod
    @torch.no_grad()
    def restore(model: torch.nn.Module, backup: dict[str, torch.Tensor]):
        for n, p in model.named_parameters():
            p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict):
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        self.decay, self.warmup, self.updates = state["decay"], state["warmup"], int(state["updates"])
        self.shadow = {k: v.float().clone() for k, v in state["shadow"].items()}


def lr_at(base_lr: float, step_in_stage: int, stage_steps: int, warmup: int, schedule: str) -> float:
    """Learning rate of the (0-based) step `step_in_stage` of a stage: linear warm-up over
    `warmup` steps, then constant / cosine to 0 / linear to 0 over the rest of the stage."""
    if warmup > 0 and step_in_stage < warmup:
        return base_lr * (step_in_stage + 1) / warmup
    if schedule == "constant":
        return base_lr
    span = max(1, stage_steps - warmup)
    frac = min(1.0, (step_in_stage - warmup) / span)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return base_lr * (1.0 - frac)
    raise ValueError(f"unknown lr schedule {schedule!r}")

