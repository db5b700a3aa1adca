"""diffusers' FirstBlockCache and TaylorSeer cache, with the cache context they need."""
from __future__ import annotations

import re

from ..._common.options import format_value, parse_dtype
from ..errors import BenchInputError, PeerUnavailable
from .hooks import PeerHooks, block_lists, check_block_chain, check_options, check_tail_returns_every_stream, number

TAYLORSEER_OPTIONS = ("cache_interval", "disable_cache_before_step", "disable_cache_after_step", "max_order",
                      "factors_dtype", "modules")
TAYLORSEER_MODULES = {"attn": r"attn\d*", "ff": "ff"}  # a block's attention modules / its feed-forward


class AppliedDiffusersFBC(PeerHooks):
    """``apply_first_block_cache``: the first block's residual change decides whether the
    other blocks run or their cached residual is added."""

    needs_context = True

    def install(self) -> None:
        from diffusers import FirstBlockCacheConfig, apply_first_block_cache

        check_options(self.spec, ("threshold",))
        self.settings = FirstBlockCacheConfig(threshold=number(self.spec, "threshold", 0.05))
        check_block_chain(self.model, "FirstBlockCache")
        check_tail_returns_every_stream(self.model, "FirstBlockCache")
        apply_first_block_cache(self.model, self.settings)

    def config_text(self) -> str:
        return f"threshold={self.settings.threshold:g}"

    def setup(self) -> dict:
        return {"cache_context": self.context_name}


def taylorseer_identifiers(model, modules="attn+ff") -> list[str]:
    """Regexes (diffusers matches them with `re.fullmatch`) of the attention / feed-forward
    modules of every block of `model`: ``transformer_blocks.3.attn1``... diffusers' defaults
    (``^transformer_blocks.*attn``) fullmatch nothing in DiT, Latte or Hunyuan-DiT."""
    parts = modules.split("+") if isinstance(modules, str) else list(modules)
    unknown = [p for p in parts if p not in TAYLORSEER_MODULES]
    if unknown or not parts:
        raise BenchInputError(f"diffusers-taylorseer: modules must be attn+ff, attn or ff, got {format_value(modules)!r}")
    kinds = "|".join(TAYLORSEER_MODULES[p] for p in parts)
    return [rf"{re.escape(name)}\.\d+\.(?:{kinds})" for name, _ in block_lists(model)]


class AppliedDiffusersTaylorSeer(PeerHooks):
    """``apply_taylorseer_cache`` on each block's attention and feed-forward outputs: computed
    every `cache_interval` steps, Taylor-extrapolated (order `max_order`) in between."""

    needs_context = True

    def install(self) -> None:
        from diffusers import TaylorSeerCacheConfig, apply_taylorseer_cache

        spec = self.spec
        check_options(spec, TAYLORSEER_OPTIONS)
        dtype = spec.options.get("factors_dtype")
        self.identifiers = taylorseer_identifiers(self.model, spec.options.get("modules", "attn+ff"))
        self.settings = TaylorSeerCacheConfig(
            cache_interval=number(spec, "cache_interval", 5, minimum=1, integer=True),
            disable_cache_before_step=number(spec, "disable_cache_before_step", 3, minimum=1, integer=True),
            disable_cache_after_step=number(spec, "disable_cache_after_step", None, integer=True, optional=True),
            max_order=number(spec, "max_order", 1, integer=True),
            # diffusers' default stores the factors in bfloat16; here they keep the model's precision
            taylor_factors_dtype=self.runner.s.dtype if dtype is None else parse_dtype(dtype, BenchInputError),
            cache_identifiers=self.identifiers,
        )
        self.matched = [n for n, _ in self.model.named_modules() if any(re.fullmatch(p, n) for p in self.identifiers)]
        if not self.matched:
            raise PeerUnavailable(f"no module of {type(self.model).__name__} matches {self.identifiers}")
        apply_taylorseer_cache(self.model, self.settings)

    def config_text(self) -> str:
        s = self.settings
        after = "" if s.disable_cache_after_step is None else f", until step {s.disable_cache_after_step}"
        return (f"interval={s.cache_interval}, order={s.max_order}, from step {s.disable_cache_before_step}{after}, "
                f"{len(self.matched)} modules")

    def setup(self) -> dict:
        return {"cache_context": self.context_name, "cache_identifiers": self.identifiers,
                "modules_hooked": len(self.matched), "factors_dtype": str(self.settings.taylor_factors_dtype)}
