"""Saving and loading a zoo pipeline whose transformer is patched by dit-cache.

A patched transformer holds inserted adapter modules and hooks that diffusers' `save_pretrained`
knows nothing about, so `ZooPipeline.save_pretrained` writes::

    model_index.json, scheduler/  as diffusers writes them
    transformer/                  the weights without the inserted adapters (a plain diffusers model)
    adapters.safetensors          `dit_cache.save_adapters` (when the patch inserted adapters)
    dit_cache.json                the patch: config class and fields, fusion, kernel

and `ZooPipeline.from_pretrained` patches the loaded transformer again from them. By hand::

    pipe = ZooImagePipeline.from_pretrained(folder, repatch=False)        # the bare transformer
    dit_cache.patch(pipe.transformer, "skip-dit", fusion="residual", shallow=1)
    dit_cache.load_adapters(pipe.transformer, folder / "adapters.safetensors")

Only a local folder is re-patched: for a hub repository, download it first and pass its path.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .. import methods
from .._common.files import write_json
from ..api import patch
from ..finetuning.io import ADAPTER_FILE, patch_with_adapters, without_inserted_adapters
from ..runtime.adapter_io import save_adapters
from ..runtime.patch_state import get_state

PATCH_FILE = "dit_cache.json"
PATCH_FORMAT = "dit-cache-patch"


def _config_class(name: str):
    cls = getattr(methods, name, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(
            f"cannot save a transformer patched with {name}: only the built-in configs "
            "(SkipCacheConfig, FORAConfig, PABConfig, NoCacheConfig) are recorded; unpatch it before saving"
        )
    return cls


def save_with_patch_record(pipe, save_directory, save, **kwargs) -> None:
    """`save(save_directory, **kwargs)` (diffusers' save_pretrained) of `pipe` with its transformer's
    inserted adapters detached, then the adapters and the patch record (removed when unpatched)."""
    if kwargs.get("push_to_hub"):
        raise ValueError("push_to_hub is not supported here: save_pretrained to a folder, then upload the folder")
    model = pipe.transformer
    state = get_state(model)
    if state is not None:
        _config_class(type(state.config).__name__)  # refuse before anything is written
    folder = Path(save_directory)
    with without_inserted_adapters(model):
        save(folder, **kwargs)
    for stale in (folder / ADAPTER_FILE, folder / PATCH_FILE):
        stale.unlink(missing_ok=True)
    if state is None:
        return
    options = {}
    for f in dataclasses.fields(state.config):
        value = getattr(state.config, f.name)
        options[f.name] = list(value) if isinstance(value, tuple) else value
    adapters = ADAPTER_FILE if state.lscs is not None else None
    if adapters:
        save_adapters(model, folder / adapters)
    write_json(folder / PATCH_FILE, {
        "format": PATCH_FORMAT, "config": type(state.config).__name__, "options": options,
        "fusion": state.fusion, "kernel": state.kernel, "adapters": adapters,
    })


def load_patch_record(model, pretrained_model_name_or_path) -> None:
    """Patch `model` as recorded in the folder's dit_cache.json (nothing to do without one)."""
    folder = Path(pretrained_model_name_or_path)
    record_file = folder / PATCH_FILE
    if not record_file.is_file():
        return
    record = json.loads(record_file.read_text(encoding="utf-8"))
    if record.get("format") != PATCH_FORMAT:
        raise ValueError(f"{record_file} is not a dit-cache patch record (format={record.get('format')!r})")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in record["options"].items()}
    config = _config_class(record["config"])(**options)
    if record.get("adapters"):
        patch_with_adapters(model, config, record["fusion"], folder / record["adapters"], kernel=record["kernel"])
    else:
        patch(model, config, fusion=record["fusion"], kernel=record["kernel"])
