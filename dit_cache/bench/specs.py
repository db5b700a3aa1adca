"""Methods a benchmark compares: the spec syntax, and applying/removing each method.

A method spec is ``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE``:

- ``unpatched``: the model as loaded, nothing installed (the fidelity reference).
- any dit-cache preset name (``dit_cache.presets()``: ``none``, ``skip-dit``, ``skip-dit-3``,
  ``fora``, ``pab-236``, ...); the options are passed to ``dit_cache.patch`` (config fields such
  as ``interval``/``shallow``, or ``fusion``/``kernel``/``attention``).
- ``diffusers-pab`` / ``diffusers-pab-SST`` (e.g. ``diffusers-pab-469``): diffusers'
  ``apply_pyramid_attention_broadcast``; options ``spatial_range``, ``temporal_range``,
  ``cross_range``, ``window`` (and ``spatial_window``... per kind), same meaning as
  ``dit_cache.PABConfig``.
- ``diffusers-fastercache``: diffusers' ``apply_faster_cache``; options ``spatial_range``,
  ``temporal_range``, ``uncond_range``, ``window``, ``uncond_window``, ``attention_weight``.

Values: integers, floats, ``true``/``false``, ``none``, a ``/``-separated tuple
(``window=100/800``), anything else a string. Several specs can share one argument,
separated by commas: a comma-separated piece without ``=`` starts a new method, so
``none,skip-dit:interval=3,shallow=2,fora`` is three methods.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

UNPATCHED = "unpatched"
PEER_PAB = "diffusers-pab"
PEER_FASTERCACHE = "diffusers-fastercache"
PEERS = (PEER_PAB, PEER_FASTERCACHE)
_PAB_TRIPLE = re.compile(r"^diffusers-pab-(\d)(\d)(\d)$")

#: dit-cache presets the default comparison prefers, first match wins per group.
DEFAULT_PREFERENCES = (("none",), ("skip-dit",), ("fora", "fora-3"), ("pab-236", "pab"))


class BenchInputError(ValueError):
    """Bad benchmark input (model, method, sizes): reported as one line, exit code 2."""


def parse_value(text: str) -> Any:
    if "/" in text:
        return tuple(parse_value(part) for part in text.split("/") if part != "")
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict = field(default_factory=dict)
    label: str = ""

    @property
    def kind(self) -> str:
        if self.name == UNPATCHED:
            return "baseline"
        if self.name in PEERS or _PAB_TRIPLE.match(self.name):
            return "peer"
        return "dit-cache"

    def __str__(self) -> str:
        return self.label or self.name


def _spec(name: str, options: dict) -> MethodSpec:
    label = name + (":" + ",".join(f"{k}={_fmt(v)}" for k, v in options.items()) if options else "")
    return MethodSpec(name=name, options=dict(options), label=label)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "/".join(_fmt(v) for v in value)
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def parse_methods(items) -> list[MethodSpec]:
    """Method specs from command-line items (see the module docstring for the syntax)."""
    specs: list[MethodSpec] = []
    current: tuple[str, dict] | None = None
    for item in items:
        for piece in (p.strip() for p in str(item).split(",")):
            if not piece:
                continue
            if "=" in piece and ":" not in piece.split("=", 1)[0]:
                if current is None:
                    raise BenchInputError(f"method option {piece!r} comes before any method name")
                key, value = piece.split("=", 1)
                _add_option(current, key, value)
                continue
            if current is not None:
                specs.append(_spec(*current))
            name, _, first = piece.partition(":")
            name = name.strip()
            if not name:
                raise BenchInputError(f"empty method name in {piece!r}")
            current = (name, {})
            if first:
                if "=" not in first:
                    raise BenchInputError(f"method option {first!r} of {name!r} must be KEY=VALUE")
                key, value = first.split("=", 1)
                _add_option(current, key, value)
    if current is not None:
        specs.append(_spec(*current))
    labels = [s.label for s in specs]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise BenchInputError(f"method(s) listed twice: {', '.join(dupes)}")
    return specs


def _add_option(current: tuple[str, dict], key: str, value: str) -> None:
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise BenchInputError(f"bad option name {key!r} for method {current[0]!r}")
    if key in current[1]:
        raise BenchInputError(f"option {key!r} given twice for method {current[0]!r}")
    current[1][key] = parse_value(value.strip())


def known_method_names() -> list[str]:
    from ..schedules import presets

    return [UNPATCHED, *presets(), *PEERS]


def check_method_names(specs: list[MethodSpec]) -> None:
    from ..schedules import presets

    names = set(presets())
    for spec in specs:
        if spec.name == UNPATCHED or spec.kind == "peer" or spec.name in names:
            continue
        known = known_method_names()
        close = difflib.get_close_matches(spec.name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BenchInputError(f"unknown method {spec.name!r}.{hint} Known: {', '.join(known)}")


def default_methods(include_peers: bool = True) -> list[str]:
    """`none`, `skip-dit`, a FORA and a PAB preset (whichever of the preferred names exist in
    ``dit_cache.presets()``), then diffusers' PAB and FasterCache where diffusers has them."""
    from ..schedules import presets

    names = list(presets())
    chosen: list[str] = []
    for group in DEFAULT_PREFERENCES:
        hit = next((n for n in group if n in names), None)
        if hit is None:  # fall back to any preset of that family
            hit = next((n for n in names if n.startswith(group[0].split("-")[0])), None)
        if hit is not None and hit not in chosen:
            chosen.append(hit)
    if include_peers:
        chosen += [p for p in PEERS if peer_available(p)[0]]
    return chosen


# ------------------------------------------------------------------------------------------
# Applying methods
# ------------------------------------------------------------------------------------------


class Applied:
    """A method installed on a runner's model. `remove()` restores the model exactly."""

    def __init__(self, spec: MethodSpec):
        self.spec = spec

    def before_generation(self) -> None:
        pass

    def stats(self) -> dict | None:
        return None

    def config_text(self) -> str:
        return ""

    def remove(self) -> None:
        pass


class AppliedDitCache(Applied):
    def __init__(self, spec: MethodSpec, runner):
        super().__init__(spec)
        self.runner = runner
        try:
            runner.install_dit_cache(spec.name, spec.options)
        except (TypeError, ValueError) as err:
            raise BenchInputError(f"method {spec.label!r}: {err}") from None

    def before_generation(self) -> None:
        # New generations are detected from the timesteps anyway; resetting makes a generation
        # that follows a priming run at the same first timestep start fresh too.
        from .. import reset

        reset(self.runner.patch_target)

    def stats(self) -> dict | None:
        from .. import stats

        return stats(self.runner.patch_target)

    def config_text(self) -> str:
        from ..runtime.patch_state import get_state

        state = get_state(self.runner.transformer)
        config = state.config if state is not None else None
        if config is None or not dataclasses.is_dataclass(config):
            return ""
        return ", ".join(
            f"{f.name}={_fmt(getattr(config, f.name))}"
            for f in dataclasses.fields(config)
            if getattr(config, f.name) is not None
        )

    def remove(self) -> None:
        from .. import unpatch

        unpatch(self.runner.patch_target)


class _PeerHooks(Applied):
    """diffusers hooks installed on the transformer and its attention modules; removal deletes
    every hook, every registry and every instance `forward` attribute this run created."""

    hook_names: tuple[str, ...] = ()

    def __init__(self, spec: MethodSpec, runner):
        super().__init__(spec)
        self.runner = runner
        self.model: nn.Module = runner.transformer
        self._before = {
            id(m): (hasattr(m, "_diffusers_hook"), "forward" in m.__dict__) for m in self.model.modules()
        }
        self.current_t: float = 1000.0
        self._pre = self.model.register_forward_pre_hook(self._track_timestep, with_kwargs=True)
        try:
            with _quiet_diffusers():
                self.install()
        except BaseException:
            self.remove()
            raise

    def _track_timestep(self, module, args, kwargs):
        from ..registry import get_adapter

        t = get_adapter(module).timestep(module, args, kwargs)
        if isinstance(t, torch.Tensor):
            t = t.reshape(-1)[0]
        if t is not None:
            self.current_t = float(t)

    def callback(self) -> float:
        return self.current_t

    def install(self) -> None:
        raise NotImplementedError

    def before_generation(self) -> None:
        # diffusers' stateful hooks only restart when reset; every generation starts fresh here.
        for module in self.model.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is not None:
                registry.reset_stateful_hooks(recurse=False)

    def remove(self) -> None:
        self._pre.remove()
        for module in self.model.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None:
                continue
            for name in self.hook_names:
                if name in registry.hooks:
                    registry.remove_hook(name, recurse=False)
            had_registry, had_forward = self._before.get(id(module), (False, False))
            if not had_registry and not registry.hooks:
                del module._diffusers_hook
                if not had_forward and "forward" in module.__dict__:
                    del module.__dict__["forward"]


class _quiet_diffusers:
    """diffusers' experimental-feature warnings would break the progress display."""

    def __enter__(self):
        self.logger = logging.getLogger("diffusers")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


_PAB_OPTIONS = ("spatial_range", "temporal_range", "cross_range", "window", "spatial_window",
                "temporal_window", "cross_window")


def _window(value, name: str) -> tuple[float, float]:
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
        raise BenchInputError(f"{name} must be LOW/HIGH (e.g. 100/800), got {_fmt(value)!r}")
    if value[0] >= value[1]:
        raise BenchInputError(f"{name} must have LOW < HIGH, got {_fmt(value)}")
    return (value[0], value[1])


def _check_options(spec: MethodSpec, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        raise BenchInputError(
            f"unknown option(s) {', '.join(unknown)} for {spec.name}; valid: {', '.join(allowed)}"
        )


def pab_peer_settings(spec: MethodSpec) -> dict:
    """(spatial, temporal, cross) ranges and windows of a diffusers-pab spec."""
    _check_options(spec, _PAB_OPTIONS)
    m = _PAB_TRIPLE.match(spec.name)
    s, t, c = (int(g) for g in m.groups()) if m else (2, 3, 6)  # pab-236, VideoSys' default
    o = spec.options
    out = {"spatial": o.get("spatial_range", s), "temporal": o.get("temporal_range", t), "cross": o.get("cross_range", c)}
    for kind in ("spatial", "temporal", "cross"):
        value = out[kind]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BenchInputError(f"{kind}_range must be an integer >= 1 or none, got {value!r}")
    window = _window(o.get("window", (100, 800)), "window")
    for kind in ("spatial", "temporal", "cross"):
        key = f"{kind}_window"
        out[key] = _window(o[key], key) if key in o else window
    return out


class AppliedDiffusersPAB(_PeerHooks):
    hook_names = ("pyramid_attention_broadcast",)

    def install(self) -> None:
        from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

        s = pab_peer_settings(self.spec)
        kwargs: dict[str, Any] = dict(
            spatial_attention_block_skip_range=s["spatial"],
            temporal_attention_block_skip_range=s["temporal"],
            cross_attention_block_skip_range=s["cross"],
            spatial_attention_timestep_skip_range=s["spatial_window"],
            temporal_attention_timestep_skip_range=s["temporal_window"],
            cross_attention_timestep_skip_range=s["cross_window"],
            current_timestep_callback=self.callback,
        )
        if self.runner.family == "latte":
            # the default spatial identifiers also match temporal_transformer_blocks.*
            kwargs["spatial_attention_block_identifiers"] = (r"^transformer_blocks",)
        self.settings = s
        apply_pyramid_attention_broadcast(self.model, PyramidAttentionBroadcastConfig(**kwargs))

    def config_text(self) -> str:
        s = self.settings
        ranges = f"spatial={s['spatial']}, temporal={s['temporal']}, cross={s['cross']}"
        return f"{ranges}, window={_fmt(s['spatial_window'])} (diffusers, per call)"


_FASTERCACHE_OPTIONS = ("spatial_range", "temporal_range", "uncond_range", "window", "uncond_window", "attention_weight")

# Per family: the forward kwargs that carry the [uncond, cond] batch (FasterCache splits them).
_BATCHED_KWARGS = {
    "dit": ("hidden_states", "timestep", "class_labels"),
    "latte": ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask"),
    "hunyuan": (
        "hidden_states", "timestep", "encoder_hidden_states", "text_embedding_mask",
        "encoder_hidden_states_t5", "text_embedding_mask_t5", "image_meta_size", "style",
    ),
}


class AppliedDiffusersFasterCache(_PeerHooks):
    hook_names = ("faster_cache_denoiser", "faster_cache_block")

    def install(self) -> None:
        from diffusers import FasterCacheConfig, apply_faster_cache

        _check_options(self.spec, _FASTERCACHE_OPTIONS)
        if not self.runner.cfg:
            raise PeerUnavailable("FasterCache needs batched classifier-free guidance (--cfg-scale > 1)")
        o = self.spec.options
        weight = o.get("attention_weight", 0.5)
        fam = self.runner.family
        kwargs: dict[str, Any] = dict(
            spatial_attention_block_skip_range=o.get("spatial_range", 2),
            temporal_attention_block_skip_range=o.get("temporal_range", 2 if fam == "latte" else None),
            spatial_attention_timestep_skip_range=_window(o.get("window", (-1, 681)), "window"),
            temporal_attention_timestep_skip_range=_window(o.get("window", (-1, 681)), "window"),
            unconditional_batch_skip_range=o.get("uncond_range", 5),
            unconditional_batch_timestep_skip_range=_window(o.get("uncond_window", (-1, 641)), "uncond_window"),
            attention_weight_callback=lambda _module: weight,
            tensor_format="BCFHW" if fam == "latte" else "BCHW",
            current_timestep_callback=self.callback,
            _unconditional_conditional_input_kwargs_identifiers=list(_BATCHED_KWARGS[fam]),
        )
        if fam == "latte":
            kwargs["spatial_attention_block_identifiers"] = (r"^transformer_blocks.*attn",)
        self.settings = kwargs
        apply_faster_cache(self.model, FasterCacheConfig(**kwargs))

    def config_text(self) -> str:
        k = self.settings
        return (
            f"spatial={k['spatial_attention_block_skip_range']}, temporal={k['temporal_attention_block_skip_range']}, "
            f"uncond={k['unconditional_batch_skip_range']}, window={_fmt(k['spatial_attention_timestep_skip_range'])}"
        )


class PeerUnavailable(Exception):
    """A peer method cannot run on this model/setting: reported as an `n/a: reason` row."""


def peer_available(name: str) -> tuple[bool, str]:
    try:
        import diffusers
    except ImportError:  # pragma: no cover - diffusers is a core dependency
        return False, "diffusers is not installed"
    attr = "apply_faster_cache" if name == PEER_FASTERCACHE else "apply_pyramid_attention_broadcast"
    if not hasattr(diffusers, attr):
        return False, f"diffusers {diffusers.__version__} has no {attr}"
    return True, ""


def apply_method(spec: MethodSpec, runner) -> Applied:
    """Install `spec` on the runner's model; raises PeerUnavailable / BenchInputError."""
    if spec.kind == "dit-cache":
        return AppliedDitCache(spec, runner)
    if runner.adapter_fusion:
        from .runners.zoo import NO_ADAPTER_METHODS

        raise PeerUnavailable(f"{spec.name} {NO_ADAPTER_METHODS}")
    if spec.kind == "baseline":
        return Applied(spec)
    ok, reason = peer_available(spec.name if spec.name == PEER_FASTERCACHE else PEER_PAB)
    if not ok:
        raise PeerUnavailable(reason)
    cls: Callable = AppliedDiffusersFasterCache if spec.name == PEER_FASTERCACHE else AppliedDiffusersPAB
    return cls(spec, runner)


def validate_method(spec: MethodSpec, runner) -> str | None:
    """Install and remove `spec` once (bad options fail here, before any timing).

    Returns None when it can run, or the reason it cannot (peers only)."""
    try:
        applied = apply_method(spec, runner)
    except PeerUnavailable as err:
        return str(err)
    applied.remove()
    return None
