"""Seeded transformers of the built-in model configs (each family's, from its FamilySpec) and
random forward inputs for them.

Random initialisation: :func:`build_transformer` draws weights under ``torch.manual_seed(seed)``
inside :func:`torch.random.fork_rng` (the caller's global RNG is left untouched), so the same
seed gives bit-identical weights. The original DiT / PixArt / Hunyuan training code
zero-initialises the adaLN modulation and output projections ("adaLN-zero"), which makes every
block an identity map at init and would let a caching bug (a skipped or reused block) go
unnoticed in tests. diffusers 0.42 builds those layers with PyTorch's default (non-zero)
``nn.Linear`` init; as a safeguard for other diffusers versions, tiny models additionally get
every ``nn.Linear`` whose weight is identically zero re-initialised from N(0, 0.02) (weight and
bias), see :func:`reinit_zero_linears`. The tests check that perturbing any single block
changes the output.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from ..adapters.family import all_model_configs, family_spec, families, spec_for_model

MODEL_CONFIGS: dict[str, dict[str, Any]] = all_model_configs()
TINY_MODELS: tuple[str, ...] = tuple(n for n, c in MODEL_CONFIGS.items() if c["tiny"])


def model_config(name: str) -> dict[str, Any]:
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_CONFIGS)}") from None


def family_of(name_or_family: str) -> str:
    """``"dit"`` / ``"latte"`` / ``"hunyuan"`` for a model name (or a family name)."""
    if name_or_family in {spec.name for spec in families()}:
        return name_or_family
    return model_config(name_or_family)["family"]


@torch.no_grad()
def reinit_zero_linears(model: torch.nn.Module, std: float = 0.02) -> list[str]:
    """Give every ``nn.Linear`` whose weight is identically zero small random values (from the
    current, seeded RNG). Returns the names of re-initialised modules."""
    changed = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not torch.any(mod.weight):
            mod.weight.normal_(0.0, std)
            if mod.bias is not None:
                mod.bias.normal_(0.0, std)
            changed.append(mod_name)
    return changed


def build_transformer(
    name: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Build the diffusers transformer for ``name`` with seeded random weights.

    The model is returned in eval mode with ``requires_grad`` off for every parameter
    (call ``.requires_grad_(True)`` / ``.train()`` to fine-tune).

    ``device="meta"`` builds without allocating weights (use it for the real-size
    configs in tests). On other devices the weights are drawn on the CPU in float32 under
    ``torch.manual_seed(seed)`` (global RNG state is restored afterwards), then moved to
    ``device`` / ``dtype``; the same seed gives bit-identical weights. Tiny models also get
    zero-initialised linears re-initialised (see module docstring).
    """
    cfg = model_config(name)
    cls = family_spec(cfg["family"]).transformer_class
    kwargs = copy.deepcopy(cfg["transformer"])
    if torch.device(device).type == "meta":
        with torch.device("meta"):
            model = cls(**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(**kwargs)
            if cfg["tiny"]:
                reinit_zero_linears(model)
    if dtype != torch.float32 or torch.device(device).type not in ("cpu", "meta"):
        # nn.Module.to, not ModelMixin.to: diffusers 0.42 warns about "modules that should be
        # kept in float32: []" on every dtype cast even when there are none.
        torch.nn.Module.to(model, device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def transformer_blocks(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The transformer's blocks as ``(qualified_name, module)`` in execution order (the blocks
    of its adapter's units: DiT ``transformer_blocks.i``; Latte ``transformer_blocks.i``
    (spatial) interleaved with ``temporal_transformer_blocks.i``; Hunyuan ``blocks.i``)."""
    names = {id(m): n for n, m in transformer.named_modules()}
    units = spec_for_model(transformer).adapter_class().units(transformer)
    return [(names[id(block)], block) for unit in units for block in unit]


def transformer_inputs(
    name: str,
    batch: int = 2,
    seed: int = 0,
    timestep: int | float = 500,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    transformer: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Random, correctly shaped kwargs for ``transformer(**inputs)`` (seeded, no global RNG use).

    Shapes follow the family's pipeline at the config's native latent size:

    * dit: ``hidden_states`` (B, C, S, S), ``timestep`` int64 (B,), ``class_labels`` int64 (B,)
    * latte: ``hidden_states`` (B, C, F, S, S) with F = ``video_length``, ``timestep`` int64,
      ``encoder_hidden_states`` (B, 16, caption_channels)
    * hunyuan: ``hidden_states`` (B, C, S, S), ``timestep`` float (B,),
      ``encoder_hidden_states`` (B, text_len, cross_attention_dim) + ``text_embedding_mask``,
      ``encoder_hidden_states_t5`` (B, text_len_t5, cross_attention_dim_t5) +
      ``text_embedding_mask_t5``, ``image_meta_size`` (B, 6), ``style`` (B,),
      ``image_rotary_emb`` (cos, sin) as the pipeline builds it.

    ``return_dict=False`` is included, so ``transformer(**inputs)[0]`` is the output tensor.
    ``transformer`` is only used for Hunyuan's RoPE (any instance of the config works; a
    meta-device one is fine).
    """
    cfg = model_config(name)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    inputs = family_spec(cfg["family"]).transformer_inputs(
        cfg["transformer"], batch=batch, timestep=timestep, randn=randn, generator=g, device=device, dtype=dtype,
        transformer=transformer,
    )
    return dict(inputs, return_dict=False)
