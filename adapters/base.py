"""What dit-cache's runtime needs to know about a backbone family.

A backbone is seen as a stack of *units* (a DiT block; a Latte (spatial, temporal) pair; a
Hunyuan-DiT block). Unit `j < U/2` is shallow and feeds deep unit `U-1-j` through a long skip.
Hooks sit on the blocks of each unit; the first block of a unit is its *entry*: the skip
fusion and the Skip-Cache substitution happen on the entry block's input.

How a block takes and returns its token streams is its `BlockIO`; which attention and MLP
submodules the layer-reuse methods (FORA, PAB) reach are its `reuse_sites`. The tooling-side
description (configs, conditioning, pipelines) is the family's `FamilySpec` (adapters/family.py).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._common.skip_defaults import SkipCacheDefaults  # noqa: F401  (re-exported: adapters set it)


@dataclass(frozen=True)
class BlockIO:
    """Where a block's token streams are in its arguments and in its return value.

    `inputs` names the stream arguments, which the block takes first and in this order
    (positionally or by name). The first is the image stream (`hidden_states`): the one long
    skips carry and fuse. `outputs` is the order of the streams in the tuple the block returns,
    or None when it returns the image stream alone. A two-stream block (SD3 / Flux joint blocks)
    is ``BlockIO(("hidden_states", "encoder_hidden_states"), ("encoder_hidden_states",
    "hidden_states"))``: methods pass the text stream through untouched."""

    inputs: tuple[str, ...] = ("hidden_states",)
    outputs: tuple[str, ...] | None = None

    def read(self, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The input streams, in `inputs` order."""
        return tuple(args[i] if i < len(args) else kwargs[name] for i, name in enumerate(self.inputs))

    def write(self, args: tuple, kwargs: dict[str, Any], streams: tuple[torch.Tensor, ...]):
        """`(args, kwargs)` with the input streams replaced by `streams`."""
        args, kwargs = list(args), dict(kwargs)
        for i, (name, value) in enumerate(zip(self.inputs, streams)):
            if i < len(args):
                args[i] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def output_streams(self, output) -> tuple[torch.Tensor, ...]:
        """A block's return value as its streams in `inputs` order (the inverse of `returned`)."""
        if self.outputs is None:
            return (output,)
        by_name = dict(zip(self.outputs, output))
        return tuple(by_name[name] for name in self.inputs)

    def returned(self, streams: tuple[torch.Tensor, ...]):
        """What the block returns for these streams: a skipped block passes its input through."""
        if self.outputs is None:
            return streams[0]
        by_name = dict(zip(self.inputs, streams))
        return tuple(by_name[name] for name in self.outputs)


SINGLE_STREAM = BlockIO()


@dataclass(frozen=True)
class Site:
    """One attention or MLP submodule that FORA / PAB may reuse."""

    name: str  # qualified name in the model, e.g. "temporal_transformer_blocks.2.attn1"
    #: "spatial" | "temporal" (self-attention), "cross" (attention), "mlp", or "fused" (see `reads`)
    kind: str
    block: int  # index of its block within its stack (Latte: spatial and temporal stacks)
    #: qualified name of the normalization only this submodule reads (see `input_norm`), or None
    norm: str | None = None
    #: a "fused" site (FLUX's single-block `proj_out`, the output projection of attention and MLP
    #: together) is a function of these sites' outputs alone: it hands back its stored output
    #: exactly when every one of them handed back the very outputs it was computed from, which
    #: makes it free in fidelity, whatever the method
    reads: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.kind if self.kind in ("mlp", "fused") else "attn"


def plain_norm(module: nn.Module | None) -> nn.Module | None:
    """`module` if it is a LayerNorm / RMSNorm (a function of its input alone), else an adaptive
    norm's inner one (`.norm`: its modulation outputs, e.g. adaLN-zero's gates, are read
    elsewhere in the block and still run), else None."""
    from diffusers.models.normalization import RMSNorm

    for m in (module, getattr(module, "norm", None)):
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm, RMSNorm)):
            return m
    return None


class BackboneAdapter:
    """Describes one diffusers model class. Subclass it and pass it to `register_adapter`."""

    #: diffusers class this adapter handles (subclasses are matched too)
    model_class: type[nn.Module]
    #: True when the model already carries its own long skips (nothing is inserted)
    native_skips: bool = False
    #: name of the timestep argument of the model's forward
    timestep_arg: str = "timestep"
    defaults: SkipCacheDefaults = SkipCacheDefaults()
    #: how every block of the model takes and returns its streams
    block_io: BlockIO = SINGLE_STREAM
    #: block attribute -> site kind for `reuse_sites`; "self": self-attention, "spatial" or
    #: "temporal" by the block's stack (or "cross" where the module says is_cross_attention)
    site_attrs: dict[str, str] = {"attn1": "self", "attn2": "self", "ff": "mlp"}
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

    def reuse_sites(self, model: nn.Module) -> list[tuple[Site, nn.Module]]:
        """The `site_attrs` submodules of every block (default: `attn1`, `attn2`, `ff`).

        A "self" attention module with ``is_cross_attention`` is "cross"; other attention is
        "temporal" when its block's name contains "temporal" (Latte's
        `temporal_transformer_blocks`), else "spatial". Override for blocks laid out otherwise."""
        names = {id(m): n for n, m in model.named_modules()}
        sites: list[tuple[Site, nn.Module]] = []
        for index, blocks in enumerate(self.units(model)):
            for block in blocks:
                stack = "temporal" if "temporal" in names[id(block)] else "spatial"
                for attr, kind in self.site_attrs.items():
                    sub = getattr(block, attr, None)
                    if not isinstance(sub, nn.Module):
                        continue
                    if kind == "self":
                        kind = "cross" if getattr(sub, "is_cross_attention", False) else stack
                    norm = self.input_norm(block, attr)
                    sites.append((Site(names[id(sub)], kind, index, names[id(norm)] if norm is not None else None), sub))
        return sites

    def input_norm(self, block: nn.Module, attr: str) -> nn.Module | None:
        """The normalization whose output only `block.<attr>` reads. On a call where that site
        hands back its stored output, nothing reads it, so it is not computed (on a small model
        the norms are most of a reuse step's time). None: unknown, it always runs.

        Default: diffusers' `BasicTransformerBlock` (DiT, Latte, PixArt), whose norms depend on
        its `norm_type`. Override for other blocks; a wrong answer changes outputs, which the
        table-driven test against an unskipped run catches."""
        from diffusers.models.attention import BasicTransformerBlock

        if not isinstance(block, BasicTransformerBlock):
            return None
        single = block.norm_type == "ada_norm_single"  # PixArt's layout: no norm before attn2
        norm = {"attn1": block.norm1, "attn2": None if single else block.norm2,
                "ff": block.norm2 if single else block.norm3}[attr]
        return plain_norm(norm)

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
