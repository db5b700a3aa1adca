"""Shared by the peer tests: tiny runners, a model's full state, Linear-call counting, and
installing a bench peer for one generation."""
from __future__ import annotations

import torch
from torch import nn

from dit_cache.bench.install import apply_method
from dit_cache.bench.runners import RunSettings, load_runner
from dit_cache.bench.specs import parse_methods
from dit_cache.testing import transformer_blocks

STEPS = 6


def tiny_runner(name: str = "tiny-dit", steps: int = STEPS):
    """The built-in tiny model (seed 0: every call builds the same weights) in its sampling loop."""
    return load_runner(name, RunSettings(steps=steps, loop=True))


def spec(text: str):
    (out,) = parse_methods([text])
    return out


def model_state(model: nn.Module) -> dict:
    """Everything removal must restore: each module's attributes, children, hooks, and the
    state dict (names and values)."""
    modules = {
        name: (sorted(m.__dict__), m.__dict__.get("forward"), sorted(m._modules), len(m._forward_pre_hooks),
               len(m._forward_hooks))
        for name, m in model.named_modules()
    }
    return {"modules": modules, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


def run_peer(runner, text: str, prepared=None):
    """(final latents, applied) of one generation with the bench peer `text` installed; removed after."""
    applied = apply_method(spec(text), runner)
    try:
        applied.before_generation()
        return runner.generate(prepared if prepared is not None else runner.prepare(0)), applied
    finally:
        applied.remove()


class LinearCalls:
    """Per transformer call and block: how many of the block's nn.Linear modules ran
    (``per_call[call][block]``; `per_call_total`: summed over the blocks)."""

    def __init__(self, model: nn.Module):
        blocks = [b for _, b in transformer_blocks(model)]
        self.per_call: list[list[int]] = []
        self.handles = [
            m.register_forward_pre_hook(self._counter(i))
            for i, b in enumerate(blocks) for m in b.modules() if isinstance(m, nn.Linear)
        ]
        self.handles.append(model.register_forward_pre_hook(lambda *_: self.per_call.append([0] * len(blocks))))

    def _counter(self, block: int):
        def count(*_):
            self.per_call[-1][block] += 1
        return count

    @property
    def per_call_total(self) -> list[int]:
        return [sum(c) for c in self.per_call]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
