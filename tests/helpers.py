"""Shared test utilities: independent counting of real block executions and references."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dit_cache.runtime.registry import get_adapter


class ExecutionCounter:
    """Counts blocks that really execute by hooking a submodule *inside* each block (its
    self-attention): a block whose call is skipped never reaches it. Independent of
    dit-cache's own counters."""

    def __init__(self, model: torch.nn.Module):
        self.count = 0
        self.per_unit: dict[int, int] = {}
        self._handles = []
        for u, blocks in enumerate(get_adapter(model).units(model)):
            for block in blocks:
                attn = getattr(block, "attn1", None) or block.attn  # SD3 / FLUX blocks: `attn`
                self._handles.append(attn.register_forward_pre_hook(self._hook(u)))

    def _hook(self, unit: int):
        def hook(module, args):
            self.count += 1
            self.per_unit[unit] = self.per_unit.get(unit, 0) + 1

        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


def blocks_per_unit(model) -> int:
    return len(get_adapter(model).units(model)[0])


def expected_block_calls(model, pattern: str, calls_per_step: int, shallow: int) -> int:
    """Blocks a Skip-Cache run must execute for a given F/c pattern."""
    units = len(get_adapter(model).units(model))
    per_unit = blocks_per_unit(model)
    full = pattern.count("F") * units * per_unit
    cached = pattern.count("c") * 2 * shallow * per_unit
    return (full + cached) * calls_per_step


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def set_family_timesteps(sched, name: str, steps: int) -> None:
    """`sched.set_timesteps(steps)` as the pipeline of tiny model `name` does it (FLUX shifts by
    the image size)."""
    from dit_cache.adapters import family_spec
    from dit_cache.testing import family_of, model_config

    family_spec(family_of(name)).set_timesteps(sched, steps, resolution=model_config(name)["resolution"])


def model_t(name: str, t: float):
    """The timestep value the family's pipeline hands its transformer (FLUX: t / 1000)."""
    from dit_cache.adapters import family_spec
    from dit_cache.testing import family_of

    return family_spec(family_of(name)).model_timestep(t)


def calls_per_step(name: str, cfg: bool = True) -> int:
    """Model calls per denoising step of the family's pipeline: 2 where CFG is two sequential
    calls (Wan: cond, then uncond), else 1 (batched CFG, or none)."""
    from dit_cache.adapters import family_spec
    from dit_cache.testing import family_of

    return 2 if cfg and not family_spec(family_of(name)).cfg_batched_kwargs else 1


class NormOps(TorchDispatchMode):
    """Counts the normalization kernels that really run (aten level, below every hook), and the
    elements the elementwise add / mul kernels write (`elementwise`)."""

    OPS = {"native_layer_norm", "rms_norm", "_fused_rms_norm"}
    ELEMENTWISE = {"add", "mul", "addcmul"}

    def __init__(self):
        super().__init__()
        self.n = 0
        self.elementwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.n += name in self.OPS
        out = func(*args, **(kwargs or {}))
        if name in self.ELEMENTWISE and isinstance(out, torch.Tensor):
            self.elementwise += out.numel()
        return out
