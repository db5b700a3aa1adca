"""The result folder of `dit_cache.finetune`: writing it, and `load_finetuned` reading it back.

Result folder (``output_dir``)::

    transformer/            save_pretrained of the trained model *without* inserted adapters
                            (EMA weights unless save_ema=False; fp16 when save_fp16=True)
    adapters.safetensors    dit_cache.save_adapters of the long skips (absent for a vanilla model)
    scheduler/              the training noise schedule (DDPMScheduler config)
    finetune.json           model class, fusion, config, data / conditioning, figures, command
    train_log.jsonl         one JSON object per step
    checkpoints/            resumable checkpoints (see finetuning.checkpoints)
"""
from __future__ import annotations

import dataclasses

import json
from contextlib import contextmanager
from typing import Any
from pathlib import Path

from ..api import patch, unpatch
from ..runtime.adapter_io import load_adapters, save_adapters
from ..runtime.patch_state import LSC_ATTR
from .._common.files import usual_modes, write_json
from .files import to_fp16_file

META_FILE = "finetune.json"
ADAPTER_FILE = "adapters.safetensors"


@contextmanager
def without_inserted_adapters(model):
    """Detach the inserted adapter ModuleDict for the duration (save_pretrained of the base)."""
    lsc = model._modules.pop(LSC_ATTR, None)
    try:
        yield
    finally:
        if lsc is not None:
            model._modules[LSC_ATTR] = lsc


def save_result(model, output_dir: Path, *, scheduler, fp16: bool, meta: dict):
    """Write transformer/, adapters.safetensors, scheduler/ and finetune.json (rank 0 only)."""
    output_dir = Path(output_dir)
    tdir = output_dir / "transformer"
    with without_inserted_adapters(model), usual_modes(tdir):
        model.save_pretrained(tdir, safe_serialization=True)
    if fp16:
        for f in tdir.glob("*.safetensors"):
            to_fp16_file(f)
    adapter_path = output_dir / ADAPTER_FILE
    if meta.get("adapters") is not None:
        save_adapters(model, adapter_path)
        if fp16:
            to_fp16_file(adapter_path)
    elif adapter_path.exists():
        adapter_path.unlink()
    scheduler.save_config(output_dir / "scheduler")
    write_json(output_dir / META_FILE, meta, default=str)



def trained_adapter_schedule(schedule, options: dict) -> tuple[Any, dict] | None:
    """How `schedule` (+ `options`) runs on a model trained with long-skip adapters, which are part
    of its function: ``none`` becomes Skip-Cache with ``interval=1`` (every step full, adapters in
    place), schedules that insert adapters stay as they are, and None for those that do not
    (FORA, PAB: they would run the model without its trained skips)."""
    from ..methods import NoCacheConfig, StepPlanConfig
    from ..schedules import resolve_schedule

    config = resolve_schedule(schedule)
    if isinstance(config, NoCacheConfig):
        return "skip-dit", {"interval": 1}
    if isinstance(config, StepPlanConfig):  # a plan runs with the trained skips in place
        return dataclasses.replace(config, long_skips=True), options
    return (schedule, options) if config.inserts_adapters else None


def patch_with_adapters(model, schedule, fusion, adapter_file, **options):
    """`dit_cache.patch` then `load_adapters` of trained long skips; unpatched again if the
    adapters do not load, so a failure leaves the model as it was."""
    mapped = trained_adapter_schedule(schedule, options)
    if mapped is None:
        from ..schedules import resolve_schedule

        config = resolve_schedule(schedule)
        raise ValueError(
            f"this model was trained with long-skip adapters ({Path(adapter_file).name}); "
            f"{getattr(config, 'name', type(config).__name__)} does not insert them, so it would run the model "
            "without the skips it was trained with. Use schedule='skip-dit' (or 'none': every step full, "
            "adapters in place); compare FORA and PAB on the vanilla model (e.g. mnist-dit)"
        )
    schedule, options = mapped
    patch(model, schedule, fusion=fusion, **options)
    try:
        load_adapters(model, adapter_file)
    except BaseException:
        unpatch(model)
        raise
    return model


def load_finetuned(path, schedule="skip-dit", *, pipeline=None, torch_dtype=None, **options):
    """Load a `finetune` result folder: the transformer (``from_pretrained``), patched with
    ``schedule`` (+ ``options``) and its trained adapters when it was trained with long skips.
    A vanilla result (trained without adapters) is returned unpatched, as is any result with
    ``schedule=None`` (for inserted adapters: the base model without them). With ``pipeline``, the transformer replaces ``pipeline.transformer`` and the
    pipeline is returned."""
    import diffusers

    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a dit-cache finetune result (no {META_FILE})")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    cls = getattr(diffusers, meta["model_class"])
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    model = cls.from_pretrained(path / "transformer", **kwargs)
    if torch_dtype is None:
        model = model.float()
    model.eval().requires_grad_(False)
    adapters = meta.get("adapters")
    if schedule is not None and adapters is not None:
        patch_with_adapters(model, schedule, None if adapters == "native" else adapters, path / ADAPTER_FILE, **options)
    if pipeline is not None:
        pipeline.register_modules(transformer=model)
        return pipeline
    return model
