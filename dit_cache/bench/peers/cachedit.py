"""cache-dit's DBCache (and DBCache + its TaylorSeer calibrator) on the bare transformer.

What it takes to run honestly on a transformer outside its pipeline (cache-dit marks this
"transformer-only" path as not officially supported): ``cache_dit.enable_cache(transformer,
...)`` keeps one persistent cache context, so ``cache_dit.refresh_context(transformer,
num_inference_steps=N)`` starts each generation (without it the second generation continues
the first one's cache state). ``cache_dit.disable_cache`` puts back the forward it wrapped,
but that is the forward of its patch functor (DiT, Hunyuan-DiT: a reimplementation of the
model's forward, and the ``_norm1_emb`` alias it registers as a submodule, which adds keys
to the state dict): every module's attributes and children are snapshotted before and put
back after, so the model computes bit for bit what it did before.
"""
from __future__ import annotations

import logging

from torch import nn

from ..errors import PeerUnavailable
from .hooks import PeerHooks, check_options, number

DBCACHE_OPTIONS = ("threshold", "Fn", "Bn", "warmup", "max_cached_steps", "max_continuous_cached_steps")
TAYLORSEER_OPTIONS = (*DBCACHE_OPTIONS, "order")


class ModuleSnapshot:
    """Every module's instance attributes, children, parameters and buffers (the objects,
    not copies); `restore()` deletes what was added and puts back what was replaced."""

    def __init__(self, model: nn.Module):
        self.entries = [
            (m, dict(m.__dict__), dict(m._modules), dict(m._parameters), dict(m._buffers)) for m in model.modules()
        ]

    def restore(self) -> None:
        for module, attrs, modules, params, buffers in self.entries:
            for key in [k for k in module.__dict__ if k not in attrs]:
                del module.__dict__[key]
            for key, value in attrs.items():
                if module.__dict__.get(key, attrs) is not value:
                    module.__dict__[key] = value
            for live, saved in ((module._modules, modules), (module._parameters, params), (module._buffers, buffers)):
                if live != saved:
                    live.clear()
                    live.update(saved)


class quiet_cache_dit:
    """cache-dit logs every setting at INFO on stdout (its own handler, no propagation)."""

    def __enter__(self):
        self.handlers = [(h, h.level) for h in logging.getLogger("CACHE_DIT").handlers]
        for handler, _ in self.handlers:
            handler.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for handler, level in self.handlers:
            handler.setLevel(level)


class AppliedCacheDiT(PeerHooks):
    """``cache_dit.enable_cache(transformer, cache_config=DBCacheConfig(...))``: the first `Fn`
    blocks always run; when their residual changed by less than `threshold` (relative L1) the
    middle blocks are skipped and their cached residual added; the last `Bn` blocks run."""

    taylorseer = False

    def install(self) -> None:
        import cache_dit

        spec = self.spec
        check_options(spec, TAYLORSEER_OPTIONS if self.taylorseer else DBCACHE_OPTIONS)
        limit = dict(integer=True, minimum=-1)
        self.settings = dict(
            residual_diff_threshold=number(spec, "threshold", 0.08),
            Fn_compute_blocks=number(spec, "Fn", 1, integer=True, minimum=1),
            Bn_compute_blocks=number(spec, "Bn", 0, integer=True),
            max_warmup_steps=number(spec, "warmup", 2, integer=True),
            max_cached_steps=number(spec, "max_cached_steps", -1, **limit),
            max_continuous_cached_steps=number(spec, "max_continuous_cached_steps", -1, **limit),
            num_inference_steps=self.runner.s.steps,
        )
        self.order = number(spec, "order", 1, integer=True, minimum=1) if self.taylorseer else None
        if not cache_dit.BlockAdapterRegister.is_supported(self.model):
            raise PeerUnavailable(f"cache-dit {cache_dit.__version__} has no block adapter for {type(self.model).__name__}")
        self.snapshot = ModuleSnapshot(self.model)
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=self.order) if self.taylorseer else None
        with quiet_cache_dit():
            cache_dit.enable_cache(self.model, cache_config=self.cache_config(), calibrator_config=calibrator)

    def cache_config(self):
        from cache_dit import DBCacheConfig

        return DBCacheConfig(**self.settings)

    def before_generation(self) -> None:
        import cache_dit

        with quiet_cache_dit():  # a fresh context: step counters, cached residuals, Taylor factors
            cache_dit.refresh_context(self.model, num_inference_steps=self.runner.s.steps)

    def remove(self) -> None:
        snapshot = self.__dict__.pop("snapshot", None)
        try:
            if snapshot is not None:
                import cache_dit

                with quiet_cache_dit():
                    cache_dit.disable_cache(self.model)
        finally:
            if snapshot is not None:
                snapshot.restore()
            super().remove()

    def config_text(self) -> str:
        s = self.settings
        text = (f"F{s['Fn_compute_blocks']}B{s['Bn_compute_blocks']}, threshold={s['residual_diff_threshold']:g}, "
                f"warmup={s['max_warmup_steps']}")
        return text + (f", TaylorSeer order {self.order}" if self.taylorseer else "")

    def setup(self) -> dict:
        import cache_dit

        return {"library": f"cache-dit {cache_dit.__version__}", "transformer_only": True,
                "refresh_context": {"num_inference_steps": self.runner.s.steps}}


class AppliedCacheDiTTaylorSeer(AppliedCacheDiT):
    taylorseer = True
