"""Public entry points: patch, unpatch, stats, reset."""
from __future__ import annotations

import copy
import dataclasses
import functools

import torch
from torch import nn

from .adapters.family import set_pipeline_timesteps
from .methods import load_methods
from .runtime.fusion import FUSION_MODES, LongSkipFusion
from .runtime.hooks import STEP_HOOK, SchedulerWatch, StepHook
from .runtime.patch_state import LSC_ATTR, STATE_ATTR, PatchState, get_state, require_state, resolve_model
from .runtime.registry import get_adapter, get_method
from .schedules import resolve_schedule

load_methods()  # every built-in method registered before the first patch

ATTENTION_BACKENDS = (None, "xformers")
KERNELS = ("auto", "torch", "triton", "reference")


def _apply_options(config, options: dict):
    if not options:
        return config
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{type(config).__name__} takes no options, got {sorted(options)}")
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for {type(config).__name__}; valid options: "
            f"{sorted(fields)} plus fusion, kernel, attention"
        )
    return dataclasses.replace(config, **options)


def _check_fusion(adapter, fusion):
    if adapter.native_skips:
        if fusion not in (None, "replace"):
            raise ValueError(
                f"{adapter.model_class.__name__} has native long skips (replace semantics); "
                f"fusion={fusion!r} cannot apply. Leave fusion unset."
            )
        return None
    if fusion is None:
        return "residual"
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
    return fusion


def _adapter_device(model: nn.Module, ref: torch.Tensor) -> torch.device:
    """Where new adapters go: beside the model's weights, or, when an offloader keeps them on
    the meta device (accelerate's cpu_offload), on its execution device."""
    if ref.device.type != "meta":
        return ref.device
    hook = model.__dict__.get("_hf_hook")
    return torch.device(getattr(hook, "execution_device", None) or "cpu")


def _insert_adapters(model: nn.Module, state: PatchState) -> nn.ModuleDict:
    ref = next(model.parameters())
    dim = state.adapter.hidden_dim(model)
    lscs = nn.ModuleDict(
        {
            str(deep): LongSkipFusion(dim, mode=state.fusion, kernel=state.kernel)
            for _, deep in state.adapter.pairs(model)
        }
    ).to(device=_adapter_device(model, ref), dtype=ref.dtype)
    model.add_module(LSC_ATTR, lscs)
    return lscs


def patch(model_or_pipeline, schedule="skip-dit", *, fusion=None, kernel="auto", attention=None, adapters=None,
          **options):
    """Install long-skip adapters (where the backbone lacks them) and a cache schedule, in place.

    `schedule` is a preset name (see `dit_cache.presets()`) or a config object; `options`
    override the config's fields (e.g. ``interval=3``). `fusion` is ``"residual"`` (default
    when inserting: function-preserving) or ``"replace"`` (the Skip-DiT reference op).
    Returns the patched model itself, as `module.to()` and `module.eval()` do (so
    `model = patch(model)` reads as usual; `dit_cache.stats(model)` says what is installed).
    `adapters`: a file of trained adapter weights (`dit_cache.save_adapters`, or a `finetune`
    result's ``adapters.safetensors``) loaded into the inserted adapters.
    On any error the model is left exactly as it was."""
    model = resolve_model(model_or_pipeline)
    existing = get_state(model)
    if existing is not None:
        raise ValueError(
            f"this {type(model).__name__} is already patched with {type(existing.config).__name__}; "
            "call dit_cache.unpatch(model) first"
        )
    adapter = get_adapter(model)
    config = _apply_options(resolve_schedule(schedule), options)
    method_cls = get_method(config)
    config = method_cls.resolve_config(config, adapter, model)
    fusion = _check_fusion(adapter, fusion)
    if adapters is not None and adapter.native_skips:
        raise ValueError(
            f"adapters={adapters!r}: {type(model).__name__}'s long skips are its own weights (native skips), "
            "not inserted adapters; load them with dit_cache.load_adapters(model, path) or from_pretrained"
        )
    if adapters is not None and not config.inserts_adapters:
        raise ValueError(
            f"adapters={adapters!r}: {getattr(config, 'name', type(config).__name__)} does not insert long-skip "
            "adapters on this model, so there is nothing to load them into. Use a Skip-Cache schedule "
            "('skip-dit'; interval=1 computes every step with them) or a plan with long_skips=True"
        )
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    if kernel != "auto":
        from .kernels import resolve_backend  # raises a clear error when it cannot run here

        resolve_backend(kernel)
    if attention == "xformers":
        from .kernels import xformers_available

        ok, reason = xformers_available()
        if not ok:
            raise RuntimeError(
                f"attention='xformers' cannot run here: {reason}. Install dit-cache[xformers] on a "
                "CUDA machine, or leave attention unset (diffusers' default SDPA attention)."
            )

    state = PatchState(model=model, adapter=adapter, config=config, fusion=fusion, kernel=kernel)
    scheduler = getattr(model_or_pipeline, "scheduler", None) if model_or_pipeline is not model else None
    _install(model, state, method_cls, attention=attention, scheduler=scheduler)
    if adapters is not None:
        from .runtime.adapter_io import load_adapters

        try:
            load_adapters(model, adapters)
        except BaseException:
            _remove(model, state)
            raise
    return model


def _install(model: nn.Module, state: PatchState, method_cls, *, attention=None, scheduler=None, lscs=None) -> None:
    """Attach `state` to `model` (all or nothing). `lscs`: adapters the model already holds
    (a deep copy's), adopted instead of inserting new ones."""
    try:
        if state.config.inserts_adapters and not state.adapter.native_skips:
            state.lscs = lscs if lscs is not None else _insert_adapters(model, state)
        state.method = method_cls(state, state.config)
        state.method.install()
        state.hooks.add(model, StepHook(state), STEP_HOOK)
        if callable(getattr(scheduler, "set_timesteps", None)):
            check = getattr(state.method, "check_scheduler", None)
            if check is not None:
                check(scheduler, timesteps=False)  # a pipeline whose scheduler the plan was not made for
            state.scheduler_watch = SchedulerWatch(scheduler, state.tracker, check)
        if attention == "xformers":
            from .kernels.attention import enable_xformers

            state.saved_attn_processors = _attention_processors(model)
            enable_xformers(model)
        model.__dict__[STATE_ATTR] = state
        model.__dict__["__deepcopy__"] = functools.partial(_deepcopy_patched, state)
    except BaseException:
        _remove(model, state)
        raise


_DROPPED = object()  # stands for what a deep copy of a patched model leaves out


def _deepcopy_patched(state: PatchState, memo: dict) -> nn.Module:
    """`copy.deepcopy` of a patched model: an independent patched model. diffusers' hook
    registries hold references bound to the original instance, so the copy gets fresh hooks
    of its own (same config and adapters, copied weights, no generation in progress) instead
    of copies of the original's."""
    model = state.model
    for obj in (*state.hooks.owned_attributes(), state, model.__dict__["__deepcopy__"]):
        memo[id(obj)] = _DROPPED
    clone = type(model).__new__(type(model))
    memo[id(model)] = clone
    clone.__setstate__(copy.deepcopy(model.__dict__, memo))
    for module in clone.modules():
        for key in [k for k, v in module.__dict__.items() if v is _DROPPED]:
            del module.__dict__[key]
    twin = PatchState(model=clone, adapter=state.adapter, config=state.config, fusion=state.fusion, kernel=state.kernel)
    _install(clone, twin, type(state.method), lscs=clone._modules.get(LSC_ATTR))
    if state.saved_attn_processors is not None:  # the copy runs the copied processors; unpatch restores these
        twin.saved_attn_processors = copy.deepcopy(state.saved_attn_processors, memo)
    return clone


def _attention_processors(model: nn.Module) -> dict:
    return {n: m.processor for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")}


def _remove(model: nn.Module, state: PatchState) -> None:
    state.hooks.remove_all()
    if state.scheduler_watch is not None:
        state.scheduler_watch.remove()
    if state.saved_attn_processors is not None:
        modules = dict(model.named_modules())
        for name, processor in state.saved_attn_processors.items():
            modules[name].set_processor(processor)
    if LSC_ATTR in model._modules:
        del model._modules[LSC_ATTR]
    model.__dict__.pop(STATE_ATTR, None)
    model.__dict__.pop("__deepcopy__", None)


def unpatch(model_or_pipeline) -> nn.Module:
    """Remove every hook and inserted module; the model computes bit for bit what it did before."""
    model = resolve_model(model_or_pipeline)
    state = get_state(model)
    if state is None:
        raise ValueError(f"this {type(model).__name__} is not patched by dit-cache; nothing to unpatch")
    _remove(model, state)
    return model


class Stats(dict):
    """`dit_cache.stats(...)`: a plain dict of counters whose repr is one line (the full
    timestep list and per-kind counters stay in the dict)."""

    def __repr__(self) -> str:
        pattern = self["pattern"] if len(self["pattern"]) <= 40 else self["pattern"][:39] + "…"
        return (
            f"<dit-cache stats: {self['method']}, generation {self['generation']}, {self['full_steps']} full / "
            f"{self['cached_steps']} cached steps {pattern}, {self['block_calls']} block calls "
            f"({self['blocks_skipped']} skipped), {self['calls']} model calls>"
        )


def stats(model_or_pipeline) -> Stats:
    """Counters of the last (or current) generation of a patched model."""
    state = require_state(model_or_pipeline)
    s = state.tracker.stats
    return Stats({
        "method": getattr(state.config, "name", type(state.config).__name__),
        "config": dataclasses.asdict(state.config) if dataclasses.is_dataclass(state.config) else {},
        "generation": state.tracker.generation,
        "full_steps": s.full_steps,
        "cached_steps": s.cached_steps,
        "calls": s.calls,
        "block_calls": s.block_calls,
        "blocks_skipped": s.blocks_skipped,
        "pattern": "".join(s.pattern),
        "timesteps": list(s.timesteps),
        **s.extra,
        "cached": state.method.describe_cache(),
    })


def reset(model_or_pipeline) -> None:
    """Forget the current generation (the next call starts fresh). Rarely needed: new
    generations are detected from the timesteps."""
    require_state(model_or_pipeline).tracker.reset()


def schedule_pattern(model_or_pipeline, num_inference_steps: int, schedule=None, scheduler=None, *,
                     resolution: int | None = None, **options) -> str:
    """The `F`/`c` pattern the schedule will follow for `num_inference_steps` steps of
    `scheduler` (default: the pipeline's own). Uses the model's patched config, or resolves
    `schedule` (+ `options`) against the model's backbone defaults without patching.
    `resolution` (pixels): for a sampler whose timesteps depend on the image size (FLUX's
    dynamic shift; default: the model's native size)."""
    model = resolve_model(model_or_pipeline)
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    scheduler = scheduler if scheduler is not None else getattr(model_or_pipeline, "scheduler", None)
    if scheduler is None:
        raise ValueError("pass scheduler=... (a diffusers scheduler) when giving a bare model")
    state = get_state(model)
    if schedule is None and state is not None:
        config = state.config
    else:
        config = _apply_options(resolve_schedule(schedule or "skip-dit"), options)
        config = get_method(config).resolve_config(config, get_adapter(model), model)
    scheduler = copy.deepcopy(scheduler)
    set_pipeline_timesteps(model, scheduler, num_inference_steps, resolution)
    timesteps = [float(t) for t in scheduler.timesteps]
    pattern = getattr(config, "pattern", None)
    return pattern(timesteps) if pattern is not None else "F" * len(timesteps)
