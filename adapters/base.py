"""What dit-cache needs to know about a backbone family.

A backbone is seen as a stack of *units* (a DiT block; a Latte (spatial, temporal) pair; a
Hunyuan-DiT block). Unit `j < U/2` is shallow and feeds deep unit `U-1-j` through a long skip.
Hooks sit on the blocks of each unit; the first block of a unit is its *entry*: the skip
fusion and the Skip-Cache substitution happen on the entry block's input.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class SkipCacheDefaults:
    """Per-backbone Skip-Cache defaults from the Skip-DiT reference."""

    interval: int = 2
    shallow: int = 1  # units computed at each end on a cached step
    start: float = 1000.0  # every step with t >= start is full
    close: float = 50.0  # every step after one with t <= close is full


class BackboneAdapter:
    """Describes one diffusers model class. Subclass it and pass it to `register_adapter`."""

    #: diffusers class this adapter handles (subclasses are matched too)
    model_class: type[nn.Module]
    #: True when the model already carries its own long skips (nothing is inserted)
    native_skips: bool = False
    #: name of the timestep argument of the model's forward
    timestep_arg: str = "timestep"
    defaults: SkipCacheDefaults = SkipCacheDefaults()
    #: block-module class names whose attention / MLP the FORA/PAB methods may reach
    family: str = "?"

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        """The blocks of every unit in execution order; the first block of a unit is its entry."""
        raise NotImplementedError

    def hidden_dim(self, model: nn.Module) -> int:
        raise NotImplementedError

    def pairs(self, model: nn.Module) -> list[tuple[int, int]]:
        """(shallow unit, deep unit) long-skip pairs. Default: j feeds U-1-j for j < U/2."""
        n = len(self.units(model))
        return [(j, n - 1 - j) for j in range(n // 2)]

    def native_skip_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Native skip norm/linear modules by state-dict prefix (empty unless native_skips)."""
        return {}

    def native_skip_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        return {}

    def max_shallow(self, model: nn.Module) -> int:
        """Largest k such that a cached step still skips at least one unit and every deep unit
        that runs has its long skip."""
        n_units = len(self.units(model))
        return max(0, (n_units - 1) // 2)

    # -- reading the model's forward arguments --------------------------------------------
    def timestep(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.timestep_arg in kwargs:
            return kwargs[self.timestep_arg]
        idx = _positional_index(type(model), self.timestep_arg)
        return args[idx] if idx < len(args) else None


@functools.lru_cache(maxsize=None)
def _positional_index(cls: type, name: str) -> int:
    """Position of a forward argument (without self); cached per class: inspect.signature
    costs ~40 us, paid on every positional-timestep call otherwise."""
    return list(inspect.signature(cls.forward).parameters)[1:].index(name)


def block_hidden_states(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """Every supported block takes hidden_states first, positionally or by name."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden_states(args: tuple, kwargs: dict[str, Any], x: torch.Tensor):
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}
