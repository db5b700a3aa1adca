"""Step tracking without pipeline cooperation, per patched model instance.

Each call of the model is placed in a generation from its timestep alone:
- t lower than the current step's t  -> the next step of the same generation;
- t equal to the current step's t    -> another CFG branch of the same step (sequential CFG);
- t higher, a first call, a different input signature (batch, resolution, dtype, device),
  or a call after one that raised     -> a new generation with fresh state.
Calls in train mode or with per-sample timesteps are training calls: always full, untracked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class CallContext:
    """What the block hooks need during one forward of the model."""

    step: int
    branch: int
    full: bool
    tracked: bool
    skips: dict[int, torch.Tensor] = field(default_factory=dict)  # unit -> its output


@dataclass
class GenerationStats:
    full_steps: int = 0
    cached_steps: int = 0
    calls: int = 0
    block_calls: int = 0  # transformer blocks actually executed
    blocks_skipped: int = 0
    pattern: list[str] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)  # method-specific counters

    def count(self, key: str, n: int = 1) -> None:
        self.extra[key] = self.extra.get(key, 0) + n


def tensor_bytes(value) -> int:
    """Bytes held by the tensors in a (nested) tuple / list / dict: a cache's memory cost."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


def _first_timestep(t: Any) -> tuple[float | None, bool]:
    """(t as float, uniform across the batch)."""
    if t is None:
        return None, False
    if isinstance(t, torch.Tensor):
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            return None, False
        first = flat[0]
        return float(first), bool((flat == first).all()) if flat.numel() > 1 else True
    return float(t), True


class StepTracker:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.generation = 0 if not hasattr(self, "generation") else self.generation
        self.signature: tuple | None = None
        self.step = -1
        self.branch = 0
        self.t_step: float | None = None
        self.t_prev: float | None = None
        self.step_full = True
        self.caches: dict[int, Any] = {}  # branch -> method state of that CFG branch
        self.stats = GenerationStats()
        self.ctx: CallContext | None = None

    def begin(self, t: Any, signature: tuple, training: bool, decide) -> CallContext:
        """Place a call; `decide(step, t, t_prev) -> bool` says whether a new step is full."""
        t_value, uniform = _first_timestep(t)
        if training or t_value is None or not uniform:
            # A training step (or a call we cannot place): compute everything, forget the
            # generation so no cache built before it is reused after it.
            self.reset()
            self.ctx = CallContext(step=0, branch=0, full=True, tracked=False)
            return self.ctx
        new_generation = (
            self.t_step is None or signature != self.signature or t_value > self.t_step
        )
        if new_generation:
            generation = self.generation + 1
            self.reset()
            self.generation = generation
            self.signature = signature
        if self.t_step is not None and t_value == self.t_step:
            self.branch += 1
        else:
            self.t_prev, self.t_step = self.t_step, t_value
            self.step += 1
            self.branch = 0
            self.step_full = decide(self.step, t_value, self.t_prev)
            self.stats.pattern.append("F" if self.step_full else "c")
            self.stats.timesteps.append(t_value)
            self.stats.full_steps += self.step_full
            self.stats.cached_steps += not self.step_full
        self.stats.calls += 1
        self.ctx = CallContext(step=self.step, branch=self.branch, full=self.step_full, tracked=True)
        return self.ctx

    def end(self) -> None:
        if self.ctx is not None and not torch.is_grad_enabled():
            # Skip tensors are only kept past the forward for activation-checkpoint recompute.
            self.ctx.skips.clear()

    def abort(self) -> None:
        """The forward raised: the next call starts a fresh generation."""
        generation = self.generation
        self.reset()
        self.generation = generation
