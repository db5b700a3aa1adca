"""Atomic, resumable checkpoints of `dit_cache.finetune`, with every rank's RNG states.

A checkpoint is a folder ``checkpoints/checkpoint-<step:08d>/`` holding ``state.pt`` (model,
EMA, optimizer, counters, data position, config; written by rank 0) and ``rng-rank<r>.pt``
(each rank's torch / numpy / python RNG states and its training generator). Every file is
written into ``.checkpoint-<step>.tmp/`` first and the folder is renamed when all ranks are done,
so a checkpoint folder is complete or absent (a ``.checkpoint-*.tmp`` folder left by a killed run is
removed by the next save). Loading uses ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .._common.dist import DistContext

CHECKPOINT_PREFIX = "checkpoint-"


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
        for stale in root.glob(f".{CHECKPOINT_PREFIX}*.tmp"):  # this one, and any a killed run left
            shutil.rmtree(stale)
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
