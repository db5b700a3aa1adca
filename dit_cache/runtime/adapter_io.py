"""Adapter-only weights: save/load the long-skip modules as safetensors with metadata."""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .._common.files import atomic_write
from ..version import __version__
from .patch_state import PatchState, require_state

FORMAT = "dit-cache-adapters"
FORMAT_VERSION = "1"


def _adapter_tensors(state: PatchState) -> dict[str, torch.nn.Module]:
    if state.lscs is not None:
        return {f"lsc.{deep}": lsc for deep, lsc in state.lscs.items()}
    native = state.adapter.native_skip_modules(state.model)
    if native:
        return native
    raise ValueError("this model carries no long-skip adapters; patch it with 'skip-dit' first")


def _state_dict(state: PatchState) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in _adapter_tensors(state).items():
        for key, value in module.state_dict().items():
            out[f"{prefix}.{key}"] = value
    return out


def _metadata(state: PatchState) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dit_cache_version": __version__,
        "backbone": type(state.model).__name__,
        "fusion": state.fusion or "native",
        "pairing": json.dumps(state.adapter.pairs(state.model)),
        "num_units": str(len(state.adapter.units(state.model))),
    }


def save_adapters(model_or_pipeline, path: str | os.PathLike) -> None:
    """Write the adapter weights (only) to `path`, atomically (see `_common.files.atomic_write`)."""
    state = require_state(model_or_pipeline)
    tensors = {k: v.detach().contiguous().cpu() for k, v in _state_dict(state).items()}
    metadata = _metadata(state)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))


def load_adapters(model_or_pipeline, path: str | os.PathLike, *, allow_nonfinite: bool = False) -> None:
    """Load adapter weights saved by `save_adapters`. Every check runs before any weight is
    copied, so a mismatch raises and leaves the model unchanged. Weights holding NaN or
    infinity are refused (they would turn every output into NaN) unless `allow_nonfinite`."""
    state = require_state(model_or_pipeline)
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dit-cache adapter file (metadata format={meta.get('format')!r})")
    expected = _metadata(state)
    for key, what in (("backbone", "backbone class"), ("num_units", "number of units"), ("pairing", "pairing")):
        if meta.get(key) != expected[key]:
            raise ValueError(
                f"adapter file {path} was saved for {what} {meta.get(key)}, this model has {expected[key]}"
            )
    if meta.get("fusion") != expected["fusion"]:
        raise ValueError(
            f"adapter file {path} holds fusion={meta.get('fusion')!r} adapters but the model was patched "
            f"with fusion={expected['fusion']!r}; unpatch and patch(model, ..., fusion={meta.get('fusion')!r})"
        )
    current = _state_dict(state)
    missing, unexpected = sorted(set(current) - set(tensors)), sorted(set(tensors) - set(current))
    if missing or unexpected:
        raise ValueError(f"adapter file {path} does not match: missing {missing}, unexpected {unexpected}")
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}" for k, v in current.items() if tensors[k].shape != v.shape]
    if wrong:
        raise ValueError(f"adapter file {path} has shapes that do not fit this model: {'; '.join(wrong)}")
    bad = [] if allow_nonfinite else nonfinite_tensors(tensors)
    if bad:
        raise ValueError(
            f"adapter file {path} holds NaN or infinite values in {', '.join(bad)}: the patched model would "
            "output NaN. Re-save the adapters from a healthy model (or pass allow_nonfinite=True to load anyway)"
        )
    with torch.no_grad():
        for key, target in current.items():
            target.copy_(tensors[key])
