"""Resolving ``--model`` into a runner: a built-in name (`dit_cache.testing.MODEL_CONFIGS`),
a zoo model or `finetune` result folder, or a local diffusers pipeline / transformer folder.

Models with a pipeline (the tiny built-ins, a pipeline folder) run that pipeline; the others
run the bare transformer in its family's sampling loop. Fidelity is always measured on final
latents.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from ...adapters.family import (
    family_spec,
    pipeline_class_names,
    spec_for_pipeline_class,
    spec_for_transformer_class,
    transformer_class_names,
)
from ..errors import BenchInputError
from .base import VAE_FACTOR, Runner, RunSettings, check_geometry, eval_cast, model_geometry, scheduler_for
from .loop import TransformerRunner
from .pipeline import PipelineRunner
from .zoo import is_finetune_dir, load_zoo_runner


def _pipeline_fixes_resolution(family: str, settings: RunSettings, native: int) -> bool:
    """True when another resolution is asked of a pipeline that always samples at its native one."""
    return not family_spec(family).pipeline_sets_resolution and settings.resolution not in (None, native)


def _load_builtin(name: str, s: RunSettings) -> Runner:
    from ...testing import MODEL_CONFIGS, build_pipeline, build_transformer

    cfg = MODEL_CONFIGS[name]
    fam = cfg["family"]
    tc = cfg["transformer"]
    spec = family_spec(fam)
    native = int(cfg["resolution"])
    check_geometry(fam, spec.spatial_patch(tc), s, native, tc.get("video_length"))
    on_meta = torch.device(s.device).type == "meta"  # no text encoders to run: the transformer loop
    if cfg["tiny"] and not s.loop and not on_meta and not _pipeline_fixes_resolution(fam, s, native):
        try:
            pipe = build_pipeline(name, seed=0, scheduler=s.scheduler)
        except ValueError as err:  # a scheduler kind the family does not sample with
            raise BenchInputError(str(err)) from None
        for comp in pipe.components.values():
            if isinstance(comp, nn.Module):
                eval_cast(comp, s)
        return PipelineRunner(name, pipe, fam, s)
    transformer = build_transformer(name, seed=0, dtype=s.dtype, device=s.device)
    return TransformerRunner(name, transformer, fam, scheduler_for(s.scheduler, fam), s)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise BenchInputError(f"cannot read {path}: {err}") from None


def _load_directory(path: str, s: RunSettings) -> Runner:
    import diffusers

    label = os.path.basename(os.path.normpath(path)) or path
    if os.path.isfile(os.path.join(path, "model_index.json")):
        index = _read_json(os.path.join(path, "model_index.json"))
        cls_name = index.get("_class_name")
        spec = spec_for_pipeline_class(cls_name)
        if spec is None:
            # not a supported pipeline: still usable when it has a supported transformer
            if os.path.isfile(os.path.join(path, "transformer", "config.json")):
                return _load_transformer_dir(os.path.join(path, "transformer"), label, s)
            raise BenchInputError(
                f"{path} holds a {cls_name or 'unknown'} pipeline; supported: {', '.join(pipeline_class_names())}"
            )
        fam = spec.name
        try:
            with _no_hub_progress():
                pipe = getattr(diffusers, cls_name).from_pretrained(path, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any load failure is bad input here
            raise BenchInputError(f"cannot load the {cls_name} in {path}: {type(err).__name__}: {err}") from None
        tr = pipe.transformer
        patch, native, video_length = model_geometry(fam, tr)
        check_geometry(fam, patch, s, native, video_length)
        for comp in pipe.components.values():
            if isinstance(comp, nn.Module):
                eval_cast(comp, s)
        if s.scheduler is not None:
            pipe.scheduler = scheduler_for(s.scheduler, fam)
        pipe.set_progress_bar_config(disable=True)
        if s.loop or _pipeline_fixes_resolution(fam, s, native):
            return TransformerRunner(label, tr, fam, scheduler_for(s.scheduler, fam, fallback=pipe.scheduler), s)
        return PipelineRunner(label, pipe, fam, s)
    if os.path.isfile(os.path.join(path, "config.json")):
        return _load_transformer_dir(path, label, s)
    if os.path.isfile(os.path.join(path, "transformer", "config.json")):
        return _load_transformer_dir(os.path.join(path, "transformer"), label, s)
    raise BenchInputError(
        f"{path} is not a diffusers model directory: no model_index.json (pipeline) or config.json "
        "(transformer) found"
    )


class _no_hub_progress:
    """diffusers' "Loading pipeline components" bar would interleave with the bench's own."""

    def __enter__(self):
        from diffusers.utils import logging as dlogging

        self.was = dlogging.is_progress_bar_enabled()
        dlogging.disable_progress_bar()

    def __exit__(self, *exc):
        from diffusers.utils import logging as dlogging

        if self.was:
            dlogging.enable_progress_bar()


def _load_transformer_dir(path: str, label: str, s: RunSettings) -> Runner:
    cfg = _read_json(os.path.join(path, "config.json"))
    cls_name = cfg.get("_class_name")
    spec = spec_for_transformer_class(cls_name)
    if spec is None:
        raise BenchInputError(
            f"{path} holds a {cls_name or 'non-diffusers'} model; supported transformers: "
            f"{', '.join(transformer_class_names())}"
        )
    fam = spec.name
    try:
        tr = spec.transformer_class.from_pretrained(path, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise BenchInputError(f"cannot load the {cls_name} in {path}: {type(err).__name__}: {err}") from None
    patch, native, video_length = model_geometry(fam, tr)
    check_geometry(fam, patch, s, native, video_length)
    eval_cast(tr, s)
    return TransformerRunner(label, tr, fam, scheduler_for(s.scheduler, fam), s)


def cached_hub_model(model: str) -> str | None:
    """The local folder of hub id `model` ("org/name") when it is in the Hugging Face cache
    (dit-cache never downloads: like ``from_pretrained`` with ``HF_HUB_OFFLINE=1``), else None."""
    if model.count("/") != 1 or os.path.exists(model):
        return None
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def check_model_name(model: str) -> None:
    """BenchInputError unless `model` names a built-in, a zoo model, an existing directory or
    a hub id in the local Hugging Face cache; the error suggests near names."""
    import difflib

    from ...testing import MODEL_CONFIGS
    from ...zoo import ZOO_MODELS

    if model in MODEL_CONFIGS or model in ZOO_MODELS or os.path.isdir(model) or cached_hub_model(model):
        return
    if os.path.exists(model):
        raise BenchInputError(f"{model} is a file; --model takes a built-in name or a diffusers directory")
    names = [*MODEL_CONFIGS, *ZOO_MODELS]
    close = difflib.get_close_matches(model.lower().replace("_", "-"), names, n=1, cutoff=0.6)
    close = close or difflib.get_close_matches(model.rpartition("/")[2].lower().replace("_", "-"), names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    hub = (
        f" {model!r} looks like a hub id: dit-cache loads hub models only from the local Hugging Face cache "
        f"(as with HF_HUB_OFFLINE=1), and it is not there; download it first (`huggingface-cli download {model}`)."
        if model.count("/") == 1 else ""
    )
    raise BenchInputError(
        f"unknown model {model!r}.{hint}{hub} Built-in names: {', '.join(MODEL_CONFIGS)}; zoo models: "
        f"{', '.join(ZOO_MODELS)}; or a local diffusers directory"
    )


def load_runner(model: str, settings: RunSettings) -> Runner:
    """A runner for a built-in model name, a zoo model, or a local diffusers directory or
    `finetune` result folder (BenchInputError if none of these)."""
    from ...testing import MODEL_CONFIGS
    from ...zoo import ZOO_MODELS

    check_model_name(model)
    model = cached_hub_model(model) or model
    if model in MODEL_CONFIGS:
        return _load_builtin(model, settings)
    if model in ZOO_MODELS or is_finetune_dir(model):
        return load_zoo_runner(model, settings)
    return _load_directory(model, settings)
