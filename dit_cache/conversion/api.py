"""Convert original DiT, released Skip-DiT and Latte-skip checkpoints to diffusers + dit-cache.

``convert(src, out, "dit" | "skip-dit" | "latte-skip")`` reads a ``.pt``/``.pth`` (plain
tensors only: ``torch.load(weights_only=True)``) or ``.safetensors`` checkpoint, picks the
``ema`` / ``model`` / ``state_dict`` / ``module`` sub-dict when present, infers the
architecture from the tensors (``config`` overrides what the tensors cannot tell, such as the
number of heads), maps the weights (see :mod:`dit_cache.conversion.layouts`) and writes into
``out``:

- ``config.json`` + ``diffusion_pytorch_model.safetensors``: the diffusers model
  (``DiTTransformer2DModel`` / ``LatteTransformer3DModel``, ``save_pretrained``);
- ``dit_cache_adapters.safetensors`` (Skip-DiT layouts): the long skips as dit-cache adapters
  in ``"replace"`` mode: ``patch(model, "skip-dit", fusion="replace")`` then
  ``load_adapters(model, out / "dit_cache_adapters.safetensors")`` runs the released model;
- ``dit_cache_convert.json``: what was converted, the inferred config, ignored keys, notes.

Nothing is written unless the whole conversion succeeds: the directory is assembled next to
``out`` under a temporary name and renamed into place.

Import helpers from ``dit_cache.conversion`` (``dit_cache.convert`` is the function).
Modules: ``reading`` (safe loading), ``options`` (config / dtype text), ``layouts/`` (one per
checkpoint kind), ``building`` (model + adapters), ``output`` (the atomic output directory).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .._common.files import remove_stale_temps, temp_prefix
from ..version import __version__
from .building import build_model, check_cast, check_weights, write_adapters
from .errors import ConvertError
from .layouts import LAYOUTS, PLANNERS
from .options import parse_config, resolve_dtype
from .output import ADAPTER_FILE, INFO_FILE, INFO_FORMAT, check_out, commit
from .reading import read_checkpoint

__all__ = ["convert", "ConvertResult", "use_original_dit_timestep_embedding"]


@dataclass
class ConvertResult:
    out: Path
    layout: str
    model_class: str
    config: dict
    adapters: Path | None
    checkpoint_key: str | None  # the sub-dict used ("ema", ...), None for a bare state dict
    ignored_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def convert(
    src,
    out,
    layout: str = "dit",
    *,
    config=None,
    overwrite: bool = False,
    dtype=None,
    checkpoint_key: str | None = None,
    allow_nonfinite: bool = False,
) -> ConvertResult:
    """Convert checkpoint `src` (layout ``"dit"``, ``"skip-dit"`` or ``"latte-skip"``) into the
    diffusers model directory `out` (+ dit-cache adapters for the Skip-DiT layouts).

    `config` overrides what the tensors do not determine (``num_heads``, ``sample_size`` when
    there is no ``pos_embed``, Latte's ``video_length`` ...): a dict, a JSON file, a JSON
    object or ``"k=v,k=v"``. `dtype` (``"float32"``, ``"float16"``, ``"bfloat16"``) casts the
    weights (default: keep the checkpoint's). `checkpoint_key` selects a sub-dict
    (default: the first of ema / model / state_dict / module present). Tensors that are not
    floating point are refused, and so are NaN / infinite weights (before and after the cast)
    unless `allow_nonfinite`. Raises
    :class:`ConvertError` (a ``ValueError``) and writes nothing if anything does not fit."""
    if layout not in PLANNERS:
        raise ConvertError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    out = Path(out).absolute()
    check_out(out, overwrite)
    overrides = parse_config(config)
    sd, picked = read_checkpoint(src, checkpoint_key)
    plan = PLANNERS[layout](sd, overrides)
    check_weights(sd, plan, f"{Path(src)}" + (f" [{picked}]" if picked else ""), allow_nonfinite)
    target = resolve_dtype(dtype, plan.tensors)
    # copy=True: no tensor may share storage with another (qkv chunks, per-block embedder copies)
    tensors = {k: v.detach().to(dtype=target if v.is_floating_point() else v.dtype, copy=True).contiguous() for k, v in plan.tensors.items()}
    skips = {j: {k: v.detach().to(target) for k, v in w.items()} for j, w in plan.skips.items()}
    if dtype is not None:
        check_cast({**tensors, **{f"skip {j}.{k}": v for j, w in skips.items() for k, v in w.items()}}, target, allow_nonfinite)
    model = build_model(plan, tensors)
    for check in plan.checks:
        check(model)

    remove_stale_temps(out.parent)  # folders left by a killed convert
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), dir=out.parent))
    try:
        adapters = None
        if skips:
            write_adapters(model, skips, tmp / ADAPTER_FILE)
            adapters = out / ADAPTER_FILE
        model.save_pretrained(str(tmp), safe_serialization=True)
        info = {
            "format": INFO_FORMAT,
            "format_version": "1",
            "dit_cache_version": __version__,
            "layout": layout,
            "source": str(Path(src).absolute()),
            "source_bytes": Path(src).stat().st_size,
            "checkpoint_key": picked,
            "dtype": str(target).removeprefix("torch."),
            "model_class": plan.model_class.__name__,
            "config": plan.config,
            "adapters": ADAPTER_FILE if skips else None,
            "fusion": "replace" if skips else None,
            "ignored_keys": plan.ignored,
            "notes": plan.notes,
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        commit(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(out, layout, plan.model_class.__name__, plan.config, adapters, picked, plan.ignored, plan.notes)


def use_original_dit_timestep_embedding(model_or_pipeline):
    """Make a diffusers DiT compute the original DiT timestep embedding, in place.

    diffusers' ``CombinedTimestepLabelEmbeddings`` builds its 256-channel sinusoid with
    ``downscale_freq_shift=1`` (frequencies ``10000^(-k/127)``); facebookresearch/DiT and
    Skip-DiT use ``10000^(-k/128)``. Converted weights are exact either way; with this call the
    converted model computes the original function. It is an attribute, not a config field:
    call it again after every ``from_pretrained``. Returns the model."""
    from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings

    from ..runtime.patch_state import resolve_model

    model = resolve_model(model_or_pipeline)
    found = [m for m in model.modules() if isinstance(m, CombinedTimestepLabelEmbeddings)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no DiT timestep/label embedder (CombinedTimestepLabelEmbeddings)")
    for module in found:
        module.time_proj.downscale_freq_shift = 0
    return model
