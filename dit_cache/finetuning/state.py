"""Training state of `dit_cache.finetune`: distributed context, EMA, learning-rate schedule,
RNG capture and atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoints/checkpoint-<step:08d>/`` holding ``state.pt`` (model,
EMA, optimizer, counters, data position, config; written by rank 0) and ``rng-rank<r>.pt``
(each rank's torch / numpy / python RNG states and its training generator). Every file is
written into ``.checkpoint-<step>.tmp/`` first and the folder is renamed when all ranks are done,
so a checkpoint folder is complete or absent. Loading uses ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINT_PREFIX = "checkpoint-"


# ----------------------------------------------------------------------------------------
# Distributed
# ----------------------------------------------------------------------------------------


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # finetune initialised the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t) / self.world_size

    def broadcast_module(self, module: torch.nn.Module):
        if self.enabled:
            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    dist.broadcast(t.data, 0)

    @torch.no_grad()
    def check_same(self, module: torch.nn.Module):
        """Raise if the ranks' parameters differ (a per-parameter float64 checksum, all-gathered)."""
        if not self.enabled:
            return
        sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in module.parameters()])
        gathered = [torch.empty_like(sums) for _ in range(self.world_size)]
        dist.all_gather(gathered, sums)
        if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
            raise RuntimeError("the processes' model weights diverged during distributed training")

    def close(self):
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> DistContext:
    """Use an initialised process group, or start one when launched by torchrun (WORLD_SIZE > 1):
    gloo on CPU, nccl on CUDA."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), owns_group=True)


# ----------------------------------------------------------------------------------------
# EMA and learning rate
# ----------------------------------------------------------------------------------------


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


LR_SCHEDULES = ("constant", "cosine", "linear")


# ----------------------------------------------------------------------------------------
# RNG
# ----------------------------------------------------------------------------------------


def capture_rng(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _py_state_to_plain(random.getstate()),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_py_state_from_plain(state["python"]))
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(s):
    version, internal, gauss = s
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _py_state_from_plain(d):
    return (d["version"], tuple(d["internal"]), d["gauss"])


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{CHECKPOINT_PREFIX}{step:08d}"


def _complete(path: Path) -> bool:
    return (path / "state.pt").is_file()


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit() and _complete(p):
            found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(root: Path, step: int, state: dict | None, rng: dict, ctx: DistContext, keep: int | None):
    """Write one checkpoint atomically (see the module docstring). `state` is only needed on rank 0."""
    root = Path(root)
    final = checkpoint_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    ctx.barrier()
    torch.save(rng, tmp / f"rng-rank{ctx.rank}.pt")
    if ctx.is_main:
        torch.save(state, tmp / "state.pt")
    ctx.barrier()
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep is not None and keep > 0:
            for old in list_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return final


def load_checkpoint(path: Path, rank: int) -> tuple[dict, dict]:
    path = Path(path)
    if not _complete(path):
        raise ValueError(f"{path} is not a complete dit-cache finetune checkpoint (no state.pt)")
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise ValueError(f"{path} has no RNG state for rank {rank} (saved with fewer processes?)")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    rng = torch.load(rng_file, map_location="cpu", weights_only=True)
    return state, rng
